// The raw fallback kernel, which runs after every encode: it copies the frames that fall back to raw (their
// escapes would not fit) verbatim behind their header, after the tile encoder zeroes its control words, and
// after the streaming encoder places the escapes its finishing warps deferred.
#pragma once

#include "device.cuh"
#include "encode_stream.cuh"
#include "format.cuh"

namespace sz {

// raw_chunk copies chunk c of frame f verbatim behind its header: always (kRawHost: the host saw the coded
// layout cannot fit, and the header is written here too), or when the encode kernel wrote a raw header.
template <int THREADS, class Map>
__device__ __forceinline__ void raw_chunk(const EncParams& p, const Map& map, uint32_t g) {
  constexpr int UPT = kUnitsPerChunk / THREADS;
  const uint32_t f = g / p.chunks, c = g - f * p.chunks;
  const uint64_t n = p.n;
  uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
  if (p.raw_mode == kRawHost && c == 0 && threadIdx.x == 0) {
    write_header(frame, n, 0, true, 2 * n);
    reinterpret_cast<uint64_t*>(p.sizes)[f] = kHeaderSize + 2 * n;
  }
  const uint32_t e0 = c * kChunk;
  if (e0 >= n) return;
  const uint32_t chunk_len = min((uint64_t)kChunk, n - e0);
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    if (ue + kUnit <= chunk_len) {
      store16((uint64_t)(frame + kHeaderSize + 2ull * (e0 + ue)), load16(map.addr(f, e0 + ue)));
    } else {
      for (uint32_t k = 0; ue + k < chunk_len; k++)
        *reinterpret_cast<uint16_t*>(frame + kHeaderSize + 2ull * (e0 + ue + k)) =
            *reinterpret_cast<const uint16_t*>(map.addr(f, e0 + ue + k));
    }
  }
}

// ws_control_words is how many leading 64-bit words of the workspace body a tile encoder leaves nonzero: its
// counter and look-back words (at most one per chunk). The streaming encoder's look-back words, group and frame
// totals and escape counts fit in as many (two words per group, one per frame, half a word per chunk: with
// groups of 32 chunks, at most chunks + 4 words per frame), so the host's reset of these words after a failed
// launch (controlBytes in gpucodec.go) covers both encoders.
__device__ __forceinline__ uint64_t ws_control_words(const EncParams& p) { return 1 + (uint64_t)p.frames * (p.chunks + 4); }

// raw_chunks runs after every encoder and strides over the chunks of the frames that fall back to raw. After a
// tile encoder it waits for it (griddepcontrol.wait), zeroes the workspace's control words, which the next call
// expects zero, and reads each frame's header flag. After the streaming encoder, whose finishing and header
// warps leave the workspace zero themselves, thread 0 of each block polls the decision count (ws_counters) until
// every frame of this call is decided, which happens as soon as the header blocks know the escape totals and
// every group's prefix; only when a frame went raw or a group deferred its escapes does the kernel wait for the
// encoder, whose unfenced stores the raw copy overwrites and whose chunk table place_deferred reads. So in the
// common case no block waits for the encoder's completion, which with the header read after it cost the
// 256 MiB encode ~2 µs (docs/gpu-kernels.md).
template <int THREADS, class Map>
__device__ __forceinline__ void raw_chunks(const EncParams& p, const Map& map) {
  if (p.raw_mode == kRawAfterStream) {
    __shared__ uint32_t late;
    if (threadIdx.x == 0) {
      // A block's seen word was written by the block of the same index in an earlier call, which completed
      // before this call's encoder started: a plain load reads it.
      uint64_t* ctr = ws_counters(p);
      const uint64_t seen = ctr[kSeenWord + blockIdx.x];
      uint64_t d = ld_relaxed_gpu(ctr);
      while ((uint32_t)(d - seen) < p.frames) {
        __nanosleep(128);
        d = ld_relaxed_gpu(ctr);
      }
      ctr[kSeenWord + blockIdx.x] = d;
      late = (uint32_t)((d - seen) >> 32);  // nonzero also after 2^32 decisions (a borrow): then it checks
    }
    __syncthreads();
    if (late == 0) return;
  }
  wait_prerequisites();  // the encoder's headers, chunk tables and stores; its look-back words are no longer read
  if (p.raw_mode == kRawAfterTile) {
    uint64_t* w = reinterpret_cast<uint64_t*>(ws_body(p));
    const uint64_t words = ws_control_words(p);
    for (uint64_t i = (uint64_t)blockIdx.x * THREADS + threadIdx.x; i < words; i += (uint64_t)gridDim.x * THREADS) w[i] = 0;
  }
  for (uint32_t f = 0; f < p.frames; f++) {
    const uint8_t* frame = reinterpret_cast<const uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
    if (p.raw_mode != kRawHost && !(__ldcg(frame + 6) & kFlagRaw)) continue;
    for (uint32_t c = blockIdx.x; c < p.chunks; c += gridDim.x) raw_chunk<THREADS>(p, map, f * p.chunks + c);
  }
  if (p.raw_mode == kRawAfterStream) {
    __shared__ uint8_t code_of[256];
    enc_code_table<THREADS>(p, code_of);
    __syncthreads();
    place_deferred<THREADS>(p, map, code_of);
  }
}

}  // namespace sz
