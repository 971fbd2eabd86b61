package cuda

/*
#cgo LDFLAGS: -ldl
#include "driver.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

// ErrNoDriver is returned (wrapped, with the loader's message) by every entry
// point when libcuda.so.1 cannot be loaded. Compare with errors.Is.
var ErrNoDriver = errors.New("splitzip: no CUDA driver (libcuda.so.1 not found)")

// ErrDriverTooOld is returned (wrapped) when the driver lacks an entry point
// this package needs.
var ErrDriverTooOld = errors.New("splitzip: CUDA driver too old")

// ErrClosed is returned by methods of a freed or closed object.
var ErrClosed = errors.New("splitzip: CUDA object already closed")

// libraryEnv names an environment variable that may hold the driver
// library's path; it is tried first.
const libraryEnv = "SPLITZIP_LIBCUDA"

// libraryNames are tried in order: the soname through the loader's search
// path, then where container images commonly mount the driver.
var libraryNames = []string{
	"libcuda.so.1",
	"/usr/local/nvidia/lib64/libcuda.so.1",
	"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
	"/usr/lib64/libcuda.so.1",
	"/usr/lib/aarch64-linux-gnu/libcuda.so.1",
}

// entry points, resolved by load.
type driverTable struct {
	cuInit, cuDriverGetVersion, cuGetErrorName, cuGetErrorString                                 unsafe.Pointer
	cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute, cuDeviceTotalMem       unsafe.Pointer
	cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease                                          unsafe.Pointer
	cuCtxGetCurrent, cuCtxSetCurrent, cuCtxSynchronize, cuCtxGetDevice                           unsafe.Pointer
	cuMemGetInfo, cuMemAlloc, cuMemFree                                                          unsafe.Pointer
	cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync, cuMemsetD8Async, cuMemsetD32Async   unsafe.Pointer
	cuMemHostAlloc, cuMemFreeHost, cuMemHostRegister, cuMemHostUnregister, cuPointerGetAttribute unsafe.Pointer
	cuModuleLoadDataEx, cuModuleUnload, cuModuleGetFunction                                      unsafe.Pointer
	cuFuncGetAttribute, cuFuncSetAttribute, cuOccupancyMaxActiveBlocksPerMultiprocessor          unsafe.Pointer
	cuLaunchKernel                                                                               unsafe.Pointer
	cuStreamCreate, cuStreamSynchronize, cuStreamDestroy, cuStreamQuery, cuStreamWaitEvent       unsafe.Pointer
	cuEventCreate, cuEventRecord, cuEventSynchronize, cuEventQuery, cuEventDestroy               unsafe.Pointer
	cuEventElapsedTime                                                                           unsafe.Pointer
	cuStreamBeginCapture, cuStreamEndCapture, cuGraphInstantiate, cuGraphLaunch                  unsafe.Pointer
	cuGraphExecDestroy, cuGraphDestroy                                                           unsafe.Pointer

	// Optional entry points (nil when the driver lacks them).
	cuLaunchKernelEx unsafe.Pointer // CUDA 12.0
}

var (
	loadOnce sync.Once
	loadErr  error
	lib      *DynamicLibrary
	drv      driverTable
)

// Init loads the driver library and calls cuInit(0) once. Every entry point
// calls it; it returns an error wrapping ErrNoDriver on a host without the
// library, and never panics or exits.
func Init() error {
	loadOnce.Do(func() { loadErr = load() })
	return loadErr
}

// Loaded reports whether the driver library was loaded and initialised.
func Loaded() bool { return Init() == nil }

func load() error {
	names := libraryNames
	if p := Getenv(libraryEnv); p != "" {
		names = append([]string{p}, names...)
	}
	var msgs []string
	for _, n := range names {
		l := NewDynamicLibrary(n, RTLDLazy|RTLDGlobal)
		if err := l.Open(); err != nil {
			msgs = append(msgs, err.Error())
			continue
		}
		lib = l
		break
	}
	if lib == nil {
		return fmt.Errorf("%w: %s", ErrNoDriver, msgs[0])
	}
	syms := []struct {
		dst   *unsafe.Pointer
		names []string // first found wins
	}{
		{&drv.cuInit, []string{"cuInit"}},
		{&drv.cuDriverGetVersion, []string{"cuDriverGetVersion"}},
		{&drv.cuGetErrorName, []string{"cuGetErrorName"}},
		{&drv.cuGetErrorString, []string{"cuGetErrorString"}},
		{&drv.cuDeviceGetCount, []string{"cuDeviceGetCount"}},
		{&drv.cuDeviceGet, []string{"cuDeviceGet"}},
		{&drv.cuDeviceGetName, []string{"cuDeviceGetName"}},
		{&drv.cuDeviceGetAttribute, []string{"cuDeviceGetAttribute"}},
		{&drv.cuDeviceTotalMem, []string{"cuDeviceTotalMem_v2"}},
		{&drv.cuDevicePrimaryCtxRetain, []string{"cuDevicePrimaryCtxRetain"}},
		{&drv.cuDevicePrimaryCtxRelease, []string{"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"}},
		{&drv.cuCtxGetCurrent, []string{"cuCtxGetCurrent"}},
		{&drv.cuCtxSetCurrent, []string{"cuCtxSetCurrent"}},
		{&drv.cuCtxSynchronize, []string{"cuCtxSynchronize"}},
		{&drv.cuCtxGetDevice, []string{"cuCtxGetDevice"}},
		{&drv.cuMemGetInfo, []string{"cuMemGetInfo_v2"}},
		{&drv.cuMemAlloc, []string{"cuMemAlloc_v2"}},
		{&drv.cuMemFree, []string{"cuMemFree_v2"}},
		{&drv.cuMemcpyHtoDAsync, []string{"cuMemcpyHtoDAsync_v2"}},
		{&drv.cuMemcpyDtoHAsync, []string{"cuMemcpyDtoHAsync_v2"}},
		{&drv.cuMemcpyDtoDAsync, []string{"cuMemcpyDtoDAsync_v2"}},
		{&drv.cuMemsetD8Async, []string{"cuMemsetD8Async"}},
		{&drv.cuMemsetD32Async, []string{"cuMemsetD32Async"}},
		{&drv.cuMemHostAlloc, []string{"cuMemHostAlloc"}},
		{&drv.cuMemFreeHost, []string{"cuMemFreeHost"}},
		{&drv.cuMemHostRegister, []string{"cuMemHostRegister_v2", "cuMemHostRegister"}},
		{&drv.cuMemHostUnregister, []string{"cuMemHostUnregister"}},
		{&drv.cuPointerGetAttribute, []string{"cuPointerGetAttribute"}},
		{&drv.cuModuleLoadDataEx, []string{"cuModuleLoadDataEx"}},
		{&drv.cuModuleUnload, []string{"cuModuleUnload"}},
		{&drv.cuModuleGetFunction, []string{"cuModuleGetFunction"}},
		{&drv.cuFuncGetAttribute, []string{"cuFuncGetAttribute"}},
		{&drv.cuFuncSetAttribute, []string{"cuFuncSetAttribute"}},
		{&drv.cuOccupancyMaxActiveBlocksPerMultiprocessor, []string{"cuOccupancyMaxActiveBlocksPerMultiprocessor"}},
		{&drv.cuLaunchKernel, []string{"cuLaunchKernel"}},
		{&drv.cuStreamCreate, []string{"cuStreamCreate"}},
		{&drv.cuStreamSynchronize, []string{"cuStreamSynchronize"}},
		{&drv.cuStreamDestroy, []string{"cuStreamDestroy_v2", "cuStreamDestroy"}},
		{&drv.cuStreamQuery, []string{"cuStreamQuery"}},
		{&drv.cuStreamWaitEvent, []string{"cuStreamWaitEvent"}},
		{&drv.cuEventCreate, []string{"cuEventCreate"}},
		{&drv.cuEventRecord, []string{"cuEventRecord"}},
		{&drv.cuEventSynchronize, []string{"cuEventSynchronize"}},
		{&drv.cuEventQuery, []string{"cuEventQuery"}},
		{&drv.cuEventDestroy, []string{"cuEventDestroy_v2", "cuEventDestroy"}},
		// CUDA 12.8 added cuEventElapsedTime_v2 and CUDA 13's cuda.h maps the
		// plain name onto it; the signature is unchanged.
		{&drv.cuEventElapsedTime, []string{"cuEventElapsedTime_v2", "cuEventElapsedTime"}},
		{&drv.cuStreamBeginCapture, []string{"cuStreamBeginCapture_v2"}},
		{&drv.cuStreamEndCapture, []string{"cuStreamEndCapture"}},
		// cuda.h maps cuGraphInstantiate onto cuGraphInstantiateWithFlags since CUDA 12.
		{&drv.cuGraphInstantiate, []string{"cuGraphInstantiateWithFlags"}},
		{&drv.cuGraphLaunch, []string{"cuGraphLaunch"}},
		{&drv.cuGraphExecDestroy, []string{"cuGraphExecDestroy"}},
		{&drv.cuGraphDestroy, []string{"cuGraphDestroy"}},
	}
	for _, s := range syms {
		var err error
		for _, n := range s.names {
			var p unsafe.Pointer
			if p, err = lib.Lookup(n); err == nil {
				*s.dst = p
				break
			}
		}
		if err != nil {
			return fmt.Errorf("%w (%s): %w", ErrDriverTooOld, lib.Name, err)
		}
	}
	// Optional: features that need them report ErrDriverTooOld instead of the whole binding failing.
	drv.cuLaunchKernelEx, _ = lib.Lookup("cuLaunchKernelEx")
	if r := Result(C.sz_cuInit(drv.cuInit, 0)); r != Success {
		return fmt.Errorf("%w: cuInit: %w", ErrNoDriver, r)
	}
	return nil
}

// driverErrorText asks the loaded driver for r's name and description.
func driverErrorText(r Result) (name, desc string, ok bool) {
	if loadErr != nil || drv.cuGetErrorName == nil || drv.cuGetErrorString == nil {
		return "", "", false
	}
	var n, d *C.char
	if C.sz_cuGetErrorText(drv.cuGetErrorName, C.CUresult(r), &n) != 0 || n == nil {
		return "", "", false
	}
	if C.sz_cuGetErrorText(drv.cuGetErrorString, C.CUresult(r), &d) != 0 || d == nil {
		return "", "", false
	}
	return C.GoString(n), C.GoString(d), true
}

// DriverVersion returns the driver's CUDA version as 1000*major + 10*minor
// (13000 for CUDA 13.0).
func DriverVersion() (int, error) {
	if err := Init(); err != nil {
		return 0, err
	}
	var v C.int
	if err := check(Result(C.sz_int_out(drv.cuDriverGetVersion, &v))); err != nil {
		return 0, err
	}
	return int(v), nil
}

// LibraryPath returns the path or name the driver library was loaded from.
func LibraryPath() string {
	if Init() != nil {
		return ""
	}
	return lib.Name
}

func trimNUL(b []byte) string {
	s := string(b)
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return s
}
