// Kernel entry points of the SplitZip GPU codec (format v1: bf16 tensors, 4-bit exponent codes, 4,096-element
// chunks), each for a dense tensor and for a request's blocks in a paged KV cache. Built to PTX (see Makefile),
// which the Go package embeds and the driver JIT-compiles for the GPU at hand (sm_80 and newer).
//
// The frame layout is codec/FORMAT.md's. Offsets of the dense sections depend only on the element count n, so
// every block writes its chunk's codes and residuals without waiting for anyone. Escapes are rare; the encoders
// place them in one of two ways:
//   - the tile encoder (encode_tile.cuh; inputs below SmallEncodeBytes): a block counts its chunks' escapes,
//     learns how many came before by a decoupled look-back over the per-tile counts, and writes them; the block
//     of a frame's last tile writes the header and the frame length;
//   - the streaming encoder (encode_stream.cuh; larger inputs): its warps park a chunk's escapes in the workspace
//     and extra blocks at the end of its grid place them, so nothing waits in the data path.
// The raw fallback kernel (raw.cuh) runs after either and copies the frames whose escapes would not fit. The
// tile decoder (decode.cuh) decodes a chunk per block and patches each unit's escapes from the chunk table.
// The encoders' workspace is zero between calls but for its counters (ws_counters): the caller zeroes it once;
// the streaming encoder's finishing and header blocks zero what they read, and after the tile encoder the raw
// fallback kernel zeroes the words it used.
//
// The names keep the shapes: t<threads>c<chunks per block> for tile kernels, s<threads>u<16-byte units per lane
// in flight> for the streaming encoder.
#include "decode.cuh"
#include "encode_stream.cuh"
#include "encode_tile.cuh"
#include "raw.cuh"
#include "entropy.cuh"
#include "crc.cuh"
#include "blocks.cuh"

using namespace sz;

#define SZ_PAGED_MAP(BASES)                                                                              \
  PagedMap {                                                                                            \
    reinterpret_cast<const uint64_t*>(BASES), reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes, \
        p.block_elems, p.n_blocks, p.segs_per_frame                                                     \
  }

// The tile encoder: a block codes 4 chunks.
extern "C" __global__ void __launch_bounds__(256) sz_encode_t256c4_dense(const EncParams p) {
  encode_tile<256, 4>(p, DenseMap{p.src});
}
extern "C" __global__ void __launch_bounds__(256) sz_encode_t256c4_paged(const EncParams p) {
  encode_tile<256, 4>(p, SZ_PAGED_MAP(p.src));
}

// The streaming encoder: a warp codes a chunk with 8 units per lane in flight; registers capped for 3 blocks
// per SM (~80 a thread).
extern "C" __global__ void __launch_bounds__(256, 3) sz_encode_s256u8_dense(const EncParams p) {
  encode_stream<256, 8>(p, DenseMap{p.src});
}
extern "C" __global__ void __launch_bounds__(256, 3) sz_encode_s256u8_paged(const EncParams p) {
  encode_stream<256, 8>(p, SZ_PAGED_MAP(p.src));
}

// The raw fallback kernel, launched after every encode (and alone when the host sees a frame must be raw).
extern "C" __global__ void __launch_bounds__(256) sz_raw_t256_dense(const EncParams p) {
  raw_chunks<256>(p, DenseMap{p.src});
}
extern "C" __global__ void __launch_bounds__(256) sz_raw_t256_paged(const EncParams p) {
  raw_chunks<256>(p, SZ_PAGED_MAP(p.src));
}

// The tile decoder: a block decodes a chunk.
extern "C" __global__ void __launch_bounds__(256) sz_decode_t256c1_dense(const DecParams p) {
  decode_tile<256, 1>(p, DenseMap{p.dst});
}
extern "C" __global__ void __launch_bounds__(256) sz_decode_t256c1_paged(const DecParams p) {
  decode_tile<256, 1>(p, SZ_PAGED_MAP(p.dst));
}

