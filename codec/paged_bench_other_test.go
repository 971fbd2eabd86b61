//go:build !linux

package codec

import "testing"

// benchPool returns n zeroed bytes; huge pages are Linux-only.
func benchPool(b *testing.B, n int, huge bool) []byte {
	if huge {
		b.Skip("-pages2m: transparent huge pages are Linux-only")
	}
	return make([]byte, n)
}
