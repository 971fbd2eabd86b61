// SplitZip's high-ratio mode on the GPU (format v2, codec/FORMAT.md): exponents in a canonical Huffman code of
// at most 8 bits, with an escape symbol for exponents the table leaves out; sign and mantissa stay raw (the
// residuals). The element type is a template parameter (HRType): bf16 (one residual byte per element), and
// fp8_e4m3 and fp8_e5m2 (1-byte elements, 4- and 3-bit residuals bit-packed). A chunk of 8,192 elements is 32
// interleaved lane streams: lane l codes elements l, l + 32, ... (its steps), and at each step the lanes that
// need a byte take the next ones in lane order, which is also the order the CPU codec writes them in.
//
// Encode: hr_prepare zeroes the workspace and builds the encode table from the code table once; then one block
// of 8 warps per two chunks, four warps a chunk, each warp owning 64 of its chunk's 256 steps (hr_encode): the
// warps read the chunks once, load the table and sum each lane's bits; from those sums every thread knows how
// many bytes its lane takes in its warp's steps, and walks the lane's steps backwards writing the byte each
// refill takes (a shift of the lane's next 32 bits) where the decoder will read it: into shared memory, from where
// the block copies the streams out once warp 0 has looked up their offset (a decoupled look-back over the
// blocks' stream lengths, walked after its own bytes are placed). The last block of a frame to finish writes the
// header, the code table and the gaps (or a raw header, when the coded frame would not be smaller than the input,
// and the raw kernel after it copies the payload).
//
// Decode, one warp per chunk (its steps depend on each other through the lanes' refills): the block builds a
// 256-entry lookup table from the frame's code table; each warp copies its stream and residuals into shared
// memory ahead of its steps with cp.async, decodes 16 steps at a time, and writes them out through shared memory
// so that global stores stay vectors (16 bytes for bf16, 8 for fp8: an fp8 paged cache's blocks are only 8-byte
// aligned).
#pragma once

#include "encode_tile.cuh"  // lookback_warp, residual, the format and device helpers

