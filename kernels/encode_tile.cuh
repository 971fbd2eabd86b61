// The tile encoder (t256c4: inputs below SmallEncodeBytes): a block codes a tile of chunks, counts its escapes,
// learns how many came before by a decoupled look-back over the per-tile counts and writes them; the block of
// a frame's last tile writes the header (CRC-32C included) and the frame length, a raw header when the coded
// frame would not fit (the raw fallback kernel then copies the payload).
#pragma once

#include "encode.cuh"

namespace sz {

// ---- decoupled look-back over the tiles -----------------------------------------------------------------------
// lookback_warp publishes chunk c's count agg and returns the sum of the counts of chunks 0..c-1 of its frame.
// Called by one whole warp; state is the frame's per-chunk words, zeroed before the launch. Blocks are
// dispatched in index order, so every predecessor has run far enough to publish its count. It is
// lookback_publish followed by lookback_walk, which a caller with work in between can call apart: its
// predecessors then have that much longer to publish their prefixes, and its walk is shorter.
__device__ __forceinline__ void lookback_publish(uint64_t* state, uint32_t c, uint32_t agg) {
  if ((threadIdx.x & 31) == 0) st_relaxed_gpu(state + c, (c == 0 ? kFlagPrefix : kFlagAggregate) | agg);
}
__device__ __forceinline__ uint32_t lookback_walk(uint64_t* state, uint32_t c, uint32_t agg) {
  const int lane = threadIdx.x & 31;
  if (c == 0) return 0;
  uint32_t excl = 0;
  int64_t base = (int64_t)c - 1;
  while (true) {
    const int64_t idx = base - lane;
    uint64_t v = kFlagPrefix;  // before the frame's first chunk: prefix 0
    if (idx >= 0) {
      do {
        v = ld_relaxed_gpu(state + idx);
      } while ((v >> 32) == 0);
    }
    const uint32_t pre = __ballot_sync(0xFFFFFFFFu, (v >> 32) == 2);
    uint32_t val = (uint32_t)v;
    if (pre && lane > __ffs(pre) - 1) val = 0;
    excl += warp_sum(val);
    if (pre) break;
    base -= 32;
  }
  if (lane == 0) st_relaxed_gpu(state + c, kFlagPrefix | (excl + agg));
  return excl;
}
// (The publishing is written out here rather than called, so that the tile encoder compiles to the code it was
// timed with.)
__device__ uint32_t lookback_warp(uint64_t* state, uint32_t c, uint32_t agg) {
  const int lane = threadIdx.x & 31;
  if (c == 0) {
    if (lane == 0) st_relaxed_gpu(state, kFlagPrefix | agg);
    return 0;
  }
  if (lane == 0) st_relaxed_gpu(state + c, kFlagAggregate | agg);
  return lookback_walk(state, c, agg);
}

// ---- block scan of packed per-thread counts -----------------------------------------------------------------
// block_inclusive_scan scans NP 64-bit words per thread (each packs four 16-bit counts) across the block.
template <int THREADS, int NP>
__device__ __forceinline__ void block_inclusive_scan(uint64_t (&x)[NP], uint64_t (*warp_tot)[THREADS / 32],
                                                     uint64_t (&total)[NP]) {
  constexpr int W = THREADS / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < NP; q++) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t y = __shfl_up_sync(0xFFFFFFFFu, x[q], o);
      if (lane >= o) x[q] += y;
    }
    if (lane == 31) warp_tot[q][warp] = x[q];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int q = 0; q < NP; q++) {
      uint64_t t = lane < W ? warp_tot[q][lane] : 0;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint64_t y = __shfl_up_sync(0xFFFFFFFFu, t, o);
        if (lane >= o) t += y;
      }
      if (lane < W) warp_tot[q][lane] = t;
    }
  }
  __syncthreads();
#pragma unroll
  for (int q = 0; q < NP; q++) {
    if (warp > 0) x[q] += warp_tot[q][warp - 1];
    total[q] = warp_tot[q][W - 1];
  }
}

