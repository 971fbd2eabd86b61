// The tile decoder (t256c1: a tile of one chunk per block). A block's codes and residuals are loaded before the
// header is read (the destination size fixes a coded frame's layout), the header and the chunk table are
// checked, the tile's escapes are spread out in shared memory (a bit and an exponent per element), and each
// unit's escapes are patched in from there before the unit is stored. Raw frames are copied.
#pragma once

#include "device.cuh"
#include "format.cuh"

namespace sz {

// ---- decode --------------------------------------------------------------------------------------------------
// Two residual bytes (in the low 16 bits of r) spread into two bf16 values with zero exponent fields.
__device__ __forceinline__ uint32_t spread2(uint32_t r) {
  const uint32_t x = (r & 0xFF) | ((r & 0xFF00) << 8);
  return (x & 0x007F007Fu) | ((x & 0x00800080u) << 8);
}

// escape_pos reads escape k's chunk-local position.
__device__ __forceinline__ uint32_t escape_pos(const uint8_t* esc, uint32_t k) {
  return esc[3 * k] | ((uint32_t)esc[3 * k + 1] << 8);
}

// code_pairs fills pairs[i], for i = i0, i0 + step, … < 256, with code byte i's two elements' exponent fields
// in place, from the codebook in hdr[16..19].
__device__ __forceinline__ void code_pairs(const uint32_t* hdr, uint32_t* pairs, uint32_t i0, uint32_t step) {
  const uint8_t* cb = reinterpret_cast<const uint8_t*>(hdr + 16);
  for (uint32_t i = i0; i < 256; i += step) pairs[i] = ((uint32_t)cb[i & 0xF] << 7) | ((uint32_t)cb[i >> 4] << 23);
}

// check_tile validates a tile's header hdr and its CPT + 1 chunk table entries tab (starting at chunk c0) for
// one thread, reports an error to the status word (header errors only from a frame's first tile, which checks
// the CRC too: bad_crc; table errors from any) and returns the tile's status. A coded tile's table entries past
// the frame's last chunk become the escape total.
template <int CPT>
__device__ uint32_t check_tile(const DecParams& p, const Layout& L, const uint32_t* hdr, uint32_t* tab, uint32_t c0,
                               bool bad_crc) {
  uint32_t* status = reinterpret_cast<uint32_t*>(p.status);
  HeaderInfo h;
  uint32_t st = p.frame_cap < kHeaderSize ? (uint32_t)kTruncated : check_header(hdr, bad_crc, p.out_bytes, p.frame_cap, h);
  if (st != kOK) {
    if (c0 == 0) atomicCAS(status, 0u, st);
  } else if (!h.raw) {
    // Chunks past the frame's last end at the escape total; the table ascends within [0, E].
    for (int k = 0; k <= CPT; k++)
      if (c0 + k >= L.chunks) tab[k] = (uint32_t)h.escapes;
    if (c0 == 0 && tab[0] != 0) st = kCorrupt;
    for (int k = 0; k < CPT; k++)
      if (tab[k] > tab[k + 1] || tab[k + 1] > h.escapes) st = kCorrupt;
    if (st != kOK) atomicCAS(status, 0u, st);
  }
  return st;
}

// raw_copy copies blen bytes of a raw frame's payload from byte b0 on (a block's share: 16 bytes per thread
// and unit row) to frame f's destination.
template <int THREADS, int UPT, class Map>
__device__ __forceinline__ void raw_copy(const DecParams& p, const Map& map, const uint8_t* frame, uint32_t f, uint64_t b0, uint64_t blen) {
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint64_t ub = 16ull * (threadIdx.x + j * THREADS);
    if (ub + 16 <= blen) {
      store16(map.addr(f, (uint32_t)((b0 + ub) / 2)), *reinterpret_cast<const uint4*>(frame + kHeaderSize + b0 + ub));
    } else if (ub < blen) {
      // Bytes of odd-sized raw tensors (dense only: paged decodes are bf16).
      for (uint64_t k = ub; k < min(ub + 16, blen); k++) reinterpret_cast<uint8_t*>(p.dst)[b0 + k] = frame[kHeaderSize + b0 + k];
    }
  }
}

