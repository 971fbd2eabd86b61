package cuda

/*
#include "driver.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"
)

// Stream is a CUDA stream: one this package created (Close destroys it) or
// one borrowed by handle, e.g. PyTorch's current stream (Close is a no-op).
type Stream struct {
	ctx    *Context
	h      C.CUstream
	owned  bool
	closed atomic.Bool
}

// Stream creation flags.
const (
	StreamDefault     = 0
	StreamNonBlocking = 1
)

// NewStream creates a stream (StreamNonBlocking: no implicit
// synchronisation with the legacy default stream).
func (c *Context) NewStream(flags uint32) (*Stream, error) {
	var h unsafe.Pointer
	if err := c.call(func() C.CUresult { return C.sz_handle_out_flags(drv.cuStreamCreate, &h, C.uint(flags)) }); err != nil {
		return nil, fmt.Errorf("cuda: create stream: %w", err)
	}
	return &Stream{ctx: c, h: C.CUstream(h), owned: true}, nil
}

// StreamFromHandle wraps a CUstream/cudaStream_t created elsewhere in the
// same context (torch.cuda.current_stream().cuda_stream). Handle 0 is the
// legacy default stream.
func (c *Context) StreamFromHandle(h uintptr) *Stream {
	return &Stream{ctx: c, h: C.CUstream(C.sz_ptr(C.ulonglong(h)))}
}

// Handle returns the CUstream as an integer.
func (s *Stream) Handle() uintptr { return uintptr(unsafe.Pointer(s.h)) }

// Context returns the stream's context.
func (s *Stream) Context() *Context { return s.ctx }

func (s *Stream) handle() C.CUstream {
	if s == nil {
		return nil
	}
	return s.h
}

func (s *Stream) call(f func() C.CUresult) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.ctx.call(f)
}

// Synchronize waits for the stream's work.
func (s *Stream) Synchronize() error {
	return s.call(func() C.CUresult { return C.sz_handle(drv.cuStreamSynchronize, unsafe.Pointer(s.h)) })
}

// Done reports whether all work enqueued on the stream has completed.
func (s *Stream) Done() (bool, error) {
	err := s.call(func() C.CUresult { return C.sz_handle(drv.cuStreamQuery, unsafe.Pointer(s.h)) })
	if errors.Is(err, ErrorNotReady) {
		return false, nil
	}
	return err == nil, err
}

// WaitEvent makes later work on s wait for e.
func (s *Stream) WaitEvent(e *Event) error {
	return s.call(func() C.CUresult { return C.sz_cuStreamWaitEvent(drv.cuStreamWaitEvent, s.h, e.h, 0) })
}

// Close destroys a stream this package created; a second Close, or Close
// of a borrowed stream, is a no-op.
func (s *Stream) Close() error {
	if s == nil || !s.closed.CompareAndSwap(false, true) || !s.owned {
		return nil
	}
	return s.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuStreamDestroy, unsafe.Pointer(s.h)) })
}

// MemcpyHtoDAsync enqueues a copy of n bytes from host address src. For the
// copy to be asynchronous src must be pinned (HostBuffer, or memory pinned
// by another library); it must stay valid until the copy completes.
func (s *Stream) MemcpyHtoDAsync(dst DevicePtr, src unsafe.Pointer, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemcpyHtoDAsync(drv.cuMemcpyHtoDAsync, C.CUdeviceptr(dst), src, C.size_t(n), s.h)
	})
}

// MemcpyDtoHAsync enqueues a copy of n bytes to host address dst; see
// MemcpyHtoDAsync.
func (s *Stream) MemcpyDtoHAsync(dst unsafe.Pointer, src DevicePtr, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemcpyDtoHAsync(drv.cuMemcpyDtoHAsync, dst, C.CUdeviceptr(src), C.size_t(n), s.h)
	})
}

// MemcpyHtoDAsyncAddr is MemcpyHtoDAsync for a host address held as an
// integer (another library's pinned buffer).
func (s *Stream) MemcpyHtoDAsyncAddr(dst DevicePtr, src uintptr, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemcpyHtoDAsyncAddr(drv.cuMemcpyHtoDAsync, C.CUdeviceptr(dst), C.ulonglong(src), C.size_t(n), s.h)
	})
}

// MemcpyDtoHAsyncAddr is MemcpyDtoHAsync for a host address held as an
// integer.
func (s *Stream) MemcpyDtoHAsyncAddr(dst uintptr, src DevicePtr, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemcpyDtoHAsyncAddr(drv.cuMemcpyDtoHAsync, C.ulonglong(dst), C.CUdeviceptr(src), C.size_t(n), s.h)
	})
}

// MemcpyDtoDAsync enqueues a device-to-device copy of n bytes.
func (s *Stream) MemcpyDtoDAsync(dst, src DevicePtr, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemcpyDtoDAsync(drv.cuMemcpyDtoDAsync, C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), s.h)
	})
}

// MemsetD8Async enqueues setting n bytes at dst to v.
func (s *Stream) MemsetD8Async(dst DevicePtr, v byte, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemsetD8Async(drv.cuMemsetD8Async, C.CUdeviceptr(dst), C.uchar(v), C.size_t(n), s.h)
	})
}

// MemsetD32Async enqueues setting n 32-bit words at dst (4-byte aligned) to v.
func (s *Stream) MemsetD32Async(dst DevicePtr, v uint32, n int) error {
	return s.call(func() C.CUresult {
		return C.sz_cuMemsetD32Async(drv.cuMemsetD32Async, C.CUdeviceptr(dst), C.uint(v), C.size_t(n), s.h)
	})
}

// CopyHtoD copies src (any Go memory) to dst and waits for the stream.
func (s *Stream) CopyHtoD(dst DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	if err := s.MemcpyHtoDAsync(dst, unsafe.Pointer(&src[0]), len(src)); err != nil {
		return err
	}
	return s.Synchronize()
}

// CopyDtoH copies len(dst) bytes from src into dst and waits for the stream.
func (s *Stream) CopyDtoH(dst []byte, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	if err := s.MemcpyDtoHAsync(unsafe.Pointer(&dst[0]), src, len(dst)); err != nil {
		return err
	}
	return s.Synchronize()
}

// CaptureMode is a CUstreamCaptureMode.
type CaptureMode int

// Capture modes (cuda.h).
const (
	CaptureGlobal      CaptureMode = 0
	CaptureThreadLocal CaptureMode = 1
	CaptureRelaxed     CaptureMode = 2
)

// BeginCapture starts recording the stream's work into a graph. In the global and thread-local modes the
// capture must begin and end on one OS thread: call BeginCapture, the work and EndCapture inside one
// Context.Do.
func (s *Stream) BeginCapture(mode CaptureMode) error {
	return s.call(func() C.CUresult { return C.sz_cuStreamBeginCapture(drv.cuStreamBeginCapture, s.h, C.int(mode)) })
}

// EndCapture stops recording and returns the captured graph.
func (s *Stream) EndCapture() (*Graph, error) {
	var g C.CUgraph
	if err := s.call(func() C.CUresult { return C.sz_cuStreamEndCapture(drv.cuStreamEndCapture, s.h, &g) }); err != nil {
		return nil, fmt.Errorf("cuda: end capture: %w", err)
	}
	return &Graph{ctx: s.ctx, h: g}, nil
}

// Graph is a captured CUDA graph.
type Graph struct {
	ctx    *Context
	h      C.CUgraph
	closed atomic.Bool
}

// Instantiate makes an executable graph.
func (g *Graph) Instantiate() (*GraphExec, error) {
	var e C.CUgraphExec
	if err := g.ctx.call(func() C.CUresult { return C.sz_cuGraphInstantiate(drv.cuGraphInstantiate, &e, g.h, 0) }); err != nil {
		return nil, fmt.Errorf("cuda: instantiate graph: %w", err)
	}
	return &GraphExec{ctx: g.ctx, h: e}, nil
}

// Close destroys the graph; a second Close is a no-op.
func (g *Graph) Close() error {
	if g == nil || !g.closed.CompareAndSwap(false, true) {
		return nil
	}
	return g.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuGraphDestroy, unsafe.Pointer(g.h)) })
}

// GraphExec is an instantiated graph.
type GraphExec struct {
	ctx    *Context
	h      C.CUgraphExec
	closed atomic.Bool
}

// Launch enqueues the graph on s.
func (e *GraphExec) Launch(s *Stream) error {
	return e.ctx.call(func() C.CUresult {
		return C.sz_two_handles(drv.cuGraphLaunch, unsafe.Pointer(e.h), unsafe.Pointer(s.handle()))
	})
}

// Close destroys the executable graph; a second Close is a no-op.
func (e *GraphExec) Close() error {
	if e == nil || !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	return e.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuGraphExecDestroy, unsafe.Pointer(e.h)) })
}

// Event is a CUDA event.
type Event struct {
	ctx    *Context
	h      C.CUevent
	closed atomic.Bool
}

// Event creation flags.
const (
	EventDefault       = 0
	EventBlockingSync  = 1
	EventDisableTiming = 2
)

// NewEvent creates an event.
func (c *Context) NewEvent(flags uint32) (*Event, error) {
	var h unsafe.Pointer
	if err := c.call(func() C.CUresult { return C.sz_handle_out_flags(drv.cuEventCreate, &h, C.uint(flags)) }); err != nil {
		return nil, fmt.Errorf("cuda: create event: %w", err)
	}
	return &Event{ctx: c, h: C.CUevent(h)}, nil
}

// Record enqueues the event on s.
func (e *Event) Record(s *Stream) error {
	return e.ctx.call(func() C.CUresult {
		return C.sz_two_handles(drv.cuEventRecord, unsafe.Pointer(e.h), unsafe.Pointer(s.handle()))
	})
}

// Synchronize waits for the event.
func (e *Event) Synchronize() error {
	return e.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuEventSynchronize, unsafe.Pointer(e.h)) })
}

// Done reports whether the event has completed.
func (e *Event) Done() (bool, error) {
	err := e.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuEventQuery, unsafe.Pointer(e.h)) })
	if errors.Is(err, ErrorNotReady) {
		return false, nil
	}
	return err == nil, err
}

// ElapsedMs returns the time in milliseconds between two completed events.
func ElapsedMs(start, end *Event) (float32, error) {
	var ms C.float
	err := start.ctx.call(func() C.CUresult { return C.sz_cuEventElapsedTime(drv.cuEventElapsedTime, &ms, start.h, end.h) })
	return float32(ms), err
}

// Elapsed returns the time between two completed events.
func Elapsed(start, end *Event) (time.Duration, error) {
	ms, err := ElapsedMs(start, end)
	return time.Duration(float64(ms) * float64(time.Millisecond)), err
}

// Close destroys the event; a second Close is a no-op.
func (e *Event) Close() error {
	if e == nil || !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	return e.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuEventDestroy, unsafe.Pointer(e.h)) })
}