// ---- the tile encoder --------------------------------------------------------------------------------------------
// EncShared is an encode block's shared memory.
template <int THREADS, int CPT>
struct EncShared {
  uint8_t code_of[256];
  uint64_t warp_tot[EncTile<THREADS, CPT>::NP][THREADS / 32];
  uint32_t excl;
};

// enc_load issues the loads of tile t (global index over all frames' tiles).
template <int THREADS, int CPT, class Map>
__device__ __forceinline__ void enc_load(const EncParams& p, const Map& map, uint32_t t, uint4 (&v)[EncTile<THREADS, CPT>::UPT]) {
  constexpr int UPT = EncTile<THREADS, CPT>::UPT;
  const uint32_t tiles = (p.chunks + CPT - 1) / CPT;
  const uint32_t f = t / tiles, tile = t - f * tiles;
  const uint64_t n = p.n;
  const uint32_t t0 = tile * CPT * kChunk;
  const uint32_t tile_len = (uint32_t)min((uint64_t)CPT * kChunk, n - t0);
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    if (ue + kUnit <= tile_len) {
      v[j] = load16(map.addr(f, t0 + ue));
    } else {
      uint32_t h[8];
#pragma unroll
      for (uint32_t k = 0; k < 8; k++)
        h[k] = ue + k < tile_len ? *reinterpret_cast<const uint16_t*>(map.addr(f, t0 + ue + k)) : 0u;
      v[j] = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
    }
  }
}

// finish_frame: the frame's last tile knows the escape total E: header, codebook, gap bytes, length. A whole
// warp calls it.
__device__ __forceinline__ void finish_frame(const EncParams& p, uint8_t* frame, uint32_t f, uint64_t n, uint64_t E) {
  if (!frame_is_raw(n, E)) put_frame_constants(p, frame, n, threadIdx.x & 31, 32);
  finish_header<true>(p, frame, f, n, E);
}

// enc_code codes tile t from its loaded units v: dense sections, escape scan, look-back, chunk table, escapes,
// and for a frame's last tile the header. All threads call it.
template <int THREADS, int CPT, class Map>
__device__ __forceinline__ void enc_code(const EncParams& p, const Map& map, uint32_t t,
                                         const uint4 (&v)[EncTile<THREADS, CPT>::UPT], EncShared<THREADS, CPT>& sh) {
  constexpr int UPT = EncTile<THREADS, CPT>::UPT;
  constexpr int NP = EncTile<THREADS, CPT>::NP;
  const uint32_t tiles = (p.chunks + CPT - 1) / CPT;
  const uint32_t f = t / tiles, tile = t - f * tiles;
  const uint32_t c0 = tile * CPT;
  const uint64_t n = p.n;
  const Layout L = bf16_layout(n);
  uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
  const uint64_t max_len = kHeaderSize + 2 * n;
  const uint32_t t0 = c0 * kChunk;
  const uint32_t tile_len = (uint32_t)min((uint64_t)CPT * kChunk, n - t0);
  const uint8_t* code_of = sh.code_of;
  uint32_t esc[UPT];
  uint64_t packed[NP];
#pragma unroll
  for (int q = 0; q < NP; q++) packed[q] = 0;
  uint32_t any = 0;
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    uint32_t codes;
    uint2 res;
    encode_unit4(v[j], code_of, codes, res, esc[j]);
    if (ue + kUnit <= tile_len) {
      *reinterpret_cast<uint32_t*>(frame + L.codes + (t0 + ue) / 2) = codes;
      *reinterpret_cast<uint2*>(frame + L.residuals + t0 + ue) = res;
    } else if (ue < tile_len) {
      const uint32_t k = tile_len - ue;  // 1..7 elements
      esc[j] &= (1u << k) - 1;
      codes &= (1u << (4 * k)) - 1;  // the high nibble of an odd last byte is zero
      for (uint32_t b = 0; b < (k + 1) / 2; b++) frame[L.codes + (t0 + ue) / 2 + b] = (uint8_t)(codes >> (8 * b));
      for (uint32_t b = 0; b < k; b++)
        frame[L.residuals + t0 + ue + b] = (uint8_t)((b < 4 ? res.x : res.y) >> (8 * (b & 3)));
    } else {
      esc[j] = 0;
    }
    packed[j / 4] |= (uint64_t)__popc(esc[j]) << (16 * (j % 4));
    any |= esc[j];
  }

  // Escape counts per unit row j (T[j]), this thread's exclusive prefix within each row (before).
  uint64_t total[NP], before[NP];