// ragged_unit reads the codes and residuals of the k < 8 elements of a frame's last unit, starting at element e.
__device__ __forceinline__ void ragged_unit(const uint8_t* frame, const Layout& L, uint64_t e, uint32_t k, uint32_t& cw, uint2& rw) {
  uint32_t r[2] = {0, 0};
  cw = 0;
#pragma unroll
  for (uint32_t b = 0; b < 8; b++) {
    if (b < (k + 1) / 2 && b < 4) cw |= (uint32_t)frame[L.codes + e / 2 + b] << (8 * b);
    if (b < k) r[b >> 2] |= (uint32_t)frame[L.residuals + e + b] << (8 * (b & 3));
  }
  rw = make_uint2(r[0], r[1]);
}

// decode_unit turns a unit's codes (4 bytes) and residuals (8 bytes) into its 8 bf16 values, two per word;
// pairs is code_pairs' table.
__device__ __forceinline__ uint4 decode_unit(uint32_t cw, uint2 rw, const uint32_t* pairs) {
  return make_uint4(spread2(rw.x) | pairs[cw & 0xFF], spread2(rw.x >> 16) | pairs[(cw >> 8) & 0xFF],
                    spread2(rw.y) | pairs[(cw >> 16) & 0xFF], spread2(rw.y >> 16) | pairs[cw >> 24]);
}

// set_exponent puts exponent x into element k (0..7) of a decoded unit.
__device__ __forceinline__ void set_exponent(uint4& o, uint32_t k, uint32_t x) {
  const uint32_t s = 16 * (k & 1), m = ~(0x7F80u << s), v = x << (7 + s);
  switch (k >> 1) {
    case 0: o.x = (o.x & m) | v; break;
    case 1: o.y = (o.y & m) | v; break;
    case 2: o.z = (o.z & m) | v; break;
    default: o.w = (o.w & m) | v; break;
  }
}

