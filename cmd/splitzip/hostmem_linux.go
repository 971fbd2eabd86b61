//go:build linux

package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// cacheMemory returns n zeroed bytes for a benchmark KV cache. With huge, they are a mapping of their own,
// advised MADV_HUGEPAGE before anything touches them, so that where transparent huge pages are in "madvise"
// mode the first touch faults in 2 MiB pages: what an engine that allocates its KV cache for huge pages gets
// (PyTorch's CPU allocator does the same with THP_MEM_ALLOC_ENABLE=1). Without, they come from Go's heap, in
// 4 KiB pages there. The mapping lives as long as the process.
func cacheMemory(n int, huge bool) ([]byte, error) {
	if !huge {
		return make([]byte, n), nil
	}
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes for the KV cache: %w", n, err)
	}
	_ = unix.Madvise(m, unix.MADV_HUGEPAGE) // best effort: without THP the cache stays in small pages
	return m, nil
}
