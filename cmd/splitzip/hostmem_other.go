//go:build !linux

package main

// cacheMemory returns n zeroed bytes for a benchmark KV cache: Go's heap (no transparent huge pages here).
func cacheMemory(n int, _ bool) ([]byte, error) { return make([]byte, n), nil }
