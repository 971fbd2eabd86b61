package cuda

/*
#include "driver.h"
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Module is a loaded PTX or cubin image.
type Module struct {
	ctx    *Context
	h      C.CUmodule
	closed atomic.Bool
}

// LoadModule loads a PTX (JIT-compiled by the driver for the context's
// device) or cubin/fatbin image. A JIT failure's error includes the
// compiler's log.
func (c *Context) LoadModule(image []byte) (*Module, error) {
	if len(image) == 0 {
		return nil, fmt.Errorf("cuda: load module: empty image: %w", ErrorInvalidImage)
	}
	// PTX must be NUL-terminated; the image is copied into C memory so the
	// driver never sees Go memory.
	img := C.malloc(C.size_t(len(image) + 1))
	defer C.free(img)
	buf := unsafe.Slice((*byte)(img), len(image)+1)
	copy(buf, image)
	buf[len(image)] = 0
	const logSize = 16 << 10
	log := (*C.char)(C.calloc(1, logSize*2))
	defer C.free(unsafe.Pointer(log))

	var h C.CUmodule
	if err := c.call(func() C.CUresult { return C.sz_cuModuleLoadDataEx(drv.cuModuleLoadDataEx, &h, img, log, logSize) }); err != nil {
		if msg := strings.TrimSpace(C.GoString(log)); msg != "" {
			return nil, fmt.Errorf("cuda: load module: %w: %s", err, msg)
		}
		return nil, fmt.Errorf("cuda: load module: %w", err)
	}
	return &Module{ctx: c, h: h}, nil
}

// Context returns the module's context.
func (m *Module) Context() *Context { return m.ctx }

// Function looks a kernel up by its (extern "C") name.
func (m *Module) Function(name string) (*Function, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var f C.CUfunction
	if err := m.ctx.call(func() C.CUresult { return C.sz_cuModuleGetFunction(drv.cuModuleGetFunction, &f, m.h, cname) }); err != nil {
		return nil, fmt.Errorf("cuda: function %q: %w", name, err)
	}
	return &Function{mod: m, h: f, name: name}, nil
}

// Close unloads the module; a second Close is a no-op.
func (m *Module) Close() error {
	if m == nil || !m.closed.CompareAndSwap(false, true) {
		return nil
	}
	return m.ctx.call(func() C.CUresult { return C.sz_handle(drv.cuModuleUnload, unsafe.Pointer(m.h)) })
}

// Function is a kernel of a loaded module; it is valid while the module is.
type Function struct {
	mod  *Module
	h    C.CUfunction
	name string
}

// Name returns the kernel's name.
func (f *Function) Name() string { return f.name }

// FuncAttribute is a CUfunction_attribute.
type FuncAttribute int32

// Function attributes (cuda.h).
const (
	FuncMaxThreadsPerBlock        FuncAttribute = 0
	FuncSharedSizeBytes           FuncAttribute = 1
	FuncConstSizeBytes            FuncAttribute = 2
	FuncLocalSizeBytes            FuncAttribute = 3
	FuncNumRegs                   FuncAttribute = 4
	FuncPTXVersion                FuncAttribute = 5
	FuncBinaryVersion             FuncAttribute = 6
	FuncMaxDynamicSharedSizeBytes FuncAttribute = 8
)

// Attribute returns one attribute of the kernel.
func (f *Function) Attribute(a FuncAttribute) (int, error) {
	var v C.int
	err := f.mod.ctx.call(func() C.CUresult { return C.sz_cuFuncGetAttribute(drv.cuFuncGetAttribute, &v, C.int(a), f.h) })
	return int(v), err
}

// SetAttribute sets one attribute (e.g. FuncMaxDynamicSharedSizeBytes).
func (f *Function) SetAttribute(a FuncAttribute, v int) error {
	return f.mod.ctx.call(func() C.CUresult { return C.sz_cuFuncSetAttribute(drv.cuFuncSetAttribute, f.h, C.int(a), C.int(v)) })
}

// MaxActiveBlocksPerSM returns how many blocks of blockSize threads using
// dynSmem bytes of dynamic shared memory fit on one multiprocessor.
func (f *Function) MaxActiveBlocksPerSM(blockSize, dynSmem int) (int, error) {
	var n C.int
	err := f.mod.ctx.call(func() C.CUresult {
		return C.sz_cuOccupancy(drv.cuOccupancyMaxActiveBlocksPerMultiprocessor, &n, f.h, C.int(blockSize), C.size_t(dynSmem))
	})
	return int(n), err
}

// Dim3 is a grid or block shape; zero components count as 1.
type Dim3 struct{ X, Y, Z uint32 }

func (d Dim3) norm() (x, y, z C.uint) {
	one := func(v uint32) C.uint {
		if v == 0 {
			return 1
		}
		return C.uint(v)
	}
	return one(d.X), one(d.Y), one(d.Z)
}

// Launch enqueues the kernel on s. args holds the kernel's parameters in
// declaration order (see Args); the driver copies them at the call, so the
// launch can be captured into a graph.
func (f *Function) Launch(s *Stream, grid, block Dim3, sharedMem int, args *Args) error {
	return f.launch(s, grid, block, sharedMem, args, nil)
}

// LaunchAttribute is a CUlaunchAttributeID whose value is an int.
type LaunchAttribute int32

// LaunchProgrammaticStreamSerialization (CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION), set to 1,
// lets the kernel launch before the previous kernel on its stream has finished: as soon as every block of
// that kernel has executed griddepcontrol.launch_dependents (or exited). The kernel must execute
// griddepcontrol.wait before it reads anything the previous kernel writes (compute capability 9.0 and newer).
const LaunchProgrammaticStreamSerialization LaunchAttribute = 6

// LaunchWith is Launch with launch attributes (cuLaunchKernelEx, CUDA 12.0 drivers and newer; ErrDriverTooOld
// before). A graph captures the attributes with the launch.
func (f *Function) LaunchWith(s *Stream, grid, block Dim3, sharedMem int, args *Args, attrs map[LaunchAttribute]int32) error {
	if drv.cuLaunchKernelEx == nil {
		return fmt.Errorf("cuda: launch %s with attributes: %w: no cuLaunchKernelEx", f.name, ErrDriverTooOld)
	}
	return f.launch(s, grid, block, sharedMem, args, attrs)
}

// CanLaunchWith reports whether the driver has LaunchWith's entry point.
func CanLaunchWith() bool { return Init() == nil && drv.cuLaunchKernelEx != nil }

func (f *Function) launch(s *Stream, grid, block Dim3, sharedMem int, args *Args, attrs map[LaunchAttribute]int32) error {
	if f.mod.closed.Load() {
		return ErrClosed
	}
	gx, gy, gz := grid.norm()
	bx, by, bz := block.norm()
	var p unsafe.Pointer
	var n int
	if args != nil && len(args.buf) > 0 {
		p, n = unsafe.Pointer(&args.buf[0]), len(args.buf)
	}
	const maxAttrs = 4 // sz_cuLaunchKernelEx's array
	if len(attrs) > maxAttrs {
		return fmt.Errorf("cuda: launch %s: %d launch attributes (at most %d)", f.name, len(attrs), maxAttrs)
	}
	var ids, vals [maxAttrs]C.int
	k := 0
	for id, v := range attrs {
		ids[k], vals[k] = C.int(id), C.int(v)
		k++
	}
	err := f.mod.ctx.call(func() C.CUresult {
		if attrs == nil {
			return C.sz_cuLaunchKernel(drv.cuLaunchKernel, f.h, gx, gy, gz, bx, by, bz, C.uint(sharedMem), s.handle(), p, C.size_t(n))
		}
		return C.sz_cuLaunchKernelEx(drv.cuLaunchKernelEx, f.h, gx, gy, gz, bx, by, bz, C.uint(sharedMem), s.handle(), p, C.size_t(n),
			&ids[0], &vals[0], C.uint(k))
	})
	if err != nil {
		return fmt.Errorf("cuda: launch %s: %w", f.name, err)
	}
	return nil
}

// Args packs kernel parameters the way the compiler lays them out: each at
// its natural alignment, in declaration order.
type Args struct{ buf []byte }

// NewArgs returns an empty parameter list.
func NewArgs() *Args { return &Args{buf: make([]byte, 0, 128)} }

// Reset empties the list for reuse.
func (a *Args) Reset() *Args { a.buf = a.buf[:0]; return a }

// Len returns the packed size in bytes.
func (a *Args) Len() int { return len(a.buf) }

func (a *Args) align(n int) {
	for len(a.buf)%n != 0 {
		a.buf = append(a.buf, 0)
	}
}

// U8 appends an 8-bit parameter.
func (a *Args) U8(v uint8) *Args { a.buf = append(a.buf, v); return a }

// U32 appends a 32-bit unsigned parameter.
func (a *Args) U32(v uint32) *Args {
	a.align(4)
	a.buf = binary.LittleEndian.AppendUint32(a.buf, v)
	return a
}

// I32 appends a 32-bit signed parameter.
func (a *Args) I32(v int32) *Args { return a.U32(uint32(v)) }

// F32 appends a float parameter.
func (a *Args) F32(v float32) *Args { return a.U32(math.Float32bits(v)) }

// U64 appends a 64-bit unsigned parameter.
func (a *Args) U64(v uint64) *Args {
	a.align(8)
	a.buf = binary.LittleEndian.AppendUint64(a.buf, v)
	return a
}

// I64 appends a 64-bit signed parameter.
func (a *Args) I64(v int64) *Args { return a.U64(uint64(v)) }

// Ptr appends a device pointer parameter.
func (a *Args) Ptr(p DevicePtr) *Args { return a.U64(uint64(p)) }

// Struct appends a by-value struct parameter of the given alignment; b is
// its little-endian image.
func (a *Args) Struct(b []byte, align int) *Args {
	a.align(align)
	a.buf = append(a.buf, b...)
	return a
}