namespace sz {

constexpr uint32_t kVersion2 = 2;
constexpr uint32_t kFlagEntropy = 2;
constexpr uint32_t kFlagChecksum = 4;
// kHRChunkLog2 is the chunk size the encoder writes. The decoder also reads frames of kHRChunkLog2Max, the size
// encoders wrote before: one warp decodes a chunk, and 16,384-element chunks left a 256 MiB frame 1.3 waves of
// warps on a 132-SM card, the last 0.3 of them a slow tail.
constexpr uint32_t kHRChunkLog2 = 13;
constexpr uint32_t kHRChunkLog2Max = 14;
constexpr uint32_t kHRChunk = 1u << kHRChunkLog2;
constexpr uint32_t kHRMaxLen = 8;
constexpr uint32_t kHRSteps = kHRChunk / 32;  // a lane's elements in a chunk
constexpr uint32_t kHREncWarps = 8;            // encode: warps per block
// encode: chunks per block, side by side (kHREncWarps / kHREncChunks warps each): the block's fixed costs (the
// encode table, the look-back, its barriers) are then paid once per 16,384 elements, as they were when a chunk
// was that long (with a block a chunk of 8,192 the encoder ran 22 % slower on an H100).
constexpr uint32_t kHREncChunks = 2;
constexpr uint32_t kHREncChunkWarps = kHREncWarps / kHREncChunks;
// hr_encode writes the second chunk's offset as the first's plus warps 0-3's bytes.
static_assert(kHREncChunks == 2 && kHREncChunkWarps == 4, "hr_encode's chunk offsets assume two chunks of 4 warps");
constexpr uint32_t kHRGroup = 512;  // decode: elements staged per warp in shared memory
// encode: the bits counted for an exponent with no code (and no escape). A thread sums at most 8 values of a
// lane (one a unit of 8 elements, kHRSteps / kHREncChunkWarps / 8 units), each at most 16 bits (an escape: 8 bits of
// code, 8 raw), so a sum that reaches it holds one; the count then needs no compare per value.
constexpr uint32_t kHRNoCode = 255;
static_assert(kHRSteps / kHREncChunkWarps / 8 * (kHRMaxLen + 8) < kHRNoCode,
              "a sum of coded lengths stays below kHRNoCode");
// encode: the longest stream of a block's chunks placed in shared memory, while its offset is still being looked
// up (6 bits an element; the fixture's take 2.8).
constexpr uint32_t kHRStage = kHREncChunks * kHRChunk * 6 / 8;
constexpr uint32_t kDTypeFP8E5M2 = 4;
constexpr uint32_t kDTypeFP8E4M3 = 5;

// HRWidth gives the types of BYTES-byte elements: one element, and a unit of 8 as the kernels load it.
template <uint32_t BYTES>
struct HRWidth;
template <>
struct HRWidth<1> {
  using Elem = uint8_t;
  using Unit = uint2;
};
template <>
struct HRWidth<2> {
  using Elem = uint16_t;
  using Unit = uint4;
};

// HRType describes an element type the high-ratio kernels code (codec/FORMAT.md "Element types"): its dtype id,
// bytes, and exponent field (EB bits from bit SHIFT; SHIFT is also the mantissa's width). The residual is
// sign << SHIFT | mantissa, 8 × BYTES − EB bits. The symbols are the 2^EB exponents, then ESC.
template <uint32_t DTYPE, uint32_t BYTES, uint32_t EB, uint32_t SHIFT>
struct HRType {
  using Elem = typename HRWidth<BYTES>::Elem;
  using Unit = typename HRWidth<BYTES>::Unit;
  static constexpr uint32_t kDType = DTYPE, kBytes = BYTES, kExpBits = EB, kExpShift = SHIFT;
  static constexpr uint32_t kResBits = 8 * BYTES - EB;
  static constexpr uint32_t kExps = 1u << EB;
  static constexpr uint32_t kSymbols = kExps + 1, kEsc = kExps;
  static constexpr uint32_t kTableMax = 2 + (kSymbols + 1) / 2;  // lo, hi, a nibble per symbol
  static constexpr uint32_t kLenSlots = (kSymbols + 15) / 16 * 16;
  static_assert(BYTES == 2 ? (EB == 8 && SHIFT == 7) : (BYTES == 1 && EB + SHIFT == 7), "bf16 or an fp8");
};
using HRBF16 = HRType<kDTypeBF16, 2, 8, 7>;
using HRE5M2 = HRType<kDTypeFP8E5M2, 1, 5, 2>;
using HRE4M3 = HRType<kDTypeFP8E4M3, 1, 4, 3>;
static_assert(HRBF16::kTableMax == 131 && HRE5M2::kTableMax == 19 && HRE4M3::kTableMax == 11, "code table sizes");
static_assert(HRBF16::kResBits == 8 && HRE5M2::kResBits == 3 && HRE4M3::kResBits == 4, "residual widths");

// Address maps of 1-byte elements: DenseMap and PagedMap (format.cuh) with byte offsets.
struct DenseByteMap {
  static constexpr bool kDense = true;
  uint64_t base;
  __device__ __forceinline__ uint64_t addr(uint32_t, uint32_t e) const { return base + e; }
};
struct PagedByteMap {
  static constexpr bool kDense = false;
  const uint64_t* bases;
  const int32_t* ids;
  uint64_t stride_bytes;
  uint32_t block_elems, n_blocks, segs_per_frame;
  __device__ __forceinline__ uint64_t addr(uint32_t f, uint32_t e) const {
    const uint32_t s = e / block_elems, off = e - s * block_elems;
    const uint32_t g = f * segs_per_frame + s;
    const uint32_t kv = g / n_blocks, b = g - kv * n_blocks;
    return __ldg(bases + kv) + (uint64_t)(int64_t)__ldg(ids + b) * stride_bytes + off;
  }
};

// 8-byte streaming accesses (fp8: 8 elements, the unit of work).
__device__ __forceinline__ uint2 load8(uint64_t a) { return __ldcs(reinterpret_cast<const uint2*>(a)); }
__device__ __forceinline__ void store8(uint64_t a, uint2 v) { __stcs(reinterpret_cast<uint2*>(a), v); }

struct HREncParams {
  uint64_t src;           // dense: the input; paged: device array of u64 base pointers K0,V0,K1,V1,...
  uint64_t ids;           // paged: int32 block ids
  uint64_t dst;           // the first frame (16-byte aligned)
  uint64_t frame_stride;  // bytes from one frame to the next (multiple of 16)
  uint64_t sizes;         // u64 per frame: the frame's length
  uint64_t ws;            // workspace (hr_ws_*), zero on entry
  uint64_t stride_bytes;  // paged: bytes from one block id to the next
  uint64_t table;         // the code table's bytes as frames carry them (table_len of them)
  uint32_t n;             // elements per frame
  uint32_t frames;
  uint32_t chunks;  // chunks per frame
  uint32_t block_elems, n_blocks, segs_per_frame;
  uint32_t table_len;
  uint32_t raw_only;  // the host saw the sections alone would not fit in a raw frame's size: write raw frames
};
static_assert(sizeof(HREncParams) == 96, "HREncParams layout is shared with Go");

struct HRDecParams {
  uint64_t src, frame_stride, frame_cap, dst, ids, stride_bytes, status, out_bytes;
  uint32_t frames;
  uint32_t chunks;  // chunks per frame: ceil(elements / 8,192)
  uint32_t block_elems, n_blocks, segs_per_frame, pad;
};
static_assert(sizeof(HRDecParams) == 88, "HRDecParams layout is shared with Go");

// The encode workspace: per frame four words (escapes, blocks done, uncodable, raw), then per frame a look-back
// state word a chunk, of which the encoder's blocks use the first (a word a block: hr_encode), then on 16 bytes
// the encode table (HREncTable). hr_prepare zeroes the words and builds the table before each encode.
__device__ __forceinline__ uint32_t* hr_ws_frame(const HREncParams& p, uint32_t f) {
  return reinterpret_cast<uint32_t*>(p.ws) + 4ull * f;
}
__device__ __forceinline__ uint64_t* hr_ws_state(const HREncParams& p, uint32_t f) {
  return reinterpret_cast<uint64_t*>(p.ws + 16ull * p.frames) + (uint64_t)f * p.chunks;
}
// hr_ws_words is the number of 8-byte words before the encode table.
__device__ __forceinline__ uint64_t hr_ws_words(const HREncParams& p) {
  return 2ull * p.frames + (uint64_t)p.frames * p.chunks;
}

struct HRLayout {
  uint64_t chunk_table, residuals, streams;
  uint32_t chunks;
};
// hr_res_bytes is the length of the residual section of n elements: ceil(n × residual bits / 8).
template <class T>
__device__ __forceinline__ uint64_t hr_res_bytes(uint64_t n) {
  if constexpr (T::kResBits == 8) return n;
  else return (n * T::kResBits + 7) / 8;
}
template <class T>
__device__ __forceinline__ HRLayout hr_layout(uint64_t n, uint32_t table_len, uint32_t chunk_log2 = kHRChunkLog2) {
  HRLayout l;
  l.chunks = (uint32_t)((n + (1ull << chunk_log2) - 1) >> chunk_log2);
  l.chunk_table = align16(kHeaderSize + table_len);
  l.residuals = align16(l.chunk_table + 4ull * l.chunks);
  l.streams = align16(l.residuals + hr_res_bytes<T>(n));
  return l;
}

__device__ __forceinline__ uint32_t lanemask_lt() {
  uint32_t m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

// hr_stage_table copies the first min(n, kTableMax) bytes of a code table from global memory to shared memory s,
// with every load issued before the first store: read where it lies, the table would cost a round trip to
// memory per byte a lane reads, one after the other. One warp.
template <class T>
__device__ __forceinline__ void hr_stage_table(const uint8_t* g, uint32_t n, uint8_t* s) {
  constexpr uint32_t kRounds = (T::kTableMax + 31) / 32;
  const uint32_t lane = threadIdx.x & 31;
  n = min(n, T::kTableMax);
  uint32_t v[kRounds];
#pragma unroll
  for (uint32_t k = 0; k < kRounds; k++) v[k] = lane + 32 * k < n ? g[lane + 32 * k] : 0;
#pragma unroll
  for (uint32_t k = 0; k < kRounds; k++)
    if (lane + 32 * k < n) s[lane + 32 * k] = (uint8_t)v[k];
}

// hr_table_lengths reads the lengths of a code table (its bytes in shared memory, hr_stage_table) into
// len[0..kSymbols) (ESC last) and returns kOK or kCorrupt (malformed range, length or padding; for fp8 also a
// range past the exponents, or one that does not start and end at exponents with a code, as the CPU decoder
// checks). One warp.
template <class T>
__device__ uint32_t hr_table_lengths(const uint8_t* table, uint32_t table_len, uint8_t* len) {
  const int lane = threadIdx.x & 31;
  if (table_len < 3 || table_len > T::kTableMax) return kCorrupt;
  const uint32_t lo = table[0], hi = table[1];
  if (hi < lo || table_len != 2 + (hi - lo + 3) / 2) return kCorrupt;
  if constexpr (T::kExpBits < 8) {
    if (hi >= T::kExps) return kCorrupt;
  }
  const uint32_t nibbles = hi - lo + 2;
  bool bad = false, coded = false;
  for (uint32_t s = lane; s < T::kSymbols; s += 32) {
    uint32_t k = 0xFFFFFFFFu;  // nibble index
    if (s == T::kEsc) k = 0;
    else if (s >= lo && s <= hi) k = 1 + s - lo;
    uint32_t l = 0;
    if (k != 0xFFFFFFFFu) l = (table[2 + k / 2] >> (4 * (k & 1))) & 0xF;
    bad |= l > kHRMaxLen;
    if constexpr (T::kExpBits < 8) coded |= s != T::kEsc && l != 0;
    len[s] = (uint8_t)l;
  }
  if (lane == 0 && (nibbles & 1) && (table[table_len - 1] >> 4) != 0) bad = true;
  __syncwarp();
  if constexpr (T::kExpBits < 8) {
    if (__any_sync(0xFFFFFFFFu, coded) && (len[lo] == 0 || len[hi] == 0)) bad = true;
  }
  return __any_sync(0xFFFFFFFFu, bad) ? kCorrupt : kOK;
}

// The canonical codes are built 32 symbols (a warp's ballot) at a time.
template <class T>
constexpr uint32_t kHRSymbolGroups = (T::kSymbols + 31) / 32;

// HRCanon is what building a code table's canonical codes takes in shared memory: the table's bytes and lengths,
// and what hr_canonical makes of them.
template <class T>
struct HRCanon {
  uint8_t table[T::kTableMax];  // the code table's bytes (as many as the frame holds)
  uint8_t len[T::kLenSlots];
  // Per group of 32 symbols and code length: how many of the group's symbols have it, then how many of the
  // groups' before.
  uint32_t gcount[kHRSymbolGroups<T>][kHRMaxLen + 1];
  // Per code length: its first code, its count, and its first index in canonical order.
  uint32_t first[kHRMaxLen + 1], count[kHRMaxLen + 1], off[kHRMaxLen + 1];
  uint32_t kraft;   // the sum of 2^(8 − length) over the coded symbols: at most 256 for a prefix code
  uint32_t maxlen;  // the longest length; 0 when no symbol has a code
};

// HRSymbols are a thread's symbols in hr_canonical: 32 g + lane for groups g = warp and warp + WARPS; their
// lengths and their indices among the symbols of the same length in canonical order (DEFLATE's: by length,
// then symbol, ESC last), so that a symbol's code is first[len] + idx.
struct HRSymbols {
  uint32_t len[2], idx[2];
};

// hr_canonical assigns canonical codes to the lengths in c.len with the whole block (every thread calls it,
// after a barrier that follows the lengths' writes; it ends with one): each warp counts the lengths of its
// groups of 32 symbols with ballots, and so each symbol's rank among its group's of the same length; warp 0 adds
// the groups' counts up into each length's first code, count and first index, the Kraft sum and the longest
// length. One warp walking the symbols one length after another took a chain of about 150 ballots.
template <class T, uint32_t WARPS>
__device__ HRSymbols hr_canonical(HRCanon<T>& c) {
  constexpr uint32_t G = kHRSymbolGroups<T>;
  static_assert(G <= 2 * WARPS, "a warp counts two groups of symbols at most");
  const uint32_t lane = threadIdx.x & 31, warp = warp_uniform(threadIdx.x >> 5);
  HRSymbols y{{0, 0}, {0, 0}};
#pragma unroll
  for (uint32_t i = 0; i < 2; i++) {
    const uint32_t g = warp + WARPS * i, s = 32 * g + lane;
    if (g >= G) break;
    const uint32_t l = s < T::kSymbols ? c.len[s] : 0;
    uint32_t same = 0;
#pragma unroll
    for (uint32_t k = 1; k <= kHRMaxLen; k++) {
      const uint32_t m = __ballot_sync(0xFFFFFFFFu, l == k);
      if (lane == k) c.gcount[g][k] = __popc(m);
      if (l == k) same = m;
    }
    y.len[i] = l;
    y.idx[i] = __popc(same & lanemask_lt());
  }
  __syncthreads();
  if (warp == 0) {
    // Lane k (1 to 8): length k's count, each group's count turned into the count of the groups before it.
    uint32_t count = 0;
    if (lane >= 1 && lane <= kHRMaxLen) {
#pragma unroll
      for (uint32_t g = 0; g < G; g++) {
        const uint32_t n = c.gcount[g][lane];
        c.gcount[g][lane] = count;
        count += n;
      }
    }
    uint32_t first = 0, off = 0, kraft = 0, maxlen = 0;
#pragma unroll
    for (uint32_t j = 1; j <= kHRMaxLen; j++) {
      const uint32_t n = __shfl_sync(0xFFFFFFFFu, count, j);
      if (j < lane) {
        first += n << (lane - j);  // first(k) = (first(k − 1) + count(k − 1)) × 2
        off += n;
      }
      kraft += n << (kHRMaxLen - j);
      if (n) maxlen = j;
    }
    if (lane <= kHRMaxLen) {
      c.first[lane] = first;
      c.count[lane] = lane ? count : 0;
      c.off[lane] = off;
    }
    if (lane == 0) {
      c.kraft = kraft;
      c.maxlen = maxlen;
    }
  }
  __syncthreads();
#pragma unroll
  for (uint32_t i = 0; i < 2; i++) {
    const uint32_t g = warp + WARPS * i;
    if (g < G && y.len[i]) y.idx[i] += c.gcount[g][y.len[i]];
  }
  return y;
}

// ---- encode ------------------------------------------------------------------------------------------------
// An encode table entry per exponent: bits 0-4 the bits it takes (code, or ESC's code + EB raw bits; 0: no way
// to code it), bit 5 set for an escape, and the bit pattern in the top bits (its first bit in bit 31): at most
// 16 bits, clear of the low ones.
constexpr uint32_t kHREscBit = 32u;  // bit 5
__device__ __forceinline__ uint32_t hr_bits(uint32_t ent) { return ent & 31; }
__device__ __forceinline__ uint32_t hr_is_esc(uint32_t ent) { return (ent >> 5) & 1; }
__device__ __forceinline__ uint32_t hr_pattern(uint32_t ent) { return ent & ~63u; }
__device__ __forceinline__ uint32_t hr_entry(uint32_t pattern, uint32_t bits, bool esc) {
  return pattern << (32 - bits) | (esc ? kHREscBit : 0u) | bits;
}

// hr_taken is how many bytes of its lane a decoder holds after the step of the element whose entry is prev,
// with C the lane's bits before the next step (codec/FORMAT.md): round 1 leaves it ceil(C' / 8) + 1, C' the
// bits before prev, and an escape's round 2 at least ceil(C / 8).
__device__ __forceinline__ uint32_t hr_taken(uint32_t prev, uint32_t C) {
  const uint32_t t = (C - hr_bits(prev) + 7) / 8 + 1;
  return hr_is_esc(prev) ? max(t, (C + 7) / 8) : t;
}

// HREncTable is the encode table in the workspace, as hr_prepare builds it from the code table's bytes for
// every block of the encode: an entry per exponent (the first kExps of enc), its bits, and the longest code (0xFF
// for a table that codes nothing: every frame then goes raw).
struct HREncTable {
  uint32_t enc[256];
  uint8_t bits[256];  // hr_bits of enc, or kHRNoCode: what counting reads (a byte index, no mask)
  uint32_t maxlen, pad[3];
};
static_assert(sizeof(HREncTable) == 1296, "hrEncTableSize in entropy.go");  // loaded in 16-byte vectors
__device__ __forceinline__ HREncTable* hr_ws_table(const HREncParams& p) {
  return reinterpret_cast<HREncTable*>(p.ws + align16(8 * hr_ws_words(p)));
}

template <class T>
struct HREncShared {
  __align__(16) uint8_t xs[kHREncChunks * kHRChunk];  // the block's chunks' exponents
  __align__(16) uint32_t enc[T::kExps];
  __align__(16) uint8_t bits[T::kExps];  // hr_bits of enc, or kHRNoCode: what counting reads
  __align__(16) uint32_t maxlen, maxlen_pad[3];  // HREncTable's last 16 bytes
  uint32_t seg[kHREncWarps][32];    // per warp and lane: the bits of the lane's elements in the warp's steps
  uint32_t wbytes[kHREncWarps], wesc[kHREncWarps], wbad[kHREncWarps];
  uint32_t start, write;
  // The block's streams, its chunks' one after the other, when they fit (and a word more, which hr_copy_out may
  // read).
  __align__(16) uint8_t stage[kHRStage + 4];
};

// hr_seal_header stores header words w[0..14] at frame with their CRC-32C as word 15. A whole warp calls it
// (crc32c_words_warp); lane 0 stores.
__device__ __forceinline__ void hr_seal_header(uint8_t* frame, uint32_t (&w)[16]) {
  w[15] = crc32c_words_warp(w, 15);
  if ((threadIdx.x & 31) == 0) store_header(frame, w);
}

// hr_write_header stores a v2 high-ratio header with its checksum; a whole warp calls it.
template <class T>
__device__ void hr_write_header(uint8_t* frame, uint64_t n, uint64_t escapes, uint32_t maxlen, uint32_t table_len,
                                uint64_t payload, uint64_t codes_len) {
  const uint64_t res_len = hr_res_bytes<T>(n);
  uint32_t w[16];
  w[0] = kMagic;
  w[1] = kVersion2 | (T::kDType << 8) | (kFlagEntropy << 16) | (maxlen << 24);
  w[2] = (uint32_t)n;
  w[3] = (uint32_t)(n >> 32);
  w[4] = (uint32_t)escapes;
  w[5] = (uint32_t)(escapes >> 32);
  w[6] = kHRChunkLog2 | (T::kResBits << 8) | (table_len << 16);
  w[7] = 0;
  w[8] = (uint32_t)payload;
  w[9] = (uint32_t)(payload >> 32);
  w[10] = (uint32_t)codes_len;
  w[11] = (uint32_t)(codes_len >> 32);
  w[12] = (uint32_t)res_len;
  w[13] = (uint32_t)(res_len >> 32);
  w[14] = 0;
  hr_seal_header(frame, w);
}

// hr_write_raw_header stores the header of a raw frame of n elements of T (version 1, as the CPU encoder writes
// it, and as write_header does for bf16); a whole warp calls it.
template <class T>
__device__ void hr_write_raw_header(uint8_t* frame, uint64_t n) {
  const uint64_t size = (uint64_t)T::kBytes * n;
  uint32_t w[16];
  w[0] = kMagic;
  w[1] = kVersion | (T::kDType << 8) | (kFlagRaw << 16);
  w[2] = (uint32_t)n;
  w[3] = (uint32_t)(n >> 32);
#pragma unroll
  for (int i = 4; i < 8; i++) w[i] = 0;  // escapes, chunk log2 / residual bits / table length, reserved
  w[8] = (uint32_t)size;
  w[9] = (uint32_t)(size >> 32);
  w[10] = 0;
  w[11] = 0;
  w[12] = (uint32_t)size;
  w[13] = (uint32_t)(size >> 32);
  w[14] = 0;
  hr_seal_header(frame, w);
}

template <class T>
__device__ __forceinline__ typename T::Unit hr_load_unit(uint64_t a) {
  if constexpr (T::kBytes == 2) return load16(a);
  else return load8(a);
}

// hr_load_tail loads the first valid (< 8) elements of a unit, zeros after them.
template <class T, class Map>
__device__ __forceinline__ typename T::Unit hr_load_tail(const Map& map, uint32_t f, uint32_t e, uint32_t valid) {
  uint32_t h[8];
#pragma unroll
  for (uint32_t k = 0; k < 8; k++) {
    h[k] = 0;
    if (k < valid) {
      if constexpr (T::kBytes == 2) h[k] = *reinterpret_cast<const uint16_t*>(map.addr(f, e + k));
      else h[k] = *reinterpret_cast<const uint8_t*>(map.addr(f, e + k));
    }
  }
  if constexpr (T::kBytes == 2) {
    return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
  } else {
    return make_uint2(h[0] | h[1] << 8 | h[2] << 16 | h[3] << 24, h[4] | h[5] << 8 | h[6] << 16 | h[7] << 24);
  }
}

// hr_split_unit splits a unit into its exponents (byte k of x0:x1 is element k's) and its residuals, which it
// writes at rd: valid elements' worth (8, or fewer for the frame's last unit, whose residual bytes end the
// section).
template <class T>
__device__ __forceinline__ void hr_split_unit(const typename T::Unit v, uint32_t& x0, uint32_t& x1, uint8_t* rd,
                                              uint32_t valid) {
  if constexpr (T::kBytes == 2) {
    // The elements' low bytes (exponent LSB, mantissa) and high bytes (sign, exponent's upper 7 bits), 4 a word
    // in element order, by two byte permutes; then 4 residuals (sign, mantissa) are a bit select, and 4
    // exponents a shift, a multiply (FMA pipe) and a bit select: 6 instructions per 4 elements rather than 12.
    const uint32_t lo0 = __byte_perm(v.x, v.y, 0x6420), hi0 = __byte_perm(v.x, v.y, 0x7531);
    const uint32_t lo1 = __byte_perm(v.z, v.w, 0x6420), hi1 = __byte_perm(v.z, v.w, 0x7531);
    const uint32_t r0 = bit_select(0x80808080u, hi0, lo0), r1 = bit_select(0x80808080u, hi1, lo1);
    x0 = bit_select(0x01010101u, lo0 >> 7, hi0 * 2);
    x1 = bit_select(0x01010101u, lo1 >> 7, hi1 * 2);
    if (valid == 8) {
      *reinterpret_cast<uint2*>(rd) = make_uint2(r0, r1);
    } else {
#pragma unroll
      for (uint32_t k = 0; k < 8; k++)
        if (k < valid) rd[k] = (uint8_t)((k < 4 ? r0 : r1) >> (8 * (k & 3)));
    }
  } else {
    // fp8: the exponent field of each byte (the bits shifted in from the next byte fall outside the mask); the
    // 8 residuals pack into kResBits bytes (4 for e4m3, 3 for e5m2), LSB-first.
    constexpr uint32_t kMask = (T::kExps - 1) * 0x01010101u;
    x0 = (v.x >> T::kExpShift) & kMask;
    x1 = (v.y >> T::kExpShift) & kMask;
    uint32_t r = 0;
    if constexpr (T::kResBits == 4) {
      // e4m3: each byte's residual nibble (sign to bit 3, mantissa) in place, then nibbles 0, 2, 4, 6 and 1, 3,
      // 5, 7 gathered by byte permutes and joined by one multiply-add: 9 instructions where a loop over the
      // elements takes about 36.
      const uint32_t tx = bit_select(0x08080808u, v.x >> 4, v.x & 0x07070707u);
      const uint32_t ty = bit_select(0x08080808u, v.y >> 4, v.y & 0x07070707u);
      r = __byte_perm(tx, ty, 0x7531) * 16 + __byte_perm(tx, ty, 0x6420);
    } else {
      // e5m2: each byte's 3-bit residual (sign to bit 2, mantissa) in place, then pairs merged into 6 bits a
      // half word and halves into 12 bits a word: about 15 instructions where a loop over the elements takes
      // about 32.
      auto pack = [](uint32_t t) {
        t = (t | t >> 5) & 0x003F003Fu;
        return (t | t >> 10) & 0xFFFu;
      };
      r = pack(bit_select(0x04040404u, v.x >> 5, v.x & 0x03030303u)) |
          pack(bit_select(0x04040404u, v.y >> 5, v.y & 0x03030303u)) << 12;
    }
    if (valid == 8 && T::kResBits == 4) {
      *reinterpret_cast<uint32_t*>(rd) = r;  // 4-byte aligned: the unit's first element is a multiple of 8
    } else {
#pragma unroll
      for (uint32_t k = 0; k < T::kResBits; k++)
        if (8 * k < valid * T::kResBits) rd[k] = (uint8_t)(r >> (8 * k));  // up to the section's end
    }
  }
}

// hr_count adds the bits of a unit's first valid exponents (bytes of x0:x1) to part[k] (kHRNoCode for an
// exponent with no way to be coded).
template <class T>
__device__ __forceinline__ void hr_count(const HREncShared<T>& sh, uint32_t x0, uint32_t x1, uint32_t valid,
                                         uint32_t (&part)[8]) {
#pragma unroll
  for (uint32_t k = 0; k < 8; k++)
    if (k < valid) part[k] += sh.bits[__byte_perm(k < 4 ? x0 : x1, 0, 0x4440 | (k & 3))];  // byte k & 3: one PRMT
}

// A lane's element at a step of the chunk whose exponents are xs, as the encode table's entry (0 past the lane's
// last element).
template <class T>
__device__ __forceinline__ uint32_t hr_ent(const HREncShared<T>& sh, const uint8_t* xs, uint32_t s, uint32_t lane,
                                           uint32_t cnt) {
  return s < cnt ? sh.enc[xs[32 * s + lane]] : 0u;
}

// hr_place writes one warp's bytes of a chunk's stream (its exponents at xs): those its lanes take at steps
// [s0, s0 + kSeg), which end before out[end] (out: the block's streams; end: the warp's first byte in them plus its
// count, so that a byte's index needs no base added). Each thread walks its lane's steps backwards, keeping in W the
// lane's next 32 bits from the step's first bit (Cs), so that a step's bytes are shifts of W. With
// c(C) = ceil(C / 8), a lane holds c(Cs) or c(Cs) + 1 bytes before step s (codec/FORMAT.md), so its refills follow
// from its bit counts alone: round 1 takes byte c(Cs) when c(Cs) exceeds c(Cs') (Cs' the bits before step s − 1), and
// round 2 byte c(Cs) + 1 when the lane escapes and c(Cs) + 1 < (Cs + the element's bits) / 8. The ballots of a step's
// refills place them in the order the decoder takes them: round 1's lanes, then round 2's; a step's bytes are
// consecutive. taken: the lane's bytes before step s0. Returns the warp's escapes. FULL: every lane has an element at
// each step.
template <class T, bool FULL>
__device__ __forceinline__ uint32_t hr_place(const HREncShared<T>& sh, const uint8_t* xs, uint8_t* out, uint32_t s0,
                                             uint32_t cnt, uint32_t C_end, uint32_t taken, uint32_t end) {
  constexpr int kSeg = kHRSteps / kHREncChunkWarps;
  const uint32_t lane = threadIdx.x & 31, below = lanemask_lt();
  const uint8_t* xl = xs + lane;  // the lane's element at step s: xl[32 s]
  // The lane's bits after the warp's last step: the first 24 are all that the last step's bytes can reach.
  uint32_t W = 0;
  for (uint32_t s = s0 + kSeg, at = 0; at < 24 && s < cnt; s++) {
    const uint32_t e = sh.enc[xl[32 * s]];
    W |= hr_pattern(e) >> at;
    at += hr_bits(e);
  }
  // C7: the lane's bits before step s + 1, then s, plus 7 (a byte count is then a subtraction and div8, both
  // on the FMA pipe); pos: where the bytes placed so far start.
  uint32_t C7 = C_end + 7, pos = end, escapes = 0;
  uint32_t ent = FULL || s0 + kSeg - 1 < cnt ? sh.enc[xl[32 * (s0 + kSeg - 1)]] : 0u;
  uint32_t cs = div8(C7 - hr_bits(ent));
  // 8 steps unrolled: with 16 the encoder's code outgrew the instruction cache (5–6 % slower on an H100), and
  // the last chunk of a frame (!FULL) is not worth the code of an unrolled loop.
#pragma unroll(FULL ? 8 : 1)
  for (int i = kSeg - 1; i >= 0; i--) {
    const uint32_t s = s0 + i, bits = hr_bits(ent);
    C7 -= bits;
    W = hr_pattern(ent) | __funnelshift_r(W, 0, ent);  // W >> bits: the funnel shift reads the entry's low 5 bits
    // c(Cs') from the element before (the next iteration's c(Cs)); at s0, taken − 1 says the same.
    uint32_t eprev = 0, cp = taken - 1;
    if (i > 0) {
      eprev = FULL || s - 1 < cnt ? sh.enc[xl[32 * (s - 1)]] : 0u;
      cp = div8(C7 - hr_bits(eprev));
    }
    const bool d1 = (FULL || s < cnt) && (int32_t)(cs - cp) > 0;
    const uint32_t m1 = __ballot_sync(0xFFFFFFFFu, d1);
    uint32_t at = pos - __popc(m1);
    if (any_and(ent, kHREscBit)) {  // hr_is_esc: warp-uniform; about one step in 30 under a learned table
      escapes += __popc(ballot_and(ent, kHREscBit));
      const bool d2 = hr_is_esc(ent) && 8 * cs + 15 < C7 + bits;
      const uint32_t m2 = __ballot_sync(0xFFFFFFFFu, d2);
      at -= __popc(m2);
      if (d2) out[at + __popc(m1) + __popc(m2 & below)] = (uint8_t)(W >> (9 + C7 - 8 * cs));
    }
    if (d1) out[at + __popc(m1 & below)] = (uint8_t)(W >> (17 + C7 - 8 * cs));
    pos = at;
    ent = eprev;
    cs = cp;
  }
  return escapes;
}

// hr_copy_out copies bytes bytes of a chunk's stream from stage (4-byte aligned, readable a word past bytes) to
// dst, with the whole block: word stores where the destination has whole words, byte stores at its ends (the
// chunks before and after own the rest of those words).
__device__ __forceinline__ void hr_copy_out(uint8_t* dst, const uint8_t* stage, uint32_t bytes) {
  const uint32_t m = (uint32_t)reinterpret_cast<uintptr_t>(dst) & 3;
  uint32_t* D = reinterpret_cast<uint32_t*>(dst - m);  // word q holds stage bytes [4q − m, 4q − m + 4)
  const uint32_t* sw = reinterpret_cast<const uint32_t*>(stage);
  const uint32_t words = (m + bytes + 3) / 4;
  for (uint32_t q = threadIdx.x; q < words; q += blockDim.x) {
    const int32_t i0 = (int32_t)(4 * q) - (int32_t)m;
    if (i0 < 0 || i0 + 4 > (int32_t)bytes) {
      for (int32_t i = max(i0, 0); i < min(i0 + 4, (int32_t)bytes); i++) dst[i] = stage[i];
      continue;
    }
    const uint32_t k = (uint32_t)i0 >> 2, sh8 = 8 * ((uint32_t)i0 & 3);
    D[q] = sh8 ? (sw[k] >> sh8) | (sw[k + 1] << (32 - sh8)) : sw[k];
  }
}

// hr_prepare readies the workspace for an encode: it zeroes the frames' words and the look-back states, and its
// first block builds the encode table from the code table's bytes, which every block of the encoder then loads
// rather than build it again (bf16's was a chain of dependent ballots as long as reading a block's chunks). A
// thread a word, grid-stride. Built for sm_90 it lets the encoder launch at once (launch_dependents): the
// encoder reads its chunks before it waits for the table.
template <class T>
__device__ __forceinline__ void hr_prepare(const HREncParams& p) {
  constexpr uint32_t WARPS = kHREncWarps;  // launched with the encoder's blocks of 256 threads
  __shared__ HRCanon<T> c;
  __shared__ uint32_t esc, st;
  launch_dependents();
  uint64_t* ws = reinterpret_cast<uint64_t*>(p.ws);
  const uint64_t words = hr_ws_words(p);
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (uint64_t)gridDim.x * blockDim.x)
    ws[i] = 0;
  if (blockIdx.x != 0) return;
  const uint32_t lane = threadIdx.x & 31, warp = warp_uniform(threadIdx.x >> 5);
  if (warp == 0) {
    hr_stage_table<T>(reinterpret_cast<const uint8_t*>(p.table), p.table_len, c.table);
    __syncwarp();
    const uint32_t s = hr_table_lengths<T>(c.table, p.table_len, c.len);
    if (lane == 0) st = s;
  }
  __syncthreads();
  // The host validated the table; a bad one codes nothing (every frame goes raw).
  const bool lengths_ok = st == kOK;  // the same for every thread
  HRSymbols y{{0, 0}, {0, 0}};
  if (lengths_ok) y = hr_canonical<T, WARPS>(c);
  const uint32_t maxlen = !lengths_ok || c.kraft > (1u << kHRMaxLen) ? 0xFF : c.maxlen;
  const bool ok = maxlen >= 1 && maxlen <= kHRMaxLen;
#pragma unroll
  for (uint32_t i = 0; i < 2; i++)
    if (32 * (warp + WARPS * i) + lane == T::kEsc) esc = c.first[y.len[i]] + y.idx[i];
  __syncthreads();
  HREncTable* tab = hr_ws_table(p);
  const uint32_t esc_len = c.len[T::kEsc];
  if (threadIdx.x < T::kExps) {  // symbol threadIdx.x: the first of the thread's (T::kExps ≤ 32 × WARPS)
    const uint32_t e = threadIdx.x, l = y.len[0];
    uint32_t ent = 0;
    if (ok && l) ent = hr_entry(c.first[l] + y.idx[0], l, false);
    else if (ok && esc_len) ent = hr_entry(esc << T::kExpBits | e, esc_len + T::kExpBits, true);
    tab->enc[e] = ent;
    tab->bits[e] = ent ? (uint8_t)hr_bits(ent) : (uint8_t)kHRNoCode;
  }
  if (threadIdx.x == 0) tab->maxlen = maxlen;
}

// hr_encode codes chunks 2b and 2b + 1 (b = blockIdx.x, frame-major) with a block of kHREncWarps warps: warps
// 0-3 the first, 4-7 the second, warp w owning steps [64(w mod 4), 64(w mod 4) + 64) of every lane of its chunk.
// The two streams are one unit of the look-back (the first chunk's bytes, then the second's).
//   1. The block loads the encode table hr_prepare built while its warps read the chunks once: residuals
//      straight to the frame, exponents to shared memory. Then each warp sums, per lane, the bits its steps'
//      elements take.
//   2. From those sums each thread knows its lane's bits before its first step and after its last, and so how
//      many bytes the lane's decoder takes in the warp's steps (hr_taken): the warps' sums give each warp's first
//      byte in the block's streams and their length, and a decoupled look-back over the blocks' lengths their
//      offset.
//   3. Each thread walks its lane's steps backwards and writes the bytes its refills take, where the decoder
//      will read them (hr_place).
// The last block of a frame to finish writes the header, the code table and the gaps (or a raw header, when the
// coded frame would not be smaller than the input, and the raw kernel after it copies the payload).
template <class T, class Map>
__device__ __forceinline__ void hr_encode(const HREncParams& p, const Map& map) {
  constexpr uint32_t W = kHREncWarps, WC = kHREncChunkWarps, kSeg = kHRSteps / WC;
  __shared__ HREncShared<T> sh;
  launch_dependents();  // hr_raw may launch once every block runs, and waits for the encoder's end
  const uint32_t lane = threadIdx.x & 31, warp = warp_uniform(threadIdx.x >> 5);
  const uint32_t t = blockIdx.x, bpf = (p.chunks + kHREncChunks - 1) / kHREncChunks;  // blocks per frame
  if (t >= p.frames * bpf) return;
  const uint32_t f = t / bpf, b = t - f * bpf;
  const uint64_t n = p.n;
  // The block's elements [e0, e0 + len); this warp's chunk (the block's h-th; empty past the frame's last) its
  // elements [e0 + 8,192 h, + clen).
  const uint32_t e0 = (b * kHREncChunks) << kHRChunkLog2;
  const uint32_t len = (uint32_t)min((uint64_t)kHREncChunks * kHRChunk, n - e0);
  const uint32_t h = warp / WC, wc = warp % WC;
  const uint32_t clen = len > h * kHRChunk ? min(len - h * kHRChunk, kHRChunk) : 0;
  uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
  const HRLayout L = hr_layout<T>(n, p.table_len);
  uint8_t* xs = sh.xs;
  const uint8_t* cxs = sh.xs + h * kHRChunk;  // the chunk's exponents

  // 1. All 8 warps read the chunks once: residuals straight to the frame, exponents to shared memory.
  // rd0: unit u0's residuals. Over a dense map a pointer carried by the loop stays in registers, where one
  // derived from the chunk's index and n was recomputed for every unit (about 10 instructions of 64-bit layout
  // arithmetic); a paged map's block lookups leave no room for it (that encoder spilled 136 bytes).
  constexpr uint32_t kReaders = 32 * W;
  const uint32_t units = p.raw_only ? 0 : (len + 7) / 8;
  uint8_t* const res0 = frame + L.residuals + hr_res_bytes<T>(e0);  // the chunk's residuals (e0: a multiple of 8)
  uint8_t* rd0 = res0 + hr_res_bytes<T>(8 * threadIdx.x);
  for (uint32_t u0 = threadIdx.x; u0 < units; u0 += 4 * kReaders, rd0 += hr_res_bytes<T>(8 * 4 * kReaders)) {
    typename T::Unit v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const uint32_t ue = 8 * (u0 + i * kReaders);
      if (ue < len)
        v[i] = ue + 8 <= len ? hr_load_unit<T>(map.addr(f, e0 + ue)) : hr_load_tail<T>(map, f, e0 + ue, len - ue);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const uint32_t ue = 8 * (u0 + i * kReaders);
      if (ue >= len) continue;
      uint32_t x0, x1;
      uint8_t* rd = Map::kDense ? rd0 + hr_res_bytes<T>(8 * i * kReaders) : res0 + hr_res_bytes<T>(ue);
      hr_split_unit<T>(v[i], x0, x1, rd, min(8u, len - ue));
      *reinterpret_cast<uint2*>(xs + ue) = make_uint2(x0, x1);
    }
  }
  // Then the encode table, which hr_prepare built, with cp.async (issued before the reads, it made the bf16
  // encoders spill). Built for sm_90 the encoder may run beside hr_prepare: it waits for it here.
  wait_prerequisites();
  {
    const HREncTable* tab = hr_ws_table(p);
    const uint32_t t = threadIdx.x;
    if (t < T::kExps / 4) cp_async16(reinterpret_cast<uint8_t*>(sh.enc) + 16 * t, reinterpret_cast<uint64_t>(tab->enc) + 16 * t);
    if (t < T::kExps / 16) cp_async16(sh.bits + 16 * t, reinterpret_cast<uint64_t>(tab->bits) + 16 * t);
    if (t == 32 * W - 1) cp_async16(&sh.maxlen, reinterpret_cast<uint64_t>(&tab->maxlen));
  }
  cp_async_wait_all();
  __syncthreads();
  // Unit u (8 elements) holds elements 8u..8u+7, which belong to lanes 8(u%4)..8(u%4)+7 (a chunk starts on a
  // whole step); warp w counts units [4 kSeg w, 4 kSeg (w + 1)), its steps' elements, a lane those ≡ lane
  // (mod 32), so part[k] sums the bits of lane 8(lane%4)+k's elements.
  // A part that reaches kHRNoCode holds an exponent with no way to code it.
  uint32_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
  for (uint32_t i = 0; i < kSeg / 8; i++) {
    const uint32_t ue = 8 * (kSeg * 4 * warp + 32 * i + lane);
    if (ue < len) {
      const uint2 x = *reinterpret_cast<const uint2*>(xs + ue);
      if (ue + 8 <= len) hr_count<T>(sh, x.x, x.y, 8, part);
      else hr_count<T>(sh, x.x, x.y, len - ue, part);
    }
  }
  uint32_t most = p.raw_only ? kHRNoCode : 0u;
#pragma unroll
  for (int k = 0; k < 8; k++) most = max(most, part[k]);
#pragma unroll
  for (int k = 0; k < 8; k++) {
    part[k] += __shfl_xor_sync(0xFFFFFFFFu, part[k], 4);
    part[k] += __shfl_xor_sync(0xFFFFFFFFu, part[k], 8);
    part[k] += __shfl_xor_sync(0xFFFFFFFFu, part[k], 16);
  }
  uint32_t seg_bits = 0;  // the bits of this lane's elements in this warp's steps
#pragma unroll
  for (uint32_t k = 0; k < 8; k++) {
    const uint32_t b = __shfl_sync(0xFFFFFFFFu, part[k], lane >> 3);
    if ((lane & 7) == k) seg_bits = b;
  }
  sh.seg[warp][lane] = seg_bits;
  const bool bad_warp = __any_sync(0xFFFFFFFFu, most >= kHRNoCode);
  if (lane == 0) sh.wbad[warp] = bad_warp;
  __syncthreads();

