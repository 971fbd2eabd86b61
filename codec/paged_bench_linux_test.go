//go:build linux

package codec

import (
	"testing"

	"golang.org/x/sys/unix"
)

// benchPool returns n zeroed bytes, in 2 MiB pages with huge: a mapping of its own advised MADV_HUGEPAGE
// before the first touch (it fails the benchmark where the kernel refuses).
func benchPool(b *testing.B, n int, huge bool) []byte {
	if !huge {
		return make([]byte, n)
	}
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = unix.Munmap(m) })
	if err := unix.Madvise(m, unix.MADV_HUGEPAGE); err != nil {
		b.Fatalf("MADV_HUGEPAGE: %v", err)
	}
	return m
}