// store_unit writes decoded unit o at element e0 + ue of frame f's destination: 16 bytes when the unit is
// whole (len elements from e0), element by element at a ragged end; base: the address of e0 when contiguous,
// else 0.
template <class Map>
__device__ __forceinline__ void store_unit(const Map& map, uint64_t base, uint32_t f, uint32_t e0, uint32_t ue, uint32_t len,
                                           const uint4& o) {
  if (ue + kUnit <= len) {
    const uint64_t a = base ? base + 2ull * ue : map.addr(f, e0 + ue);
    store16(a, o);
    return;
  }
  const uint32_t w[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
  for (uint32_t k = 0; k < 8; k++)
    if (ue + k < len) *reinterpret_cast<uint16_t*>(map.addr(f, e0 + ue + k)) = (uint16_t)(w[k >> 1] >> (16 * (k & 1)));
}

// Decode tiles: a block decodes CPT consecutive chunks of one frame at a time (unit layout as in encoding).
template <int THREADS, int CPT>
struct DecShared {
  uint32_t hdr[20];  // header and codebook (first: its 16-byte loads need the alignment)
  uint32_t pairs[256];
  uint64_t base;  // paged: where the tile's elements start when they lie in one block (tile_base), else 0
  uint32_t tab[CPT + 1];  // escapes before each chunk of the tile, and after its last
  uint32_t status;
  // The tile's escapes by element e (from the tile's first): bit e % 32 of emask[e / 32] set when e escapes,
  // eexp[e] its exponent. Each thread finds its units' escapes with one shared load, whatever their number: a
  // binary search of the escape stream per unit, as before, cost escape-heavy frames up to half their speed.
  uint32_t emask[CPT * kChunk / 32];
  uint8_t eexp[CPT * kChunk];
};

// spread_escapes fills sh.emask and sh.eexp (emask zero) from the tile's escapes, a thread an escape, and
// reports an escape past its chunk's end or out of order as corrupt.
template <int THREADS, int CPT>
__device__ __forceinline__ void spread_escapes(const DecParams& p, const uint8_t* esc, uint32_t tile_len, DecShared<THREADS, CPT>& sh) {
  for (uint32_t k = sh.tab[0] + threadIdx.x; k < sh.tab[CPT]; k += THREADS) {
    uint32_t kc = 0;  // the tile's chunk that holds escape k
    while (kc + 1 < CPT && sh.tab[kc + 1] <= k) kc++;
    const uint32_t pos = escape_pos(esc, k), len = min(kChunk, tile_len - kc * kChunk);
    if (pos >= len || (k > sh.tab[kc] && escape_pos(esc, k - 1) >= pos)) {
      atomicCAS(reinterpret_cast<uint32_t*>(p.status), 0u, (uint32_t)kCorrupt);
      continue;
    }
    const uint32_t e = kc * kChunk + pos;
    atomicOr(&sh.emask[e / 32], 1u << (e % 32));
    sh.eexp[e] = esc[3 * k + 2];
  }
}

// dec_load loads tile t's codes and residuals. A coded frame that fills the destination has n = out_bytes / 2
// and so a known layout: the loads go out before the header is even read (when the frame turns out raw, or
// broken, they go unused; they never read past frame_cap).
template <int THREADS, int CPT>
__device__ __forceinline__ void dec_load(const DecParams& p, uint32_t t, uint32_t (&codes)[EncTile<THREADS, CPT>::UPT],
                                         uint2 (&res)[EncTile<THREADS, CPT>::UPT]) {
  constexpr int UPT = EncTile<THREADS, CPT>::UPT;
  const uint32_t tiles = (p.chunks + CPT - 1) / CPT;
  const uint32_t f = t / tiles, c0 = (t - f * tiles) * CPT;
  const uint8_t* frame = reinterpret_cast<const uint8_t*>(p.src + (uint64_t)f * p.frame_stride);
  const uint64_t nx = p.out_bytes / 2;
  const Layout L = bf16_layout(nx);
  const bool spec = (p.out_bytes & 1) == 0 && L.escapes <= p.frame_cap && c0 < L.chunks;
  const uint32_t t0 = c0 * kChunk;
  const uint32_t tile_len = spec ? (uint32_t)min((uint64_t)CPT * kChunk, nx - t0) : 0;
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    codes[j] = 0;
    res[j] = make_uint2(0, 0);
    if (ue + kUnit <= tile_len) {
      codes[j] = __ldcs(reinterpret_cast<const uint32_t*>(frame + L.codes + (t0 + ue) / 2));
      res[j] = __ldcs(reinterpret_cast<const uint2*>(frame + L.residuals + t0 + ue));
    }
  }
}

