//go:build linux

package connector

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// hugePageSize is the size of a transparent huge page (PMD size: 2 MiB on x86-64), read once from sysfs; an
// error means the kernel has no transparent huge pages.
var hugePageSize = sync.OnceValues(func() (uintptr, error) {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
	if err != nil {
		return 0, fmt.Errorf("transparent huge pages: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n == 0 || n&(n-1) != 0 {
		return 0, fmt.Errorf("transparent huge pages: page size %q", strings.TrimSpace(string(b)))
	}
	return uintptr(n), nil
})

// adviseHuge marks [lo, hi) (whole huge pages) MADV_HUGEPAGE: memory faulted in there later comes in huge pages.
func adviseHuge(lo, hi uintptr) error {
	if err := madvise(lo, hi-lo, unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("madvise(MADV_HUGEPAGE) on %d MiB at %#x: %w", (hi-lo)>>20, lo, err)
	}
	return nil
}

// collapseHuge puts the memory already in [lo, hi) (whole huge pages) into huge pages: MADV_COLLAPSE.
func collapseHuge(lo, hi uintptr) error {
	if err := madvise(lo, hi-lo, unix.MADV_COLLAPSE); err != nil {
		return fmt.Errorf("madvise(MADV_COLLAPSE) on %d MiB at %#x: %w", (hi-lo)>>20, lo, err)
	}
	return nil
}

func madvise(addr, n uintptr, advice int) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_MADVISE, addr, n, uintptr(advice))
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return e
	}
}