#pragma unroll
  for (int q = 0; q < NP; q++) total[q] = before[q] = 0;
  const bool has_escapes = __syncthreads_or(any != 0);
  if (has_escapes) {
    uint64_t incl[NP];
#pragma unroll
    for (int q = 0; q < NP; q++) incl[q] = packed[q];
    block_inclusive_scan<THREADS, NP>(incl, sh.warp_tot, total);
#pragma unroll
    for (int q = 0; q < NP; q++) before[q] = incl[q] - packed[q];
  }
  uint32_t agg = 0;
#pragma unroll
  for (int j = 0; j < UPT; j++) agg += (uint32_t)(total[j / 4] >> (16 * (j % 4))) & 0xFFFF;

  uint64_t* state = reinterpret_cast<uint64_t*>(ws_body(p)) + 1 + (uint64_t)f * tiles;
  if (threadIdx.x < 32) {
    const uint32_t excl = lookback_warp(state, tile, agg);
    if (threadIdx.x == 0) {
      sh.excl = excl;
      // The chunk table: escapes before each chunk of the tile.
      uint32_t run = excl;
#pragma unroll
      for (int j = 0; j < UPT; j++) {
        if ((j * THREADS) % kUnitsPerChunk == 0) {
          const uint32_t c = c0 + (j * THREADS) / kUnitsPerChunk;
          if (c < p.chunks) *reinterpret_cast<uint32_t*>(frame + L.table + 4ull * c) = run;
        }
        run += (uint32_t)(total[j / 4] >> (16 * (j % 4))) & 0xFFFF;
      }
    }
    if (tile == tiles - 1) finish_frame(p, frame, f, n, (uint64_t)excl + agg);  // excl and agg: the same in every lane
  }
  if (!has_escapes) return;
  __syncthreads();

  // Escapes, in (chunk, position) order: unit rows j ascend with the chunk, threads with the position.
  uint32_t idx = sh.excl;
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    uint32_t m = esc[j];
    uint32_t k = idx + (uint32_t)((before[j / 4] >> (16 * (j % 4))) & 0xFFFF);
    const uint32_t pos0 = kUnit * ((threadIdx.x + j * THREADS) % kUnitsPerChunk);  // chunk-local
    while (m) {
      const int b = __ffs(m) - 1;
      m &= m - 1;
      const uint32_t pos = pos0 + b;
      // Read the escaped element again (an L2 hit, and rare) rather than keep the tile in registers
      // through the scan and the look-back: fewer registers, more blocks in flight.
      const uint32_t w = *reinterpret_cast<const uint16_t*>(map.addr(f, t0 + pos0 + (j * THREADS / kUnitsPerChunk) * kChunk + b));
      const uint64_t off = L.escapes + kEscapeSize * (uint64_t)k;
      k++;
      // Past max_len the frame falls back to raw; never write beyond the destination.
      if (off + 2 < max_len) {
        frame[off] = (uint8_t)pos;
        frame[off + 1] = (uint8_t)(pos >> 8);
        frame[off + 2] = (uint8_t)(w >> 7);
      }
    }
    idx += (uint32_t)(total[j / 4] >> (16 * (j % 4))) & 0xFFFF;
  }
}

// encode_tile: one tile per block, tile = blockIdx.x.
template <int THREADS, int CPT, class Map>
__device__ __forceinline__ void encode_tile(const EncParams& p, const Map& map) {
  __shared__ EncShared<THREADS, CPT> sh;
  launch_dependents();
  uint4 v[EncTile<THREADS, CPT>::UPT];
  enc_load<THREADS, CPT>(p, map, blockIdx.x, v);  // the loads fly while the code table is built
  enc_code_table<THREADS>(p, sh.code_of);
  __syncthreads();
  enc_code<THREADS, CPT>(p, map, blockIdx.x, v, sh);
}

}  // namespace sz