// dec_tile decodes tile t from its loaded codes and residuals. All threads call it; it begins with a barrier,
// so calls can follow each other.
template <int THREADS, int CPT, class Map>
__device__ __forceinline__ void dec_tile(const DecParams& p, const Map& map, uint32_t t,
                                         const uint32_t (&codes)[EncTile<THREADS, CPT>::UPT],
                                         const uint2 (&res)[EncTile<THREADS, CPT>::UPT], DecShared<THREADS, CPT>& sh) {
  constexpr int UPT = EncTile<THREADS, CPT>::UPT;
  const uint32_t tiles = (p.chunks + CPT - 1) / CPT;
  const uint32_t f = t / tiles, tile = t - f * tiles;
  const uint32_t c0 = tile * CPT;
  const uint8_t* frame = reinterpret_cast<const uint8_t*>(p.src + (uint64_t)f * p.frame_stride);
  const uint64_t nx = p.out_bytes / 2;
  const Layout L = bf16_layout(nx);
  const bool spec = (p.out_bytes & 1) == 0 && L.escapes <= p.frame_cap && c0 < L.chunks;
  const uint32_t t0 = c0 * kChunk;
  const uint32_t tile_len = spec ? (uint32_t)min((uint64_t)CPT * kChunk, nx - t0) : 0;

  __syncthreads();  // the previous tile is done with the shared state
  if (threadIdx.x < 5) {
    if (p.frame_cap >= kHeaderSize + 16 * (threadIdx.x / 4))
      reinterpret_cast<uint4*>(sh.hdr)[threadIdx.x] = reinterpret_cast<const uint4*>(frame)[threadIdx.x];
  } else if (threadIdx.x >= 32 && threadIdx.x < 32 + CPT + 1) {
    const uint32_t c = c0 + threadIdx.x - 32;
    if (spec && c < L.chunks) sh.tab[threadIdx.x - 32] = reinterpret_cast<const uint32_t*>(frame + L.table)[c];
  } else if (!Map::kDense && threadIdx.x == 64) {
    // One thread finds the tile's block, so that the others store without a block lookup (two divisions and
    // two loads) per unit.
    sh.base = tile_len ? tile_base(map, f, t0, tile_len) : 0;
  }
  for (uint32_t i = threadIdx.x; i < CPT * kChunk / 32; i += THREADS) sh.emask[i] = 0;
  __syncthreads();
  // A frame's first tile checks the header's CRC, with its first warp.
  bool bad_crc = false;
  if (c0 == 0 && threadIdx.x < 32) bad_crc = crc32c_words_warp(sh.hdr, 15) != sh.hdr[15];
  if (threadIdx.x == 0) sh.status = check_tile<CPT>(p, L, sh.hdr, sh.tab, c0, bad_crc);
  code_pairs(sh.hdr, sh.pairs, threadIdx.x, THREADS);
  __syncthreads();
  if (sh.status != kOK) return;

  if ((sh.hdr[1] >> 16) & kFlagRaw) {
    // Verbatim payload: this tile's CPT × 8 KiB of it.
    const uint64_t b0 = (uint64_t)c0 * (2 * kChunk);
    const uint64_t len = p.out_bytes;
    if (b0 >= len) return;
    raw_copy<THREADS, UPT>(p, map, frame, f, b0, min((uint64_t)CPT * (2 * kChunk), len - b0));
    return;
  }

  // Coded: the header said n == nx, so L and the loads are the frame's.
  const bool escapes = sh.tab[CPT] > sh.tab[0];  // the whole block's
  if (escapes) {
    spread_escapes<THREADS, CPT>(p, frame + L.escapes, tile_len, sh);
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    if (ue >= tile_len) continue;
    const bool full = ue + kUnit <= tile_len;
    uint32_t cw = codes[j];
    uint2 rw = res[j];
    if (!full) ragged_unit(frame, L, t0 + ue, tile_len - ue, cw, rw);
    uint4 o = decode_unit(cw, rw, sh.pairs);
    if (escapes) {
      for (uint32_t m = (sh.emask[ue / 32] >> (ue % 32)) & 0xFF; m; m &= m - 1) {
        const uint32_t k = __ffs(m) - 1;
        set_exponent(o, k, sh.eexp[ue + k]);
      }
    }
    store_unit(map, Map::kDense ? 0 : sh.base, f, t0, ue, tile_len, o);
  }
}

// decode_tile: one tile per block, tile = blockIdx.x.
template <int THREADS, int CPT, class Map>
__device__ __forceinline__ void decode_tile(const DecParams& p, const Map& map) {
  __shared__ DecShared<THREADS, CPT> sh;
  uint32_t codes[EncTile<THREADS, CPT>::UPT];
  uint2 res[EncTile<THREADS, CPT>::UPT];
  dec_load<THREADS, CPT>(p, blockIdx.x, codes, res);
  dec_tile<THREADS, CPT>(p, map, blockIdx.x, codes, res, sh);
}

}  // namespace sz
