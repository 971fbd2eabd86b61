// The benchmark's own kernels (internal/gpubench): baselines and a stream hold, not part of the codec. Built to
// PTX by `make -C internal/gpubench ptx` (see kernels/ptx.mk), embedded by the Go package.
#include <stdint.h>

// An empty kernel: the launch-latency baseline.
extern "C" __global__ void sz_noop() {}

// A plain 16-byte copy kernel (n16 16-byte words, grid-stride): the SM-side copy ceiling.
extern "C" __global__ void __launch_bounds__(256) sz_copy16(const uint4* __restrict__ src, uint4* __restrict__ dst, uint64_t n16) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n16; i += (uint64_t)gridDim.x * blockDim.x)
    dst[i] = src[i];
}

// Spins one thread for ns nanoseconds of the global timer: the bench holds a stream with it while the host
// queues a timed operation, so that its first event is recorded when the GPU reaches it rather than when the
// host does (the launch's host latency stays outside the timed window; nvbench holds streams the same way).
extern "C" __global__ void sz_spin(uint64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}
