package cuda

/*
#include "driver.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// DevicePtr is a device address (CUdeviceptr). It may come from this
// package, from PyTorch (tensor.data_ptr()) or any other user of the
// primary context.
type DevicePtr uint64

// Add returns p advanced by off bytes.
func (p DevicePtr) Add(off int) DevicePtr { return p + DevicePtr(off) }

// DeviceBuffer is device memory allocated by this package.
type DeviceBuffer struct {
	ctx   *Context
	ptr   DevicePtr
	size  int
	freed atomic.Bool
}

// Alloc allocates n bytes of device memory (cuMemAlloc: 256-byte aligned).
func (c *Context) Alloc(n int) (*DeviceBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: alloc %d bytes: %w", n, ErrorInvalidValue)
	}
	var p C.CUdeviceptr
	if err := c.call(func() C.CUresult { return C.sz_cuMemAlloc(drv.cuMemAlloc, &p, C.size_t(n)) }); err != nil {
		return nil, fmt.Errorf("cuda: alloc %d bytes: %w", n, err)
	}
	return &DeviceBuffer{ctx: c, ptr: DevicePtr(p), size: n}, nil
}

// Ptr returns the buffer's device address.
func (b *DeviceBuffer) Ptr() DevicePtr { return b.ptr }

// Len returns the buffer's size in bytes.
func (b *DeviceBuffer) Len() int { return b.size }

// Free releases the memory; a second Free is a no-op.
func (b *DeviceBuffer) Free() error {
	if b == nil || !b.freed.CompareAndSwap(false, true) {
		return nil
	}
	return b.ctx.call(func() C.CUresult { return C.sz_cuMemFree(drv.cuMemFree, C.CUdeviceptr(b.ptr)) })
}

// HostAllocFlags are cuMemHostAlloc flags.
type HostAllocFlags uint32

// Host allocation and registration flags (cuda.h).
const (
	HostAllocPortable      HostAllocFlags = 1
	HostAllocDeviceMap     HostAllocFlags = 2
	HostAllocWriteCombined HostAllocFlags = 4
	HostRegisterReadOnly   HostAllocFlags = 8
)

// HostBuffer is page-locked (pinned) host memory: allocated by the driver
// (HostAlloc) or a Go slice registered with it (HostRegister). Asynchronous
// copies to and from it overlap with the host.
type HostBuffer struct {
	ctx    *Context
	p      unsafe.Pointer
	n      int
	pinner *runtime.Pinner // set for registered Go memory
	freed  atomic.Bool
}

// HostAlloc allocates n bytes of pinned host memory.
func (c *Context) HostAlloc(n int, flags HostAllocFlags) (*HostBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: host alloc %d bytes: %w", n, ErrorInvalidValue)
	}
	var p unsafe.Pointer
	if err := c.call(func() C.CUresult { return C.sz_cuMemHostAlloc(drv.cuMemHostAlloc, &p, C.size_t(n), C.uint(flags)) }); err != nil {
		return nil, fmt.Errorf("cuda: host alloc %d bytes: %w", n, err)
	}
	return &HostBuffer{ctx: c, p: p, n: n}, nil
}

// HostRegister page-locks b for the buffer's lifetime; b must not be used
// after Free except as ordinary memory.
func (c *Context) HostRegister(b []byte, flags HostAllocFlags) (*HostBuffer, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("cuda: host register empty slice: %w", ErrorInvalidValue)
	}
	pin := new(runtime.Pinner)
	pin.Pin(&b[0])
	p := unsafe.Pointer(&b[0])
	if err := c.call(func() C.CUresult {
		return C.sz_cuMemHostRegister(drv.cuMemHostRegister, p, C.size_t(len(b)), C.uint(flags))
	}); err != nil {
		pin.Unpin()
		return nil, fmt.Errorf("cuda: host register %d bytes: %w", len(b), err)
	}
	return &HostBuffer{ctx: c, p: p, n: len(b), pinner: pin}, nil
}

// Bytes returns the buffer's memory as a slice; it is invalid after Free.
func (h *HostBuffer) Bytes() []byte { return unsafe.Slice((*byte)(h.p), h.n) }

// Ptr returns the buffer's host address.
func (h *HostBuffer) Ptr() unsafe.Pointer { return h.p }

// Len returns the buffer's size in bytes.
func (h *HostBuffer) Len() int { return h.n }

// Free unregisters or frees the buffer; a second Free is a no-op.
func (h *HostBuffer) Free() error {
	if h == nil || !h.freed.CompareAndSwap(false, true) {
		return nil
	}
	if h.pinner != nil {
		err := h.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuMemHostUnregister, h.p) })
		h.pinner.Unpin()
		return err
	}
	return h.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuMemFreeHost, h.p) })
}

// MemoryType is a CUmemorytype; MemoryUnregistered means the driver does
// not know the address (ordinary pageable host memory).
type MemoryType int

// Memory types (cuda.h), plus MemoryUnregistered.
const (
	MemoryUnregistered MemoryType = 0
	MemoryHost         MemoryType = 1
	MemoryDevice       MemoryType = 2
	MemoryArray        MemoryType = 3
	MemoryUnified      MemoryType = 4
)

func (m MemoryType) String() string {
	switch m {
	case MemoryUnregistered:
		return "unregistered"
	case MemoryHost:
		return "host"
	case MemoryDevice:
		return "device"
	case MemoryArray:
		return "array"
	case MemoryUnified:
		return "unified"
	}
	return fmt.Sprintf("MemoryType(%d)", int(m))
}

// Pointer attributes (CUpointer_attribute).
const (
	pointerAttrMemoryType    = 2
	pointerAttrIsManaged     = 8
	pointerAttrDeviceOrdinal = 9
)

// PointerInfo describes an address as the driver sees it.
type PointerInfo struct {
	Type    MemoryType
	Managed bool
	Device  int // ordinal of the owning device; -1 when unregistered
}

// PointerAttributes asks the driver what addr is: device memory, pinned
// host memory or unknown (pageable) memory. The last is not an error.
func (c *Context) PointerAttributes(addr uintptr) (PointerInfo, error) {
	info := PointerInfo{Device: -1}
	var mt, managed C.uint
	var ord C.int
	err := c.Do(func() error {
		r := Result(C.sz_cuPointerGetAttributeAddr(drv.cuPointerGetAttribute, unsafe.Pointer(&mt), pointerAttrMemoryType, C.ulonglong(addr)))
		if r == ErrorInvalidValue {
			return errUnregistered
		}
		if err := check(r); err != nil {
			return err
		}
		if err := check(Result(C.sz_cuPointerGetAttributeAddr(drv.cuPointerGetAttribute, unsafe.Pointer(&managed), pointerAttrIsManaged, C.ulonglong(addr)))); err != nil {
			return err
		}
		return check(Result(C.sz_cuPointerGetAttributeAddr(drv.cuPointerGetAttribute, unsafe.Pointer(&ord), pointerAttrDeviceOrdinal, C.ulonglong(addr))))
	})
	if errors.Is(err, errUnregistered) {
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("cuda: pointer attributes of %#x: %w", addr, err)
	}
	info.Type, info.Managed, info.Device = MemoryType(mt), managed != 0, int(ord)
	return info, nil
}

var errUnregistered = errors.New("unregistered")