  // 2. The lane's bits before this warp's first step (C), and the bytes its decoder takes in this warp's steps:
  // from the bytes it holds before step s0 to those after its last step here (hr_taken).
  const uint32_t cnt = lane < clen ? (clen - 1 - lane) / 32 + 1 : 0;  // the lane's elements in the chunk
  const uint32_t s0 = kSeg * wc;
  uint32_t C = 0;
#pragma unroll
  for (uint32_t w = 0; w < W; w++) {
    const uint32_t bits = sh.seg[w][lane];
    if (w >= WC * h && w < warp) C += bits;
  }
  bool bad = sh.maxlen > kHRMaxLen || sh.maxlen == 0;
#pragma unroll
  for (uint32_t w = 0; w < W; w++) bad |= sh.wbad[w] != 0;
  const uint32_t taken = s0 > 0 && s0 < cnt ? hr_taken(hr_ent(sh, cxs, s0 - 1, lane, cnt), C) : 0;
  const uint32_t C_end = C + seg_bits, s_end = min(cnt, s0 + kSeg);  // bits and steps to the lane's end here
  const uint32_t lane_bytes = s_end > s0 ? hr_taken(hr_ent(sh, cxs, s_end - 1, lane, cnt), C_end) - taken : 0;
  const uint32_t wbytes = warp_sum(lane_bytes);
  if (lane == 0) sh.wbytes[warp] = wbytes;
  __syncthreads();

