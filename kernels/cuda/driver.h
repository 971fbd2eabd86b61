// Code for package cuda's cgo preambles: driver types and call trampolines.
// Deliberately free of CUDA headers: the types are declared here from cuda.h
// (CUDA 12/13), and every entry point is called through a pointer that
// load() resolved with dlsym.
#ifndef SPLITZIP_CUDA_DRIVER_H
#define SPLITZIP_CUDA_DRIVER_H
#include <stddef.h>
#include <stdlib.h>

// The few driver types this package needs, declared here so that no CUDA
// header is needed to build it (see cuda.h of CUDA 12/13).
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream, *CUevent, *CUgraph, *CUgraphExec;

// Trampolines: each takes the dlsym'd entry point as its first argument.
#define FN(T) ((T)f)

static inline CUresult sz_cuInit(void *f, unsigned int flags) { return FN(CUresult (*)(unsigned int))(flags); }
static inline CUresult sz_int_out(void *f, int *out) { return FN(CUresult (*)(int *))(out); }
static inline CUresult sz_cuGetErrorText(void *f, CUresult r, const char **s) { return FN(CUresult (*)(CUresult, const char **))(r, s); }
static inline CUresult sz_cuDeviceGet(void *f, CUdevice *d, int ord) { return FN(CUresult (*)(CUdevice *, int))(d, ord); }
static inline CUresult sz_cuDeviceGetName(void *f, char *name, int len, CUdevice d) { return FN(CUresult (*)(char *, int, CUdevice))(name, len, d); }
static inline CUresult sz_cuDeviceGetAttribute(void *f, int *v, int attr, CUdevice d) { return FN(CUresult (*)(int *, int, CUdevice))(v, attr, d); }
static inline CUresult sz_cuDeviceTotalMem(void *f, size_t *v, CUdevice d) { return FN(CUresult (*)(size_t *, CUdevice))(v, d); }
static inline CUresult sz_cuDevicePrimaryCtxRetain(void *f, CUcontext *c, CUdevice d) { return FN(CUresult (*)(CUcontext *, CUdevice))(c, d); }
static inline CUresult sz_device_only(void *f, CUdevice d) { return FN(CUresult (*)(CUdevice))(d); }
static inline CUresult sz_ctx_out(void *f, CUcontext *c) { return FN(CUresult (*)(CUcontext *))(c); }
static inline CUresult sz_handle(void *f, void *h) { return FN(CUresult (*)(void *))(h); }
static inline CUresult sz_void(void *f) { return FN(CUresult (*)(void))(); }
static inline CUresult sz_cuMemGetInfo(void *f, size_t *free_, size_t *total) { return FN(CUresult (*)(size_t *, size_t *))(free_, total); }
static inline CUresult sz_cuMemAlloc(void *f, CUdeviceptr *p, size_t n) { return FN(CUresult (*)(CUdeviceptr *, size_t))(p, n); }
static inline CUresult sz_cuMemFree(void *f, CUdeviceptr p) { return FN(CUresult (*)(CUdeviceptr))(p); }
static inline CUresult sz_cuMemcpyHtoDAsync(void *f, CUdeviceptr dst, const void *src, size_t n, CUstream s) { return FN(CUresult (*)(CUdeviceptr, const void *, size_t, CUstream))(dst, src, n, s); }
static inline CUresult sz_cuMemcpyDtoHAsync(void *f, void *dst, CUdeviceptr src, size_t n, CUstream s) { return FN(CUresult (*)(void *, CUdeviceptr, size_t, CUstream))(dst, src, n, s); }
static inline CUresult sz_cuMemcpyDtoDAsync(void *f, CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return FN(CUresult (*)(CUdeviceptr, CUdeviceptr, size_t, CUstream))(dst, src, n, s); }
static inline CUresult sz_cuMemsetD8Async(void *f, CUdeviceptr dst, unsigned char v, size_t n, CUstream s) { return FN(CUresult (*)(CUdeviceptr, unsigned char, size_t, CUstream))(dst, v, n, s); }
static inline CUresult sz_cuMemsetD32Async(void *f, CUdeviceptr dst, unsigned int v, size_t n, CUstream s) { return FN(CUresult (*)(CUdeviceptr, unsigned int, size_t, CUstream))(dst, v, n, s); }
static inline CUresult sz_cuMemHostAlloc(void *f, void **p, size_t n, unsigned int flags) { return FN(CUresult (*)(void **, size_t, unsigned int))(p, n, flags); }
static inline CUresult sz_cuMemHostRegister(void *f, void *p, size_t n, unsigned int flags) { return FN(CUresult (*)(void *, size_t, unsigned int))(p, n, flags); }
static inline CUresult sz_cuPointerGetAttribute(void *f, void *data, int attr, CUdeviceptr p) { return FN(CUresult (*)(void *, int, CUdeviceptr))(data, attr, p); }
static inline CUresult sz_cuModuleLoadDataEx(void *f, CUmodule *m, const void *image, char *log, size_t logSize) {
	int opts[4] = {5, 6, 3, 4}; // CU_JIT_ERROR_LOG_BUFFER(_SIZE_BYTES), CU_JIT_INFO_LOG_BUFFER(_SIZE_BYTES)
	void *vals[4] = {log, (void *)logSize, log + logSize, (void *)(size_t)0};
	return FN(CUresult (*)(CUmodule *, const void *, unsigned int, int *, void **))(m, image, 2, opts, vals);
}
static inline CUresult sz_cuModuleGetFunction(void *f, CUfunction *fn, CUmodule m, const char *name) { return FN(CUresult (*)(CUfunction *, CUmodule, const char *))(fn, m, name); }
static inline CUresult sz_cuFuncGetAttribute(void *f, int *v, int attr, CUfunction fn) { return FN(CUresult (*)(int *, int, CUfunction))(v, attr, fn); }
static inline CUresult sz_cuFuncSetAttribute(void *f, CUfunction fn, int attr, int v) { return FN(CUresult (*)(CUfunction, int, int))(fn, attr, v); }
static inline CUresult sz_cuOccupancy(void *f, int *n, CUfunction fn, int block, size_t smem) { return FN(CUresult (*)(int *, CUfunction, int, size_t))(n, fn, block, smem); }
static inline CUresult sz_cuLaunchKernel(void *f, CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz,
		unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, CUstream s, void *args, size_t argSize) {
	// CU_LAUNCH_PARAM_BUFFER_POINTER = 1, CU_LAUNCH_PARAM_BUFFER_SIZE = 2, CU_LAUNCH_PARAM_END = 0.
	size_t size = argSize;
	void *extra[5] = {(void *)1, args, (void *)2, &size, (void *)0};
	return FN(CUresult (*)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
		unsigned int, CUstream, void **, void **))(fn, gx, gy, gz, bx, by, bz, smem, s, NULL, argSize ? extra : NULL);
}
// cuLaunchKernelEx's configuration (cuda.h's CUlaunchConfig and CUlaunchAttribute, CUDA 12/13 layout): an
// attribute is a 4-byte id padded to 8 bytes, then a 64-byte value union whose members used here are ints.
typedef struct {
	int id;
	char pad[4];
	union {
		char raw[64];
		int i;
		void *align; // the union holds pointers: 8-byte aligned
	} value;
} sz_CUlaunchAttribute;
typedef struct {
	unsigned int gx, gy, gz, bx, by, bz, smem;
	CUstream stream;
	sz_CUlaunchAttribute *attrs;
	unsigned int numAttrs;
} sz_CUlaunchConfig;
static inline CUresult sz_cuLaunchKernelEx(void *f, CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz,
		unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, CUstream s, void *args, size_t argSize,
		const int *ids, const int *vals, unsigned int numAttrs) {
	sz_CUlaunchAttribute attrs[4];
	if (numAttrs > 4) return 1; // CUDA_ERROR_INVALID_VALUE
	for (unsigned int i = 0; i < numAttrs; i++) {
		for (int b = 0; b < 64; b++) attrs[i].value.raw[b] = 0;
		attrs[i].id = ids[i];
		attrs[i].pad[0] = attrs[i].pad[1] = attrs[i].pad[2] = attrs[i].pad[3] = 0;
		attrs[i].value.i = vals[i];
	}
	sz_CUlaunchConfig cfg = {gx, gy, gz, bx, by, bz, smem, s, numAttrs ? attrs : NULL, numAttrs};
	size_t size = argSize;
	void *extra[5] = {(void *)1, args, (void *)2, &size, (void *)0};
	return FN(CUresult (*)(const sz_CUlaunchConfig *, CUfunction, void **, void **))(&cfg, fn, NULL, argSize ? extra : NULL);
}
static inline CUresult sz_handle_out_flags(void *f, void **h, unsigned int flags) { return FN(CUresult (*)(void **, unsigned int))(h, flags); }
static inline CUresult sz_two_handles(void *f, void *a, void *b) { return FN(CUresult (*)(void *, void *))(a, b); }
static inline CUresult sz_cuStreamWaitEvent(void *f, CUstream s, CUevent e, unsigned int flags) { return FN(CUresult (*)(CUstream, CUevent, unsigned int))(s, e, flags); }
static inline CUresult sz_cuEventElapsedTime(void *f, float *ms, CUevent a, CUevent b) { return FN(CUresult (*)(float *, CUevent, CUevent))(ms, a, b); }
static inline CUresult sz_cuStreamBeginCapture(void *f, CUstream s, int mode) { return FN(CUresult (*)(CUstream, int))(s, mode); }
static inline CUresult sz_cuStreamEndCapture(void *f, CUstream s, CUgraph *g) { return FN(CUresult (*)(CUstream, CUgraph *))(s, g); }
static inline CUresult sz_cuGraphInstantiate(void *f, CUgraphExec *e, CUgraph g, unsigned long long flags) { return FN(CUresult (*)(CUgraphExec *, CUgraph, unsigned long long))(e, g, flags); }
static inline CUresult sz_cuMemcpyHtoDAsyncAddr(void *f, CUdeviceptr dst, unsigned long long src, size_t n, CUstream s) { return FN(CUresult (*)(CUdeviceptr, const void *, size_t, CUstream))(dst, (const void *)(size_t)src, n, s); }
static inline CUresult sz_cuMemcpyDtoHAsyncAddr(void *f, unsigned long long dst, CUdeviceptr src, size_t n, CUstream s) { return FN(CUresult (*)(void *, CUdeviceptr, size_t, CUstream))((void *)(size_t)dst, src, n, s); }
static inline CUresult sz_cuPointerGetAttributeAddr(void *f, void *data, int attr, unsigned long long p) { return FN(CUresult (*)(void *, int, CUdeviceptr))(data, attr, (CUdeviceptr)p); }
static inline void *sz_ptr(unsigned long long p) { return (void *)(size_t)p; }
#endif
