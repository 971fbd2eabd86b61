package cuda

/*
#include "driver.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Context is a retained primary context of one device: the context the CUDA
// runtime (and so PyTorch) uses, so device pointers and streams are shared
// with it. The driver's notion of the current context is per OS thread;
// every method runs under Do, which pins the goroutine to its thread and
// makes the context current there.
type Context struct {
	dev    Device
	h      C.CUcontext
	closed atomic.Bool
}

// RetainPrimaryContext retains (creating if needed) the device's primary
// context. Close releases it.
func (d Device) RetainPrimaryContext() (*Context, error) {
	if err := Init(); err != nil {
		return nil, err
	}
	var h C.CUcontext
	if err := check(Result(C.sz_cuDevicePrimaryCtxRetain(drv.cuDevicePrimaryCtxRetain, &h, C.CUdevice(d)))); err != nil {
		return nil, fmt.Errorf("cuda: retain primary context of device %d: %w", int(d), err)
	}
	return &Context{dev: d, h: h}, nil
}

// PrimaryContext is GetDevice(ordinal) followed by RetainPrimaryContext.
func PrimaryContext(ordinal int) (*Context, error) {
	d, err := GetDevice(ordinal)
	if err != nil {
		return nil, err
	}
	return d.RetainPrimaryContext()
}

// Device returns the context's device.
func (c *Context) Device() Device { return c.dev }

// Handle returns the CUcontext as an integer.
func (c *Context) Handle() uintptr { return uintptr(unsafe.Pointer(c.h)) }

// Do runs fn with the goroutine locked to its OS thread and c current on it.
// Calls nest.
func (c *Context) Do(fn func() error) error {
	if err := Init(); err != nil {
		return err
	}
	if c == nil || c.h == nil || c.closed.Load() {
		return ErrClosed
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := check(Result(C.sz_handle(drv.cuCtxSetCurrent, unsafe.Pointer(c.h)))); err != nil {
		return fmt.Errorf("cuda: set current context: %w", err)
	}
	return fn()
}

// call runs one driver call under Do.
func (c *Context) call(f func() C.CUresult) error {
	return c.Do(func() error { return check(Result(f())) })
}

// Synchronize waits for all work in the context.
func (c *Context) Synchronize() error {
	return c.call(func() C.CUresult { return C.sz_void(drv.cuCtxSynchronize) })
}

// MemGetInfo returns the device's free and total memory in bytes.
func (c *Context) MemGetInfo() (free, total uint64, err error) {
	var f, t C.size_t
	err = c.call(func() C.CUresult { return C.sz_cuMemGetInfo(drv.cuMemGetInfo, &f, &t) })
	return uint64(f), uint64(t), err
}

// Close releases the primary context; a second Close is a no-op. It does
// not destroy the context while others (PyTorch) still hold it.
func (c *Context) Close() error {
	if c == nil || !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	return check(Result(C.sz_device_only(drv.cuDevicePrimaryCtxRelease, C.CUdevice(c.dev))))
}