  uint32_t block_bytes = 0, wbase = 0;  // the block's streams' length, and this warp's first byte in them
#pragma unroll
  for (uint32_t w = 0; w < W; w++) {
    const uint32_t x = sh.wbytes[w];
    if (w < warp) wbase += x;
    block_bytes += x;
  }
  // Streams that fit in shared memory are placed there before their offset is known; longer ones are placed in
  // the frame once it is.
  const bool staged = !bad && block_bytes <= kHRStage;
  // Every lane has an element at each of the warp's steps: lane 31, which has the fewest, has. (From cnt, live
  // here anyway: one from the chunk's length spilled.)
  const bool full = __shfl_sync(0xFFFFFFFFu, cnt, 31) >= s0 + kSeg;
  uint32_t escapes = 0;

  // The block's offset in the frame's streams, from the look-back (over blocks: state word b); a chunk's length
  // is the sum of its lanes' (codec/FORMAT.md: ceil(max(C' + 8, B if the last element escapes) / 8) bytes, C' a
  // lane's bits before its last element and B all of them), which the warps' sums add up to.
  // Warp 0 publishes the length now and, when the streams are staged, walks back after placing its bytes: by
  // then the blocks before have mostly published their offsets, and the walk is short.
  auto lookup = [&] {
    const uint32_t start = lookback_walk(hr_ws_state(p, f), b, block_bytes);
    if (lane == 0) {
      uint32_t* ct = reinterpret_cast<uint32_t*>(frame + L.chunk_table);
      if (!p.raw_only) {
        ct[b * kHREncChunks] = start;
        // The second chunk's stream starts after the first's: its warps' bytes.
        if (b * kHREncChunks + 1 < p.chunks)
          ct[b * kHREncChunks + 1] = start + sh.wbytes[0] + sh.wbytes[1] + sh.wbytes[2] + sh.wbytes[3];
      }
      sh.start = start;
      // Streams that would end past a raw frame's size belong to a frame that goes raw: nothing is written
      // there.
      sh.write = !bad && L.streams + start + block_bytes <= kHeaderSize + (uint64_t)T::kBytes * n;
    }
  };
  // The walk (its polling loops) stays out of the path to the placing: the compiler then sees the warps reach the
  // placing's ballots converged, and checks nothing before each (with the warp index uniform).
  if (warp == 0) lookback_publish(hr_ws_state(p, f), b, block_bytes);
  // 3. Each thread writes its lane's bytes of the warp's steps where the decoder will read them.
  if (staged) {
    escapes = full ? hr_place<T, true>(sh, cxs, sh.stage, s0, cnt, C_end, taken, wbase + wbytes)
                   : hr_place<T, false>(sh, cxs, sh.stage, s0, cnt, C_end, taken, wbase + wbytes);
    if (warp == 0) lookup();
  } else if (warp == 0) {
    lookup();
  }
  __syncthreads();
  if (staged) {
    if (sh.write) hr_copy_out(frame + L.streams + sh.start, sh.stage, block_bytes);
  } else if (sh.write) {
    uint8_t* out = frame + L.streams + sh.start;
    escapes = full ? hr_place<T, true>(sh, cxs, out, s0, cnt, C_end, taken, wbase + wbytes)
                   : hr_place<T, false>(sh, cxs, out, s0, cnt, C_end, taken, wbase + wbytes);
  }
  if (lane == 0) sh.wesc[warp] = escapes;

