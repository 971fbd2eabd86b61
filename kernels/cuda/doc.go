// Package cuda is a small binding of the CUDA driver API that loads
// libcuda.so.1 at run time (dlopen), so binaries build without the CUDA
// toolkit and run on hosts without a GPU.
//
// On a host without the driver every entry point returns an error wrapping
// ErrNoDriver; nothing panics or exits. Driver failures are Result values
// (CUresult) that name the error even before the library loads.
//
// The binding works in the device's primary context (RetainPrimaryContext),
// the one the CUDA runtime and so PyTorch use: device pointers and stream
// handles pass freely between them (DevicePtr, StreamFromHandle). Because
// the driver's current context is per OS thread, every call runs under
// Context.Do, which locks the goroutine to its thread and makes the context
// current.
//
// Entry points are resolved by their exported, versioned names (e.g.
// cuMemAlloc_v2, cuEventElapsedTime_v2 with a fallback to the plain name,
// cuGraphInstantiateWithFlags), which the CUDA 12 and 13 drivers export. No
// CUDA header is needed: driver.h declares the few types used.
package cuda
