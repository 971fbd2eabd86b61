//go:build !linux

package connector

func hugePageSize() (uintptr, error) { return 0, errNoHugePages }

func adviseHuge(lo, hi uintptr) error { return errNoHugePages }

func collapseHuge(lo, hi uintptr) error { return errNoHugePages }