  // The frame's last chunk to finish writes what depends on every chunk.
  __threadfence();
  __syncthreads();
  if (warp != 0) return;
  uint32_t done = 0;
  if (lane == 0) {
    uint32_t E = 0;
#pragma unroll
    for (uint32_t w = 0; w < W; w++) E += sh.wesc[w];
    uint32_t* fw = hr_ws_frame(p, f);
    if (E) atomicAdd(fw + 0, E);
    if (bad) atomicOr(fw + 2, 1u);
    __threadfence();
    done = atomicAdd(fw + 1, 1u);
  }
  done = __shfl_sync(0xFFFFFFFFu, done, 0);
  if (done != bpf - 1) return;
  uint32_t* fw = hr_ws_frame(p, f);
  __threadfence();
  const uint64_t last_state = ld_relaxed_gpu(hr_ws_state(p, f) + (bpf - 1));
  const uint64_t codes_len = (uint32_t)last_state;
  const uint64_t E = ld_relaxed_gpu(fw + 0);
  const bool raw = ld_relaxed_gpu(fw + 2) != 0 || L.streams + codes_len >= kHeaderSize + (uint64_t)T::kBytes * n;
  if (raw) {
    hr_write_raw_header<T>(frame, n);
    if (lane == 0) {
      reinterpret_cast<uint64_t*>(p.sizes)[f] = kHeaderSize + (uint64_t)T::kBytes * n;
      st_relaxed_gpu(fw + 3, 1u);
    }
    return;
  }
  const uint8_t* table = reinterpret_cast<const uint8_t*>(p.table);
  for (uint32_t i = lane; i < p.table_len; i += 32) frame[kHeaderSize + i] = table[i];
  for (uint32_t i = lane; i < 48; i += 32) {
    const uint32_t k = i % 16, g = i / 16;
    const uint64_t from = g == 0   ? kHeaderSize + p.table_len
                          : g == 1 ? L.chunk_table + 4ull * L.chunks
                                   : L.residuals + hr_res_bytes<T>(n);
    const uint64_t to = g == 0 ? L.chunk_table : g == 1 ? L.residuals : L.streams;
    if (from + k < to) frame[from + k] = 0;
  }
  hr_write_header<T>(frame, n, E, sh.maxlen, p.table_len, L.streams + codes_len - kHeaderSize, codes_len);
  if (lane == 0) reinterpret_cast<uint64_t*>(p.sizes)[f] = L.streams + codes_len;
}