// The high-ratio mode (entropy.cuh, format v2), 8,192-element chunks: a block of 8 warps encodes two, a warp
// decodes one (frames of 16,384-element chunks too). hr_prepare readies the encode's workspace and table. The
// encoder's registers are capped for 6 blocks an SM (40 a thread; with 64 and 4 blocks it ran 10 % slower on an
// H100), and so are the bf16 decoder's, where its shared memory allows 6 (dense: 40 a thread, 48 uncapped;
// paged: 5 blocks at 48, 64 uncapped). bf16 here; fp8 below.
extern "C" __global__ void __launch_bounds__(256) sz_hr_prepare(const HREncParams p) { hr_prepare<HRBF16>(p); }
extern "C" __global__ void __launch_bounds__(256, 6) sz_hr_encode_dense(const HREncParams p) {
  hr_encode<HRBF16>(p, DenseMap{p.src});
}
extern "C" __global__ void __launch_bounds__(256, 6) sz_hr_encode_paged(const HREncParams p) {
  hr_encode<HRBF16>(p, SZ_PAGED_MAP(p.src));
}
extern "C" __global__ void __launch_bounds__(256) sz_hr_raw_dense(const HREncParams p) {
  hr_raw<HRBF16>(p, DenseMap{p.src});
}
extern "C" __global__ void __launch_bounds__(256) sz_hr_raw_paged(const HREncParams p) {
  hr_raw<HRBF16>(p, SZ_PAGED_MAP(p.src));
}
extern "C" __global__ void __launch_bounds__(256, 6) sz_hr_decode_dense(const HRDecParams p) {
  hr_decode<HRBF16, 8>(p, DenseMap{p.dst});
}
extern "C" __global__ void __launch_bounds__(256, 5) sz_hr_decode_paged(const HRDecParams p) {
  hr_decode<HRBF16, 8>(p, SZ_PAGED_MAP(p.dst));
}

// The high-ratio mode for fp8 KV (1-byte elements; a paged cache's blocks through PagedByteMap): the same
// kernels per dtype, named sz_hr_<kernel>_<dtype>_<dense|paged>, with bf16's register caps (the compiler gave
// e4m3's dense decoder 32 uncapped, and it ran slower).
#define SZ_PAGED_BYTE_MAP(BASES)                                                                         \
  PagedByteMap {                                                                                        \
    reinterpret_cast<const uint64_t*>(BASES), reinterpret_cast<const int32_t*>(p.ids), p.stride_bytes, \
        p.block_elems, p.n_blocks, p.segs_per_frame                                                     \
  }
#define SZ_HR_FP8(NAME, T)                                                                                            \
  extern "C" __global__ void __launch_bounds__(256) sz_hr_prepare_##NAME(const HREncParams p) { hr_prepare<T>(p); }   \
  extern "C" __global__ void __launch_bounds__(256, 6) sz_hr_encode_##NAME##_dense(const HREncParams p) {             \
    hr_encode<T>(p, DenseByteMap{p.src});                                                                             \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(256, 6) sz_hr_encode_##NAME##_paged(const HREncParams p) {             \
    hr_encode<T>(p, SZ_PAGED_BYTE_MAP(p.src));                                                                        \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(256) sz_hr_raw_##NAME##_dense(const HREncParams p) {                   \
    hr_raw<T>(p, DenseByteMap{p.src});                                                                                \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(256) sz_hr_raw_##NAME##_paged(const HREncParams p) {                   \
    hr_raw<T>(p, SZ_PAGED_BYTE_MAP(p.src));                                                                           \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(256, 6) sz_hr_decode_##NAME##_dense(const HRDecParams p) {             \
    hr_decode<T, 8>(p, DenseByteMap{p.dst});                                                                          \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(256, 5) sz_hr_decode_##NAME##_paged(const HRDecParams p) {             \
    hr_decode<T, 8>(p, SZ_PAGED_BYTE_MAP(p.dst));                                                                     \
  }
SZ_HR_FP8(e4m3, HRE4M3)
SZ_HR_FP8(e5m2, HRE5M2)

// CRC-32C of a device buffer (crc.cuh): a 512-byte piece a thread.
extern "C" __global__ void __launch_bounds__(256) sz_crc32c(const CRCParams p) { crc32c(p); }

// Raw block copies between a paged cache and a contiguous buffer (blocks.cuh).
extern "C" __global__ void __launch_bounds__(256) sz_copy_blocks(const BlockCopyParams p) { copy_blocks(p); }
