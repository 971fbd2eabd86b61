// What both encoders share: the look-back flags, unit coding, the code table, and the frame's constants and
// header once its escape total is known.
#pragma once

#include "device.cuh"
#include "format.cuh"

namespace sz {

// ---- decoupled look-back -------------------------------------------------------------------------------------
// A look-back word (a tile's, or a streaming group's) holds a flag in its high half and a count in its low half:
// the tile's own escapes (aggregate) or those up to and including it (prefix). Zero: not published yet.
constexpr uint64_t kFlagAggregate = 1ull << 32;
constexpr uint64_t kFlagPrefix = 2ull << 32;

// ---- coding ----------------------------------------------------------------------------------------------------
// encode_unit4: 8 elements -> 8 4-bit codes, 8 residual bytes, escape mask. tab[x] = code of exponent x, or
// 0x10 for an escape (code 0 written).
__device__ __forceinline__ void encode_unit4(const uint4& v, const uint8_t* tab, uint32_t& codes, uint2& res, uint32_t& esc) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  uint32_t r[4], c[8];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    r[i] = (w[i] & 0x007F007Fu) | ((w[i] >> 8) & 0x00800080u);
    c[2 * i] = tab[(w[i] >> 7) & 0xFF];
    c[2 * i + 1] = tab[(w[i] >> 23) & 0xFF];
  }
  res = make_uint2(__byte_perm(r[0], r[1], 0x6420), __byte_perm(r[2], r[3], 0x6420));
  const uint32_t x0 = __byte_perm(__byte_perm(c[0], c[1], 0x0040), __byte_perm(c[2], c[3], 0x0040), 0x5410);
  const uint32_t x1 = __byte_perm(__byte_perm(c[4], c[5], 0x0040), __byte_perm(c[6], c[7], 0x0040), 0x5410);
  const uint32_t y0 = x0 & 0x0F0F0F0Fu, y1 = x1 & 0x0F0F0F0Fu;
  codes = __byte_perm(y0 | (y0 >> 4), y1 | (y1 >> 4), 0x6420);
  esc = 0;
  if ((x0 | x1) & 0x10101010u) {
#pragma unroll
    for (int k = 0; k < 8; k++) esc |= ((c[k] >> 4) & 1u) << k;
  }
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, uint32_t i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// enc_code_table: code k stands for codebook byte k; the first code of a repeated exponent wins; 0x10: escape.
template <int THREADS>
__device__ __forceinline__ void enc_code_table(const EncParams& p, uint8_t* code_of) {
  for (uint32_t x = threadIdx.x; x < 256; x += THREADS) {
    uint32_t code = 0x10;
#pragma unroll
    for (int k = kCodebookLen - 1; k >= 0; k--)
      if (((p.codebook[k >> 2] >> (8 * (k & 3))) & 0xFF) == x) code = k;
    code_of[x] = (uint8_t)code;
  }
}

// ---- frame constants and header -------------------------------------------------------------------------------
// put_frame_constants writes what a coded frame holds besides its header and sections, all fixed by n: the
// codebook and the zero gap bytes that align the sections (under 16 each). Thread i of step writes its share.
__device__ __forceinline__ void put_frame_constants(const EncParams& p, uint8_t* frame, uint64_t n, uint32_t i, uint32_t step) {
  const Layout L = bf16_layout(n);
  if (i == 0) *reinterpret_cast<uint4*>(frame + kHeaderSize) = make_uint4(p.codebook[0], p.codebook[1], p.codebook[2], p.codebook[3]);
  for (uint32_t k = i; k < 48; k += step) {
    const uint64_t from = k < 16 ? L.table + 4ull * L.chunks : k < 32 ? L.codes + (n + 1) / 2 : L.residuals + n;
    const uint64_t to = k < 16 ? L.codes : k < 32 ? L.residuals : L.escapes;
    if (from + k % 16 < to) frame[from + k % 16] = 0;
  }
}

// frame_is_raw: a frame whose escapes would not fit falls back to raw (as the CPU encoder decides).
__device__ __forceinline__ bool frame_is_raw(uint64_t n, uint64_t E) {
  return bf16_layout(n).escapes + kEscapeSize * E > kHeaderSize + 2 * n;
}

// finish_header writes frame f's header for its escape total E and its length: a raw header when the escapes
// would not fit, which tells the raw fallback kernel to copy its payload. One thread, with CRC tables tab; or,
// with WARP, the whole calling warp (write_header_warp).
template <bool WARP = false>
__device__ __forceinline__ void finish_header(const EncParams& p, uint8_t* frame, uint32_t f, uint64_t n, uint64_t E,
                                              const CrcTables* tab = nullptr) {
  const uint64_t end = bf16_layout(n).escapes + kEscapeSize * E;
  const bool raw = frame_is_raw(n, E);
  if constexpr (WARP) {
    write_header_warp(frame, n, E, raw, raw ? 2 * n : end - kHeaderSize);
    if ((threadIdx.x & 31) != 0) return;
  } else {
    write_header(frame, n, E, raw, raw ? 2 * n : end - kHeaderSize, tab);
  }
  reinterpret_cast<uint64_t*>(p.sizes)[f] = raw ? kHeaderSize + 2 * n : end;
}

}  // namespace sz