// hr_raw copies the input of every frame the encoder made raw behind its header. Grid-stride over units of 8
// elements (16 bytes of bf16, 8 of fp8); a frame that stayed coded is skipped.
template <class T, class Map>
__device__ __forceinline__ void hr_raw(const HREncParams& p, const Map& map) {
  wait_prerequisites();  // built for sm_90 it launches during the encoder's last blocks
  const uint64_t n = p.n, units = (n + 7) / 8;
  for (uint32_t f = 0; f < p.frames; f++) {
    if (ld_relaxed_gpu(hr_ws_frame(p, f) + 3) == 0) continue;
    uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride) + kHeaderSize;
    for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < units; u += (uint64_t)gridDim.x * blockDim.x) {
      const uint64_t e = 8 * u;
      if constexpr (T::kBytes == 2) {
        if (e + 8 <= n) {
          store16(reinterpret_cast<uint64_t>(frame + 2 * e), load16(map.addr(f, (uint32_t)e)));
        } else {
          for (uint64_t k = e; k < n; k++)
            reinterpret_cast<uint16_t*>(frame)[k] = *reinterpret_cast<const uint16_t*>(map.addr(f, (uint32_t)k));
        }
      } else {
        if (e + 8 <= n) {
          store8(reinterpret_cast<uint64_t>(frame + e), load8(map.addr(f, (uint32_t)e)));
        } else {
          for (uint64_t k = e; k < n; k++) frame[k] = *reinterpret_cast<const uint8_t*>(map.addr(f, (uint32_t)k));
        }
      }
    }
  }
}

// ---- decode ------------------------------------------------------------------------------------------------
// The decoder's stream ring: each warp copies its chunk's stream into shared memory ahead of its steps, 512
// bytes (16 per lane) at a time with cp.async. A group of 16 steps takes at most 1,024 bytes (two per lane and
// step), so the ring holds what a group reads and what the copies bring for the next.
constexpr uint32_t kHRRing = 2048, kHRRingUnit = 512, kHRGroupSteps = kHRGroup / 32;
// A ring's first kHRMirror bytes are copied past its end too: a step's reads, at most 31 bytes beyond the first
// lane's, need no wrap.
constexpr uint32_t kHRMirror = 32;

template <class T>
struct HRDecShared {
  uint32_t lut[256];  // next 8 bits → hr_lut_entry
  HRCanon<T> canon;   // the frame's code table, its lengths and canonical codes
  // The coded symbols in canonical order: with each length's first code, count and first index there (canon),
  // what the block fills the lookup table from, an entry a thread.
  uint16_t sorted[T::kSymbols];
  uint32_t hdr[16];
  uint32_t status;
  uint32_t raw;
  uint32_t chunk_log2;  // the frame's: kHRChunkLog2 or kHRChunkLog2Max
  uint64_t n, codes_len;
  HRLayout L;
  __align__(16) uint8_t ring[8][kHRRing + kHRMirror];  // a ring a warp
  // Two groups' residual bytes (the next one's arrive while a group decodes); fp8 reads each residual as a
  // 16-bit window, so its rows end with a pad.
  __align__(16) uint8_t res[8][2][kHRGroup * T::kResBits / 8 + (T::kBytes == 1 ? 16 : 0)];
  __align__(16) typename T::Elem out[8][kHRGroup];
};

__device__ __forceinline__ void hr_fail(const HRDecParams& p, uint32_t st) {
  atomicCAS(reinterpret_cast<uint32_t*>(p.status), 0u, st);
}

// hr_check_header validates a frame header for the high-ratio decoder: a v2 high-ratio frame of T, or a raw
// frame of out_bytes bytes (either version; its dtype is not checked: the bytes go to the destination as they
// are). crc is the CRC-32C of the header's first 15 words.
template <class T>
__device__ uint32_t hr_check_header(const uint32_t* w, uint32_t crc, uint64_t out_bytes, uint64_t cap,
                                   HRDecShared<T>& sh) {
  if (w[0] != kMagic) return kBadMagic;
  const uint32_t version = w[1] & 0xFF;
  if (version != kVersion && version != kVersion2) return kBadVersion;
  if (crc != w[15]) return kBadCRC;
  const uint32_t dtype = (w[1] >> 8) & 0xFF, flags = (w[1] >> 16) & 0xFF, code_bits = w[1] >> 24;
  const uint64_t n = u64_at(w, 2), esc = u64_at(w, 4), payload = u64_at(w, 8);
  const uint64_t codes_len = u64_at(w, 10), res_len = u64_at(w, 12);
  if (w[7] != 0 || n > 0xFFFFFFFFull) return kCorrupt;
  if (version == kVersion && flags != kFlagRaw) return flags & ~kFlagRaw ? kCorrupt : kUnsupported;
  if (flags & kFlagChecksum) return kUnsupported;
  if (version == kVersion2 && w[14] != 0) return kCorrupt;
  if (flags == kFlagRaw) {
    if (code_bits != 0 || esc != 0 || w[6] != 0 || codes_len != 0 || payload != res_len) return kCorrupt;
    if constexpr (T::kBytes == 2) {
      if (res_len != out_bytes || (out_bytes & 1)) return kSizeMismatch;
    } else {
      if (res_len != out_bytes) return kSizeMismatch;
    }
    if (kHeaderSize + payload > cap) return kTruncated;
    sh.raw = 1;
    sh.chunk_log2 = kHRChunkLog2;  // the launch's chunks: a raw payload is copied in those
    sh.n = out_bytes / T::kBytes;
    return kOK;
  }
  if (flags != kFlagEntropy) return kCorrupt;
  if (dtype != T::kDType) return kUnsupported;
  const uint32_t chunk_log2 = w[6] & 0xFF, res_bits = (w[6] >> 8) & 0xFF, table_len = w[6] >> 16;
  if (chunk_log2 != kHRChunkLog2 && chunk_log2 != kHRChunkLog2Max) return kUnsupported;
  if (res_bits != T::kResBits || code_bits < 1 || code_bits > kHRMaxLen || table_len > T::kTableMax) return kCorrupt;
  if ((uint64_t)T::kBytes * n != out_bytes) return kSizeMismatch;
  const HRLayout L = hr_layout<T>(n, table_len, chunk_log2);
  const uint64_t want_res = T::kResBits == 8 ? n : (n * T::kResBits + 7) / 8;
  if (esc > n || res_len != want_res || payload != L.streams + codes_len - kHeaderSize) return kCorrupt;
  if (codes_len > 2 * n || codes_len > 0xFFFFFFFFull) return kCorrupt;
  if (kHeaderSize + payload > cap) return kTruncated;
  sh.raw = 0;
  sh.chunk_log2 = chunk_log2;
  sh.n = n;
  sh.codes_len = codes_len;
  sh.L = L;
  return kOK;
}

