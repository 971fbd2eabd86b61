// Kernel entry points of the SplitZip GPU codec; the work is in splitzip.cuh. Built to PTX (see Makefile),
// which the Go package embeds and the driver JIT-compiles for the GPU at hand (sm_80 and newer).
#include "splitzip.cuh"

using namespace sz;

#define SZ_ENCODE(NAME, THREADS, CPT, KIND)                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_dense(const EncParams p) {             \
    encode_##KIND<THREADS, CPT>(p, DenseMap{p.src});                                                 \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_paged(const EncParams p) {             \
    encode_##KIND<THREADS, CPT>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.src),                 \
                                          reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,   \
                                          p.block_elems, p.n_blocks, p.segs_per_frame});             \
  }

#define SZ_RAW(NAME, THREADS)                                                                        \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_dense(const EncParams p) {             \
    raw_chunks<THREADS>(p, DenseMap{p.src});                                                         \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_paged(const EncParams p) {             \
    raw_chunks<THREADS>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.src),                        \
                                    reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,         \
                                    p.block_elems, p.n_blocks, p.segs_per_frame});                   \
  }

#define SZ_DECODE(NAME, THREADS, CPT, KIND)                                                          \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_dense(const DecParams p) {             \
    decode_##KIND<THREADS, CPT>(p, DenseMap{p.dst});                                                 \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME##_paged(const DecParams p) {             \
    decode_##KIND<THREADS, CPT>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.dst),                 \
                                          reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,   \
                                          p.block_elems, p.n_blocks, p.segs_per_frame});             \
  }

// Variants "t<threads>c<chunks per tile>": one tile per block, chosen with kernels.WithKernels; the bench
// times them.
#define SZ_VARIANT(T, C)                                    \
  SZ_ENCODE(sz_encode_t##T##c##C, T, C, tile)              \
  SZ_DECODE(sz_decode_t##T##c##C, T, C, tile)

SZ_VARIANT(256, 1)
SZ_VARIANT(256, 2)
SZ_VARIANT(256, 4)

// Pipelined persistent variants "t<threads>c<chunks per tile>s<stages>" (see encode_pipe, decode_pipe).
#define SZ_PIPE(T, C, S, EB, DB)                                                                                 \
  extern "C" __global__ void __launch_bounds__(T, EB) sz_encode_t##T##c##C##s##S##_dense(const EncParams p) { \
    encode_pipe<T, C, S>(p, DenseMap{p.src});                                                              \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(T, EB) sz_encode_t##T##c##C##s##S##_paged(const EncParams p) { \
    encode_pipe<T, C, S>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.src),                            \
                                     reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,              \
                                     p.block_elems, p.n_blocks, p.segs_per_frame});                        \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(T, DB) sz_decode_t##T##c##C##s##S##_dense(const DecParams p) { \
    decode_pipe<T, C, S>(p, DenseMap{p.dst});                                                              \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(T, DB) sz_decode_t##T##c##C##s##S##_paged(const DecParams p) { \
    decode_pipe<T, C, S>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.dst),                            \
                                     reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,              \
                                     p.block_elems, p.n_blocks, p.segs_per_frame});                        \
  }

// EB, DB: encode and decode blocks per SM the registers are capped for (the shared memory allows as many).
// Measured slower than the tile kernels (BENCH.md): kept as one variant, tested and timed, not a default.
SZ_PIPE(256, 1, 4, 6, 8)

SZ_RAW(sz_raw_t256, 256)

// Streaming variants "s<threads>u<units per lane>": the encoder codes a chunk per warp with u 16-byte units
// per lane in flight and blocks appended to its grid place the escapes; the decoder decodes a chunk per block
// of <threads>.
#define SZ_STREAM(T, U, EB)                                                                                  \
  extern "C" __global__ void __launch_bounds__(T, EB) sz_encode_s##T##u##U##_dense(const EncParams p) {      \
    encode_stream<T, U>(p, DenseMap{p.src});                                                              \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(T, EB) sz_encode_s##T##u##U##_paged(const EncParams p) {      \
    encode_stream<T, U>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.src),                              \
                                    reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,               \
                                    p.block_elems, p.n_blocks, p.segs_per_frame});                         \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(T) sz_decode_s##T##u##U##_dense(const DecParams p) {          \
    decode_stream<T>(p, DenseMap{p.dst});                                                                 \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(T) sz_decode_s##T##u##U##_paged(const DecParams p) {          \
    decode_stream<T>(p, PagedMap{reinterpret_cast<const uint64_t*>(p.dst),                  \
                                 reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes,                  \
                                 p.block_elems, p.n_blocks, p.segs_per_frame});                            \
  }

// EB: encode blocks per SM the registers are capped for (u4: 64 registers a thread; u8: ~80).
SZ_STREAM(256, 4, 4)
SZ_STREAM(256, 8, 3)
SZ_STREAM(128, 8, 6)

// An empty kernel: the launch-latency baseline of the benchmarks.
extern "C" __global__ void sz_noop() {}

// A plain 16-byte copy kernel: the bench's SM-side copy ceiling.
extern "C" __global__ void __launch_bounds__(256) sz_copy16(const uint4* src, uint4* dst, uint64_t n16) {
  copy16(src, dst, n16);
}

// Spins one thread for ns nanoseconds of the global timer: the benchmarks hold a stream with it while the host
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
