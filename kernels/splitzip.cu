// Kernel entry points of the SplitZip GPU codec; the work is in splitzip.cuh. Built to PTX (see Makefile),
// which the Go package embeds and the driver JIT-compiles for the GPU at hand (sm_80 and newer).
#include "splitzip.cuh"

using namespace sz;

#define SZ_ENCODE(NAME, THREADS)                                                                     \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_dense(const EncParams p) {             \
    encode_chunk<THREADS>(p, DenseMap{p.src});                                                       \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_paged(const EncParams p) {             \
    encode_chunk<THREADS>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.src),                     \
                                      reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,       \
                                      p.block_elems, p.n_blocks, p.segs_per_frame});                 \
  }

#define SZ_RAW(NAME, THREADS)                                                                        \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_dense(const EncParams p) {             \
    raw_chunks<THREADS>(p, DenseMap{p.src});                                                          \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_paged(const EncParams p) {             \
    raw_chunks<THREADS>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.src),                        \
                                   reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,          \
                                   p.block_elems, p.n_blocks, p.segs_per_frame});                    \
  }

#define SZ_DECODE(NAME, THREADS)                                                                     \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_dense(const DecParams p) {             \
    decode_chunk<THREADS>(p, DenseMap{p.dst});                                                       \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_paged(const DecParams p) {             \
    decode_chunk<THREADS>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.dst),                     \
                                      reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,       \
                                      p.block_elems, p.n_blocks, p.segs_per_frame});                 \
  }

// Block sizes: 256 threads (two 16-byte units per thread per chunk) is the default; 128 and 512 are kept
// for tuning (kernels.WithBlockSize).
SZ_ENCODE(sz_encode_t128, 128)
SZ_ENCODE(sz_encode_t256, 256)
SZ_ENCODE(sz_encode_t512, 512)
SZ_RAW(sz_raw_t256, 256)
SZ_DECODE(sz_decode_t128, 128)
SZ_DECODE(sz_decode_t256, 256)
SZ_DECODE(sz_decode_t512, 512)

// An empty kernel: the launch-latency baseline of the benchmarks.
extern "C" __global__ void sz_noop() {}
