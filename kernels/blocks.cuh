// Raw block copies between a paged KV cache and a contiguous buffer: the raw frames of a handoff that stays in
// GPU memory (staged there by the producer, received there by the consumer) are gathered and scattered in one
// launch instead of one copy per block, whose enqueue cost (a few µs each, 64 Ki copies for a 16K-token
// Llama-3-8B request) would otherwise dominate a device-to-device handoff.
#pragma once

#include "device.cuh"

namespace sz {

constexpr int kBlockCopyThreads = 256;
constexpr int kBlockCopyUnroll = 4;  // 16-byte units a thread has in flight

struct BlockCopyParams {
  uint64_t bases;         // device array of cache base addresses (K0, V0, K1, V1, … as PagedMap reads them)
  uint64_t ids;           // n_blocks int32 block ids
  uint64_t buf;           // the contiguous side: segment g at buf + g × seg_bytes
  uint64_t stride_bytes;  // from one block of a base to the next
  uint64_t seg_bytes;     // bytes of one block of one base; a multiple of 16
  uint32_t n_blocks;
  uint32_t segs;    // segments copied: block ids[g % n_blocks] of base g / n_blocks, g < segs
  uint32_t gather;  // 1: cache → buf; 0: buf → cache
  uint32_t reserved;
};

// copy_blocks: a block copies a segment at a time (grid-stride over segments), its threads 16 bytes each with
// kBlockCopyUnroll loads in flight before their stores. Every address is 16-byte aligned (the launcher checks).
__device__ __forceinline__ void copy_blocks(const BlockCopyParams& p) {
  const uint64_t* bases = reinterpret_cast<const uint64_t*>(p.bases);
  const int32_t* ids = reinterpret_cast<const int32_t*>(p.ids);
  const uint64_t units = p.seg_bytes / 16;
  for (uint32_t g = blockIdx.x; g < p.segs; g += gridDim.x) {
    const uint32_t base = g / p.n_blocks, b = g - base * p.n_blocks;
    const uint64_t cache = bases[base] + (uint64_t)(int64_t)ids[b] * p.stride_bytes;
    const uint64_t lin = p.buf + (uint64_t)g * p.seg_bytes;
    const uint64_t src = p.gather ? cache : lin, dst = p.gather ? lin : cache;
    for (uint64_t u0 = threadIdx.x; u0 < units; u0 += kBlockCopyUnroll * kBlockCopyThreads) {
      uint4 v[kBlockCopyUnroll];
#pragma unroll
      for (int j = 0; j < kBlockCopyUnroll; j++) {
        const uint64_t u = u0 + (uint64_t)j * kBlockCopyThreads;
        if (u < units) v[j] = load16(src + 16 * u);
      }
#pragma unroll
      for (int j = 0; j < kBlockCopyUnroll; j++) {
        const uint64_t u = u0 + (uint64_t)j * kBlockCopyThreads;
        if (u < units) store16(dst + 16 * u, v[j]);
      }
    }
  }
}

}  // namespace sz