// hr_lut_entry is a decode table entry: the exponent field in place (exponent << kExpShift; 0 for ESC), the
// code's length and an escape flag (ESC: its raw bits follow). A step stores the entry's low bits as they are and
// shifts its lane by the entry (hr_lut_shift). For bf16 the length sits in bits 0-4, below the field (bits 7-14),
// and the flag in bit 15, so the entry is both the shift and the store, and the write-out masks both off;
// for fp8, whose field leaves no room below it, the length goes from bit 16 and the flag is bit 23.
// kHRLutNone is a prefix no code starts: a shift of 31, which marks the lane for good (see HRLane), and the flag.
template <class T>
__device__ __forceinline__ uint32_t hr_lut_entry(uint32_t sym, uint32_t len) {
  if constexpr (T::kBytes == 2) return sym == T::kEsc ? len | 0x8000u : sym << T::kExpShift | len;
  return sym == T::kEsc ? (len | 128u) << 16 : len << 16 | sym << T::kExpShift;
}
template <class T>
constexpr uint32_t kHRLutNone = T::kBytes == 2 ? 0x801Fu : 0xFFFF0000u;
template <class T>
__device__ __forceinline__ uint32_t hr_lut_shift(uint32_t e) { return T::kBytes == 2 ? e : e >> 16; }  // mod 32
template <class T>
__device__ __forceinline__ bool hr_lut_esc(uint32_t e) { return e >= (T::kBytes == 2 ? 0x8000u : 128u << 16); }
// kHRFieldMask keeps an element's exponent field from a stored entry.
template <class T>
constexpr uint32_t kHRFieldMask = ((1u << T::kExpBits) - 1) << T::kExpShift;

// hr_copy16 copies 16 bytes from global a to shared d with cp.async, or byte by byte (zeros past end) when they
// would cross end.
__device__ __forceinline__ void hr_copy16(uint8_t* d, uint64_t a, uint64_t end) {
  if (a + 16 <= end) {
    cp_async16(d, a);
  } else {
    for (uint32_t i = 0; i < 16; i++) d[i] = a + i < end ? *reinterpret_cast<const uint8_t*>(a + i) : 0;
  }
}

// HRLane is one lane's decoding state: its next bits, MSB first, in win (the bits below them are zero); pw,
// where a refill byte goes: 2^(24 − the bits held), so that the byte lands right below them as win + b × pw
// (2^9 to 2^24; 0 for good once the lane met a prefix no code starts, whose shift of 31 overflows it); and the
// warp's position in the stream (bytes from the ring's base).
struct HRLane {
  uint32_t win, pw, q;
};

// hr_refill gives each lane in need the next byte of the stream in lane order, from the warp's ring.
__device__ __forceinline__ void hr_refill(const uint8_t* ring, uint32_t below, bool need, HRLane& st) {
  const uint32_t m = __ballot_sync(0xFFFFFFFFu, need);
  // Branch-free: every lane reads the byte it would take (diverging around the read costs more than the read).
  const uint32_t b = ring[(st.q & (kHRRing - 1)) + __popc(m & below)];
  st.win = mad_if(need, b, st.pw, st.win);
  st.pw = need ? st.pw >> 8 : st.pw;
  st.q += __popc(m);
}

// hr_step decodes one step of a lane and stores its exponent field in place at out; with CHECK, lanes past the
// chunk's end (!active) take no byte and decode nothing.
template <class T, bool CHECK>
__device__ __forceinline__ void hr_step(const HRDecShared<T>& sh, const uint8_t* ring, uint32_t below, bool active,
                                        HRLane& st, typename T::Elem* out) {
  hr_refill(ring, below, (!CHECK || active) && st.pw > 1u << 16, st);  // round 1: fewer than 8 bits held
  uint32_t e = sh.lut[top_byte(st.win)];
  if (CHECK && !active) e = 0;
  // A funnel shift takes the shift mod 32: the field, ESC's flag and a marked lane's high bits drop out.
  st.win = __funnelshift_l(0, st.win, hr_lut_shift<T>(e));
  st.pw = __funnelshift_l(0, st.pw, hr_lut_shift<T>(e));
  if (!CHECK || active) *out = (typename T::Elem)e;  // the low bits: the field (0 for ESC), bf16's length below it
  const bool esc = hr_lut_esc<T>(e);
  if (__any_sync(0xFFFFFFFFu, esc)) {
    // Round 2: ESC's raw exponent (a marked lane takes part too, and stays marked). Stored over the first
    // store rather than merged with it, so that the common path keeps the table entry where it was loaded.
    hr_refill(ring, below, esc && st.pw > 1u << (24 - T::kExpBits), st);
    if (esc) {
      *out = (typename T::Elem)((st.win >> (32 - T::kExpBits)) << T::kExpShift);
      st.win <<= T::kExpBits;
      st.pw <<= T::kExpBits;
    }
  }
}

// hr_join joins element i of a group, its exponent field in place, with its residual from the staged bytes.
template <class T>
__device__ __forceinline__ typename T::Elem hr_join(const uint8_t* sres, uint32_t i, uint32_t field) {
  if constexpr (T::kBytes == 2) {
    const uint32_t r = sres[i];
    return (uint16_t)(((r * 0x101u) & 0x807Fu) | (field & kHRFieldMask<T>));  // sign to bit 15, mantissa in bits 0-6
  } else {
    const uint32_t bit = T::kResBits * i;
    const uint32_t r = ((sres[bit >> 3] | (uint32_t)sres[(bit >> 3) + 1] << 8) >> (bit & 7)) & ((1u << T::kResBits) - 1);
    return (uint8_t)(((r >> T::kExpShift) << 7) | field | (r & ((1u << T::kExpShift) - 1)));
  }
}

// hr_join_unit joins unit u of a group (its elements 8u to 8u + 7): their exponent fields from shared memory
// with their residuals. For bf16 a byte permute spreads two residual bytes into two elements' halves at once.
template <class T>
__device__ __forceinline__ typename T::Unit hr_join_unit(const uint8_t* sres, const typename T::Elem* sout, uint32_t u) {
  if constexpr (T::kBytes == 2) {
    const uint4 f = *reinterpret_cast<const uint4*>(sout + 8 * u);
    const uint2 r = *reinterpret_cast<const uint2*>(sres + 8 * u);
    constexpr uint32_t kSM = 0x807F807Fu;  // sign to bit 15, mantissa in bits 0-6, of both halves
    // The bit select also drops the code lengths and flags stored around the fields: one LOP3 (written as
    // (a & kSM) | (f & ~kSM) it compiled to two).
    auto join = [](uint32_t a, uint32_t f) { return bit_select(kSM, a, f); };
    return make_uint4(join(__byte_perm(r.x, 0, 0x1100), f.x), join(__byte_perm(r.x, 0, 0x3322), f.y),
                      join(__byte_perm(r.y, 0, 0x1100), f.z), join(__byte_perm(r.y, 0, 0x3322), f.w));
  } else if constexpr (T::kResBits == 4) {
    // e4m3: the unit's 8 residual nibbles are one word; byte permutes put nibble k in byte k (of x, then y),
    // and per 4 elements a shift (FMA pipe) and two LOP3s place sign and mantissa around the fields.
    const uint2 f = *reinterpret_cast<const uint2*>(sout + 8 * u);
    const uint32_t r = *reinterpret_cast<const uint32_t*>(sres + 4 * u);
    const uint32_t even = r & 0x0F0F0F0Fu, odd = r >> 4 & 0x0F0F0F0Fu;  // nibbles 0, 2, 4, 6 and 1, 3, 5, 7
    const uint32_t x = __byte_perm(even, odd, 0x5140), y = __byte_perm(even, odd, 0x7362);
    return make_uint2(bit_select(0x80808080u, x * 16, (x & 0x07070707u) | f.x),
                      bit_select(0x80808080u, y * 16, (y & 0x07070707u) | f.y));
  } else {
    // e5m2: the unit's 8 residuals are 3 bytes, LSB-first; each 12-bit half spreads to a field a byte (6-bit
    // pairs, then 3-bit fields), and a bit select per 4 elements places the sign: about 20 instructions where
    // reading each element's field took about 60.
    const uint2 f = *reinterpret_cast<const uint2*>(sout + 8 * u);
    const uint8_t* rp = sres + 3 * u;
    const uint32_t r = rp[0] | (uint32_t)rp[1] << 8 | (uint32_t)rp[2] << 16;
    auto spread = [](uint32_t x) {
      x = (x | x << 10) & 0x003F003Fu;
      return (x | x << 5) & 0x07070707u;
    };
    const uint32_t x = spread(r & 0xFFFu), y = spread(r >> 12);
    return make_uint2(bit_select(0x80808080u, x << 5, (x & 0x03030303u) | f.x),
                      bit_select(0x80808080u, y << 5, (y & 0x03030303u) | f.y));
  }
}

