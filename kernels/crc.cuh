// CRC-32C (Castagnoli, as hash/crc32 and the transports compute it) of a buffer in device memory, so that a
// frame that stays on the GPU end to end is checksummed where it lies: the producer's GPU fills a chunk's row,
// the consumer's verifies what it received.
//
// A CRC without its pre- and post-conditioning ("raw", register starting at 0) is linear: the raw CRC of A || B
// is raw(A) · x^(8|B|) ⊕ raw(B), modulo the polynomial, and the conditioned CRC of X is
// raw(X) ⊕ ¬(0xFFFFFFFF · x^(8|X|)). So every thread takes a 512-byte piece, computes its raw CRC (slicing by
// 8, tables in shared memory), and XORs it, shifted by the bytes that follow the piece, into the result; the
// launcher presets the result to the conditioning term, and the order in which pieces arrive does not matter.
// Pieces are counted from the end of the buffer's whole 16-byte units, so that all but the first are whole and
// the shifts inside a warp are constants; the warp folds its lanes' CRCs in a tree, then shifts the sum once by
// the bytes after its last piece (a product of the factors of that count's bits, one bit a lane). The bytes
// after the last whole unit are block 0's.
#pragma once
#include <stdint.h>

namespace sz {

constexpr uint32_t kCRCPoly = 0x82F63B78u;  // CRC-32C's polynomial, reflected: bit 31 is x^0
constexpr uint32_t kCRCPieceLog2 = 9;       // bytes a thread checksums
constexpr uint32_t kCRCPiece = 1u << kCRCPieceLog2;
constexpr uint32_t kCRCThreads = 256;
constexpr uint32_t kCRCOne = 0x80000000u;  // the polynomial 1

// kCRCX8[k] is x^(8·2^k) modulo the polynomial: a CRC shifted by 2^k zero bytes is multiplied by it
// (crcX8 in kernels/crc.go computes the same table; TestCRCTable compares them).
__constant__ uint32_t kCRCX8[64] = {
    0x00800000u, 0x00008000u, 0x82F63B78u, 0x6EA2D55Cu, 0x18B8EA18u, 0x510AC59Au, 0xB82BE955u, 0xB8FDB1E7u,
    0x88E56F72u, 0x74C360A4u, 0xE4172B16u, 0x0D65762Au, 0x35D73A62u, 0x28461564u, 0xBF455269u, 0xE2EA32DCu,
    0xFE7740E6u, 0xF946610Bu, 0x3C204F8Fu, 0x538586E3u, 0x59726915u, 0x734D5309u, 0xBC1AC763u, 0x7D0722CCu,
    0xD289CABEu, 0xE94CA9BCu, 0x05B74F3Fu, 0xA51E1F42u, 0x40000000u, 0x20000000u, 0x08000000u, 0x00800000u,
    0x00008000u, 0x82F63B78u, 0x6EA2D55Cu, 0x18B8EA18u, 0x510AC59Au, 0xB82BE955u, 0xB8FDB1E7u, 0x88E56F72u,
    0x74C360A4u, 0xE4172B16u, 0x0D65762Au, 0x35D73A62u, 0x28461564u, 0xBF455269u, 0xE2EA32DCu, 0xFE7740E6u,
    0xF946610Bu, 0x3C204F8Fu, 0x538586E3u, 0x59726915u, 0x734D5309u, 0xBC1AC763u, 0x7D0722CCu, 0xD289CABEu,
    0xE94CA9BCu, 0x05B74F3Fu, 0xA51E1F42u, 0x40000000u, 0x20000000u, 0x08000000u, 0x00800000u, 0x00008000u,
};

struct CRCParams {
  uint64_t src;  // the buffer, 16-byte aligned
  uint64_t n;    // its length in bytes
  uint64_t out;  // the uint32_t result, preset by the launcher to ¬(0xFFFFFFFF · x^(8n))
};

// crc_mulmod returns a · b modulo the polynomial (reflected operands and result).
__device__ __forceinline__ uint32_t crc_mulmod(uint32_t a, uint32_t b) {
  uint32_t p = 0;
#pragma unroll
  for (int i = 0; i < 32; i++) {
    p ^= b & (0u - (a >> 31));
    a <<= 1;
    b = (b >> 1) ^ (kCRCPoly & (0u - (b & 1u)));
  }
  return p;
}

// crc_shift_warp returns v · x^(8d), the raw CRC v followed by d zero bytes, computed by the whole warp (every
// lane returns it): lane k holds the factors of bits k and k + 32 of d, multiplied together in a butterfly.
__device__ __forceinline__ uint32_t crc_shift_warp(uint32_t v, uint64_t d, uint32_t lane) {
  uint32_t f = ((d >> lane) & 1) ? kCRCX8[lane] : kCRCOne;
  if ((d >> (lane + 32)) & 1) f = crc_mulmod(f, kCRCX8[lane + 32]);
  for (int o = 16; o > 0; o >>= 1) f = crc_mulmod(f, __shfl_xor_sync(0xFFFFFFFFu, f, o));
  return crc_mulmod(v, f);
}

// crc_step8 advances a raw CRC over 8 bytes, lo then hi (little-endian words): slicing by 8, where tab[k][i]
// is the CRC of byte i followed by k zero bytes.
__device__ __forceinline__ uint32_t crc_step8(const uint32_t (*tab)[256], uint32_t crc, uint32_t lo, uint32_t hi) {
  crc ^= lo;
  return tab[7][crc & 0xFF] ^ tab[6][(crc >> 8) & 0xFF] ^ tab[5][(crc >> 16) & 0xFF] ^ tab[4][crc >> 24] ^
         tab[3][hi & 0xFF] ^ tab[2][(hi >> 8) & 0xFF] ^ tab[1][(hi >> 16) & 0xFF] ^ tab[0][hi >> 24];
}

// crc32c: blocks of kCRCThreads threads, one piece a thread, ceil(pieces / kCRCThreads) blocks (at least one).
// Piece j is bytes [n16 − 512(j + 1), n16 − 512j) of the whole units (n16 = n rounded down to 16), the last
// one possibly shorter.
__device__ void crc32c(const CRCParams& p) {
  __shared__ uint32_t tab[8][256];
  const uint32_t t = threadIdx.x, lane = t & 31;
  for (uint32_t i = t; i < 256; i += blockDim.x) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (kCRCPoly & (0u - (c & 1u)));
    tab[0][i] = c;
  }
  __syncthreads();
  for (uint32_t i = t; i < 256; i += blockDim.x) {
    uint32_t c = tab[0][i];
    for (int k = 1; k < 8; k++) {
      c = (c >> 8) ^ tab[0][c & 0xFF];
      tab[k][i] = c;
    }
  }
  __syncthreads();
  uint32_t* out = reinterpret_cast<uint32_t*>(p.out);
  const uint64_t n16 = p.n & ~uint64_t(15), tail = p.n - n16;
  if (blockIdx.x == 0 && t == 0 && tail > 0) {  // the last bytes: nothing follows them
    uint32_t c = 0;
    for (uint64_t a = n16; a < p.n; a++) c = tab[0][(c ^ reinterpret_cast<const uint8_t*>(p.src)[a]) & 0xFF] ^ (c >> 8);
    atomicXor(out, c);
  }
  const uint64_t pieces = (n16 + kCRCPiece - 1) >> kCRCPieceLog2;
  const uint64_t j0 = (uint64_t)blockIdx.x * blockDim.x + (t & ~31u);  // the warp's first piece
  if (j0 >= pieces) return;                                              // the whole warp
  const uint64_t j = j0 + lane;
  uint32_t crc = 0;
  if (j < pieces) {
    const uint64_t end = n16 - (j << kCRCPieceLog2);
    const uint64_t start = end > kCRCPiece ? end - kCRCPiece : 0;
    for (uint64_t a = start; a < end; a += 16) {
      const uint4 v = *reinterpret_cast<const uint4*>(p.src + a);
      crc = crc_step8(tab, crc, v.x, v.y);
      crc = crc_step8(tab, crc, v.z, v.w);
    }
  }
  // Fold the warp's pieces: lane l's CRC is followed by l whole pieces up to lane 0's end.
  for (uint32_t s = 0; s < 5; s++) {
    // The next 2^s lanes' pieces come before this lane's group of 2^s: followed by it, they shift by its length.
    const uint32_t before = __shfl_down_sync(0xFFFFFFFFu, crc, 1u << s);
    crc ^= crc_mulmod(before, kCRCX8[kCRCPieceLog2 + s]);
  }
  crc = crc_shift_warp(__shfl_sync(0xFFFFFFFFu, crc, 0), (j0 << kCRCPieceLog2) + tail, lane);
  if (lane == 0 && crc != 0) atomicXor(out, crc);
}

}  // namespace sz