// hr_dec_table builds the decoder's lookup table (sh.lut) from the code lengths in sh.canon with the whole block
// (every thread calls it; it ends with a barrier): the canonical codes (hr_canonical), checked (Kraft sum at most
// 1, the longest length the header's code_bits: else sh.status is kCorrupt and the frame fails), the symbols
// in canonical order, then an entry a thread.
template <class T, uint32_t WARPS>
__device__ void hr_dec_table(const HRDecParams& p, HRDecShared<T>& sh, uint32_t code_bits) {
  HRCanon<T>& c = sh.canon;
  const HRSymbols y = hr_canonical<T, WARPS>(c);
  if (c.kraft > (1u << kHRMaxLen) || c.maxlen != code_bits) {  // the same for every thread
    if (threadIdx.x == 0) {
      sh.status = kCorrupt;
      hr_fail(p, kCorrupt);
    }
    __syncthreads();
    return;
  }
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (uint32_t i = 0; i < 2; i++)
    if (y.len[i]) sh.sorted[c.off[y.len[i]] + y.idx[i]] = (uint16_t)(32 * (warp + WARPS * i) + lane);
  __syncthreads();
  // Entry i: the code whose bits prefix i (one length at most matches a prefix code), else no code.
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
    uint32_t e = kHRLutNone<T>;
#pragma unroll
    for (uint32_t k = 1; k <= kHRMaxLen; k++) {
      const uint32_t r = (i >> (kHRMaxLen - k)) - c.first[k];
      if (r < c.count[k]) e = hr_lut_entry<T>(sh.sorted[c.off[k] + r], k);
    }
    sh.lut[i] = e;
  }
  __syncthreads();
}

template <class T, int WARPS, class Map>
__device__ __forceinline__ void hr_decode(const HRDecParams& p, const Map& map) {
  static_assert(WARPS <= 8, "shared staging holds 8 warps");
  __shared__ HRDecShared<T> sh;
  const uint32_t lane = threadIdx.x & 31, warp = warp_uniform(threadIdx.x >> 5);
  const uint32_t bpf = (p.chunks + WARPS - 1) / WARPS;  // blocks per frame
  const uint32_t f = blockIdx.x / bpf, c = (blockIdx.x - f * bpf) * WARPS + warp;
  const uint8_t* frame = reinterpret_cast<const uint8_t*>(p.src + (uint64_t)f * p.frame_stride);
  const uint8_t* frame_end = frame + p.frame_cap;
  // The block's setup keeps warp 0's serial part short: warp 0 loads the header and the code table's bytes, checks
  // the header (its checksum with the whole warp) and reads the code lengths; the block then builds the lookup
  // table (hr_dec_table).
  if (warp == 0) {
    uint32_t st = kOK;
    if (p.frame_cap < kHeaderSize) {
      st = kTruncated;
    } else {
      if (lane < 16) sh.hdr[lane] = reinterpret_cast<const uint32_t*>(frame)[lane];
      hr_stage_table<T>(frame + kHeaderSize, (uint32_t)min(p.frame_cap - kHeaderSize, (uint64_t)T::kTableMax), sh.canon.table);
      __syncwarp();
      const uint32_t crc = crc32c_words_warp(sh.hdr, 15);
      if (lane == 0) sh.status = hr_check_header<T>(sh.hdr, crc, p.out_bytes, p.frame_cap, sh);
      __syncwarp();
      st = sh.status;
      if (st == kOK && !sh.raw) st = hr_table_lengths<T>(sh.canon.table, sh.hdr[6] >> 16, sh.canon.len);
    }
    if (lane == 0) {
      sh.status = st;
      if (st != kOK) hr_fail(p, st);
    }
  }
  __syncthreads();
  if (sh.status == kOK && !sh.raw) hr_dec_table<T, WARPS>(p, sh, sh.hdr[1] >> 24);
  if (warp_uniform(sh.status) != kOK || c >= p.chunks) return;
  const uint64_t n = sh.n;
  // A frame of kHRChunkLog2Max chunks leaves the launch's later warps (planned for kHRChunkLog2) past its end.
  const uint32_t chunk_log2 = warp_uniform(sh.chunk_log2), e0 = c << chunk_log2;
  if (warp_uniform(e0 >= n && n > 0)) return;
  const uint32_t len = warp_uniform((uint32_t)min(uint64_t{1} << chunk_log2, n - e0));
  if (warp_uniform(sh.raw)) {
    const uint8_t* src = frame + kHeaderSize;
    for (uint32_t u = lane; 8 * u < len; u += 32) {
      const uint32_t ue = 8 * u;
      if constexpr (T::kBytes == 2) {
        if (ue + 8 <= len) {
          store16(map.addr(f, e0 + ue), load16(reinterpret_cast<uint64_t>(src + 2ull * (e0 + ue))));
        } else {
          for (uint32_t k = ue; k < len; k++)
            *reinterpret_cast<uint16_t*>(map.addr(f, e0 + k)) = reinterpret_cast<const uint16_t*>(src)[e0 + k];
        }
      } else {
        if (ue + 8 <= len) {
          store8(map.addr(f, e0 + ue), load8(reinterpret_cast<uint64_t>(src + e0 + ue)));
        } else {
          for (uint32_t k = ue; k < len; k++) *reinterpret_cast<uint8_t*>(map.addr(f, e0 + k)) = src[e0 + k];
        }
      }
    }
    return;
  }
  const HRLayout L = sh.L;
  const uint32_t* ct = reinterpret_cast<const uint32_t*>(frame + L.chunk_table);
  const uint32_t codes_len = (uint32_t)sh.codes_len;  // at most 2^32 − 1 (hr_check_header)
  const uint32_t start = warp_uniform(ct[c]), stop = warp_uniform(c + 1 < L.chunks ? ct[c + 1] : codes_len);
  if (warp_uniform(start > stop || stop > codes_len)) {
    if (lane == 0) hr_fail(p, kCorrupt);
    return;
  }
  const uint64_t end = reinterpret_cast<uint64_t>(frame_end);
  // The ring's base: the chunk's first stream byte rounded down to 16 bytes.
  const uint64_t sb = reinterpret_cast<uint64_t>(frame + L.streams + start), base = sb & ~uint64_t(15);
  const uint32_t q0 = (uint32_t)(sb - base), q_end = q0 + (uint32_t)(stop - start);
  uint8_t* ring = sh.ring[warp];
  uint32_t req = 0;  // ring bytes [0, req) from base copied or on their way
  // fill requests what the ring can take beyond the lowest byte still to be read (q), up to the chunk's end.
  auto fill = [&](uint32_t q) {
    while (req + kHRRingUnit <= q + kHRRing && req < q_end) {
      const uint32_t o = (req + 16 * lane) & (kHRRing - 1);
      hr_copy16(ring + o, base + req + 16 * lane, end);
      if (o < kHRMirror) hr_copy16(ring + kHRRing + o, base + req + 16 * lane, end);
      req += kHRRingUnit;
    }
  };
  // The chunk's residuals start on a whole byte (and on 16 bytes: e0 is a multiple of 8,192).
  const uint64_t res = reinterpret_cast<uint64_t>(frame + L.residuals + hr_res_bytes<T>(e0));
  constexpr uint32_t kGroupRes = kHRGroup * T::kResBits / 8;
  auto stage_res = [&](uint32_t g) {  // group g's residuals into buffer g & 1
    if (16 * lane < kGroupRes) hr_copy16(sh.res[warp][g & 1] + 16 * lane, res + g * kGroupRes + 16 * lane, end);
  };
  const uint32_t below = lanemask_lt();
  typename T::Elem* sout = sh.out[warp];
  HRLane st{0, 1u << 24, q0};
  const uint32_t steps = (len + 31) / 32, groups = (steps + kHRGroupSteps - 1) / kHRGroupSteps;
  stage_res(0);
  fill(q0);
  for (uint32_t g = 0; g < groups; g++) {
    cp_async_wait_all();
    __syncwarp();
    if (req < q_end && req < st.q + 2 * kHRGroup) {
      // Escape-dense streams can outrun the copies: wait for this group's bytes.
      fill(st.q);
      cp_async_wait_all();
      __syncwarp();
    }
    if (g + 1 < groups) stage_res(g + 1);
    fill(st.q);
    const uint8_t* sres = sh.res[warp][g & 1];
    const uint32_t s0 = g * kHRGroupSteps, g0 = 32 * s0;
    // The group written out in units of 8 elements, each joined with its residuals.
    auto write_unit = [&](uint32_t u) {
      if constexpr (T::kBytes == 2) store16(map.addr(f, e0 + g0 + 8 * u), hr_join_unit<T>(sres, sout, u));
      else store8(map.addr(f, e0 + g0 + 8 * u), hr_join_unit<T>(sres, sout, u));
    };
    if (g0 + kHRGroup <= len) {
#pragma unroll
      for (uint32_t i = 0; i < kHRGroupSteps; i++)
        hr_step<T, false>(sh, ring, below, true, st, sout + 32 * i + lane);
      __syncwarp();
#pragma unroll
      for (uint32_t i = 0; i < kHRGroup / 256; i++) write_unit(lane + 32 * i);
    } else {
      for (uint32_t i = 0; s0 + i < steps; i++)
        hr_step<T, true>(sh, ring, below, 32 * (s0 + i) + lane < len, st, sout + 32 * i + lane);
      __syncwarp();
      for (uint32_t u = lane; g0 + 8 * u < len; u += 32) {
        if (g0 + 8 * u + 8 <= len) {
          write_unit(u);
        } else {
          for (uint32_t k = g0 + 8 * u; k < len; k++)
            *reinterpret_cast<typename T::Elem*>(map.addr(f, e0 + k)) = hr_join<T>(sres, k - g0, sout[k - g0]);
        }
      }
    }
  }
  cp_async_wait_all();
  // The chunk is corrupt when a lane met a prefix no code starts (it is marked), left nonzero padding, or the
  // lanes took other than the chunk's bytes.
  const bool bad = st.pw - (1u << 9) > (1u << 24) - (1u << 9) || st.win != 0;
  if ((__any_sync(0xFFFFFFFFu, bad) || st.q != q_end) && lane == 0) hr_fail(p, kCorrupt);
}

}  // namespace sz
