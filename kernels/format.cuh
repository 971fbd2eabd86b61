// SplitZip frame format v1 as the GPU kernels see it (codec/FORMAT.md): constants, the kernels' parameters and
// workspace counters, the bf16 frame layout, CRC-32C, header writing and checking, and the address maps that
// say where a frame's elements live (a dense tensor or a paged KV cache).
#pragma once

#include <stdint.h>

namespace sz {

// ---- format v1 (codec/FORMAT.md) -------------------------------------------------------------------------
constexpr uint32_t kHeaderSize = 64;
constexpr uint32_t kMagic = 0x50495A53u;  // "SZIP" little-endian
constexpr uint32_t kVersion = 1;
constexpr uint32_t kDTypeBF16 = 1;
constexpr uint32_t kFlagRaw = 1;
constexpr uint32_t kCodeBits = 4;
constexpr uint32_t kCodebookLen = 16;
constexpr uint32_t kChunkLog2 = 12;
constexpr uint32_t kChunk = 1u << kChunkLog2;  // elements per chunk
constexpr uint32_t kResidualBits = 8;
constexpr uint32_t kEscapeSize = 3;

// ---- work decomposition ------------------------------------------------------------------------------------
constexpr uint32_t kUnit = 8;                        // elements per 16-byte vector
constexpr uint32_t kUnitsPerChunk = kChunk / kUnit;  // 512

// Tiles: a block codes CPT consecutive chunks of one frame (a tile) at a time: each thread holds
// UPT = 512 × CPT / THREADS 16-byte units, unit u = thread + j × THREADS, so units j of all threads cover chunk
// j × THREADS / 512 of the tile. Several chunks per tile keep more loads in flight and share the fixed costs
// (scan, look-back) among them.
template <int THREADS, int CPT>
struct EncTile {
  static constexpr int UPT = kUnitsPerChunk * CPT / THREADS;
  static constexpr int NP = (UPT + 3) / 4;
  static_assert(UPT >= 1 && UPT <= 16 && kUnitsPerChunk % THREADS == 0, "a block row of units stays in one chunk");
};

// Decode status codes (a uint32 the host zeroes before the launch; the first error wins).
enum Status : uint32_t {
  kOK = 0,
  kBadMagic = 1,
  kBadVersion = 2,
  kBadCRC = 3,
  kUnsupported = 4,   // valid v1 frame this GPU decoder does not handle (dtype, code width, chunk size)
  kSizeMismatch = 5,  // the frame holds a different number of bytes than the destination
  kCorrupt = 6,       // inconsistent lengths, escape table out of range
  kTruncated = 7,     // the frame is longer than the bytes the caller says it has
};

// Parameters of the encode kernels (by value; the Go side packs the same layout).
struct EncParams {
  uint64_t src;           // dense: the input; paged: device array of u64 base pointers K0,V0,K1,V1,...
  uint64_t ids;           // paged: int32 block ids
  uint64_t dst;           // the first frame (16-byte aligned)
  uint64_t frame_stride;  // bytes from one frame to the next (multiple of 16)
  uint64_t sizes;         // u64 per frame: the frame's length, written by the kernel
  uint64_t ws;            // workspace: its counters (ws_counters), then a body zero on entry and left zero
  uint64_t stride_bytes;  // paged: bytes from one block id to the next
  uint32_t n;             // elements per frame
  uint32_t frames;
  uint32_t chunks;          // chunks per frame
  uint32_t block_elems;     // paged: contiguous elements of one block of K or V
  uint32_t n_blocks;        // paged: block ids
  uint32_t segs_per_frame;  // paged: blocks of K or V per frame
  uint32_t raw_mode;        // raw kernel: RawMode
  uint32_t reserved;        // zero; keeps codebook at byte 88, so PTX built from earlier sources loads (WithPTX)
  uint32_t codebook[4];  // 16 exponents, code k in byte k
};
static_assert(sizeof(EncParams) == 104, "EncParams layout is shared with Go");

// What the raw fallback kernel does (EncParams.raw_mode), by what ran before it.
enum RawMode : uint32_t {
  kRawAfterTile = 0,    // after a tile encoder: wait for it, zero its control words, copy the frames it made raw
  kRawHost = 1,         // no encoder: the host saw the coded layout cannot fit; write raw frames (header included)
  kRawAfterStream = 2,  // after the streaming encoder: learn its decisions from ws_counters (raw_chunks)
};

// The workspace starts with kCounterWords words that persist from call to call (zero before the first): word 0
// counts the streaming encoder's frame decisions (frames decided in the low half; in the high half those that
// need the raw fallback kernel: raw ones, and those with escapes for place_deferred), word kSeenWord + b is the
// count block b of the raw fallback kernel saw last. The body after them is zero between calls. Blocks of the
// raw fallback kernel after the streaming encoder: four an SM (the host's choice from the card's SM count; 528 on
// an H100 or H200), at most kRawBlocksMax, because place_deferred's warps wait on memory a chunk at a time (its
// count, slots, stores), so it wants many; as many in every call on one workspace, because each block follows
// every call's decisions.
constexpr uint32_t kRawBlocksMax = 1024;  // four an SM up to 256 SMs
constexpr uint32_t kSeenWord = 16;        // the seen words start on another 128-byte line than the one polled
constexpr uint32_t kCounterWords = kSeenWord + kRawBlocksMax;
__device__ __forceinline__ uint64_t* ws_counters(const EncParams& p) { return reinterpret_cast<uint64_t*>(p.ws); }
__device__ __forceinline__ uint64_t ws_body(const EncParams& p) { return p.ws + 8ull * kCounterWords; }

struct DecParams {
  uint64_t src;           // the first frame
  uint64_t frame_stride;  // bytes from one frame to the next
  uint64_t frame_cap;     // bytes readable from each frame's start
  uint64_t dst;           // dense: the output; paged: device array of u64 base pointers
  uint64_t ids;           // paged: int32 block ids
  uint64_t stride_bytes;  // paged
  uint64_t status;        // u32, zeroed before the launch
  uint64_t out_bytes;     // decoded bytes per frame
  uint32_t frames;
  uint32_t chunks;  // blocks per frame: ceil(out_bytes / 8192)
  uint32_t block_elems;
  uint32_t n_blocks;
  uint32_t segs_per_frame;
  uint32_t reserved;  // zero, as in EncParams
};
static_assert(sizeof(DecParams) == 88, "DecParams layout is shared with Go");

struct Layout {
  uint64_t table, codes, residuals, escapes;
  uint32_t chunks;
};

__device__ __forceinline__ uint64_t align16(uint64_t x) { return (x + 15) & ~uint64_t(15); }

__device__ __forceinline__ Layout bf16_layout(uint64_t n) {
  Layout l;
  l.chunks = (uint32_t)((n + kChunk - 1) >> kChunkLog2);
  l.table = align16(kHeaderSize + kCodebookLen);
  l.codes = align16(l.table + 4ull * l.chunks);
  l.residuals = align16(l.codes + (n + 1) / 2);
  l.escapes = align16(l.residuals + n);
  return l;
}

// ---- CRC-32C (Castagnoli, reflected 0x82F63B78) ------------------------------------------------------------
// crc32c_bit advances a CRC-32C register by one bit.
__device__ __forceinline__ uint32_t crc32c_bit(uint32_t x) { return (x >> 1) ^ (0x82F63B78u & (0u - (x & 1u))); }

// CrcTables are the slice-by-4 tables of CRC-32C (t[k][b]: byte b followed by k zero bytes), which a block
// builds in shared memory where it writes a header on the critical path (the streaming encoder's finishing).
struct CrcTables {
  uint32_t t[4][256];
};
__device__ __forceinline__ void build_crc_tables(CrcTables& c) {
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
    uint32_t x = i;
    for (int k = 0; k < 8; k++) x = crc32c_bit(x);
    c.t[0][i] = x;
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
    uint32_t x = c.t[0][i];
    for (int k = 1; k < 4; k++) c.t[k][i] = x = (x >> 8) ^ c.t[0][x & 0xFF];
  }
  __syncthreads();
}

// crc32c_words is the CRC-32C of the first k little-endian words of w: with tab (shared memory), a word per
// step; without, a bit per step, which takes about 3 µs (crc32c_words_warp is the fast way without a table).
// (A table in constant memory, read by one thread in a dependent chain, misses the constant cache at nearly
// every step.)
__device__ __forceinline__ uint32_t crc32c_words(const uint32_t* w, int k, const CrcTables* tab) {
  uint32_t crc = 0xFFFFFFFFu;
  for (int i = 0; i < k; i++) {
    crc ^= w[i];
    if (tab) {
      crc = tab->t[3][crc & 0xFF] ^ tab->t[2][(crc >> 8) & 0xFF] ^ tab->t[1][(crc >> 16) & 0xFF] ^ tab->t[0][crc >> 24];
    } else {
#pragma unroll
      for (int b = 0; b < 32; b++) crc = crc32c_bit(crc);
    }
  }
  return ~crc;
}

// crc32c_words_warp is crc32c_words computed by a whole warp, with no table: all 32 lanes call it with the same
// words. Advancing the CRC register over a word is linear over GF(2), so each lane computes one bit of the next
// register, the parity of the bits that feed it, and a ballot gathers the 32 bits: a word costs a short chain
// of four instructions, a header about 0.5 µs. One thread stepping a bit at a time takes about 3 µs, a third
// or more of a small input's encode or decode on the GPU.
__device__ __forceinline__ uint32_t crc32c_words_warp(const uint32_t* w, int k) {
  const uint32_t lane = threadIdx.x & 31;
  // Lane i's column: where a register holding only bit i ends up after 32 bit steps. Lane j's row: which bits
  // of the register feed bit j (bit i of row j is bit j of column i).
  uint32_t col = 1u << lane;
#pragma unroll
  for (int b = 0; b < 32; b++) col = crc32c_bit(col);
  uint32_t row = 0;
#pragma unroll
  for (uint32_t j = 0; j < 32; j++) {
    const uint32_t r = __ballot_sync(0xFFFFFFFFu, (col >> j) & 1u);
    if (lane == j) row = r;
  }
  uint32_t crc = 0xFFFFFFFFu;
  for (int i = 0; i < k; i++) crc = __ballot_sync(0xFFFFFFFFu, __popc((crc ^ w[i]) & row) & 1u);
  return ~crc;
}

// ---- header ------------------------------------------------------------------------------------------------
// store_header stores the 16 words of a header at frame.
__device__ __forceinline__ void store_header(uint8_t* frame, const uint32_t (&w)[16]) {
  uint4* o = reinterpret_cast<uint4*>(frame);
#pragma unroll
  for (int i = 0; i < 4; i++) o[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
}

// bf16_header_words fills words 0-14 of a bf16 frame header (coded, or raw when raw is set).
__device__ __forceinline__ void bf16_header_words(uint32_t (&w)[16], uint64_t n, uint64_t escapes, bool raw, uint64_t payload) {
  w[0] = kMagic;
  w[1] = kVersion | (kDTypeBF16 << 8) | ((raw ? kFlagRaw : 0u) << 16) | ((raw ? 0u : kCodeBits) << 24);
  w[2] = (uint32_t)n;
  w[3] = (uint32_t)(n >> 32);
  uint64_t e = raw ? 0 : escapes;
  w[4] = (uint32_t)e;
  w[5] = (uint32_t)(e >> 32);
  w[6] = raw ? 0u : (kChunkLog2 | (kResidualBits << 8) | (kCodebookLen << 16));
  w[7] = 0;
  w[8] = (uint32_t)payload;
  w[9] = (uint32_t)(payload >> 32);
  uint64_t codes = raw ? 0 : (n + 1) / 2;
  w[10] = (uint32_t)codes;
  w[11] = (uint32_t)(codes >> 32);
  uint64_t res = raw ? 2 * n : n;
  w[12] = (uint32_t)res;
  w[13] = (uint32_t)(res >> 32);
  w[14] = 0;
}

// write_header stores a bf16 frame header with its checksum, computed by the calling thread: from the
// slice-by-4 tables tab, or a bit per step (the rare host-decided raw frames of a few elements).
__device__ __noinline__ void write_header(uint8_t* frame, uint64_t n, uint64_t escapes, bool raw, uint64_t payload,
                                         const CrcTables* tab = nullptr) {
  uint32_t w[16];
  bf16_header_words(w, n, escapes, raw, payload);
  w[15] = crc32c_words(w, 15, tab);
  store_header(frame, w);
}

// write_header_warp is write_header for a whole warp, which computes the checksum together (crc32c_words_warp);
// lane 0 stores.
__device__ __noinline__ void write_header_warp(uint8_t* frame, uint64_t n, uint64_t escapes, bool raw, uint64_t payload) {
  uint32_t w[16];
  bf16_header_words(w, n, escapes, raw, payload);
  w[15] = crc32c_words_warp(w, 15);
  if ((threadIdx.x & 31) == 0) store_header(frame, w);
}

__device__ __forceinline__ uint64_t u64_at(const uint32_t* w, int i) { return w[i] | ((uint64_t)w[i + 1] << 32); }

// HeaderInfo is what the decode kernels need from a frame's header.
struct HeaderInfo {
  bool raw;
  uint64_t n, escapes;
  uint32_t codebook[4];
};

// check_header validates the 64 header bytes w against a destination of out_bytes and a frame of at most cap
// bytes; bad_crc says that the caller checked the checksum (crc32c_words_warp) and it did not match.
__device__ uint32_t check_header(const uint32_t* w, bool bad_crc, uint64_t out_bytes, uint64_t cap, HeaderInfo& h) {
  if (w[0] != kMagic) return kBadMagic;
  if ((w[1] & 0xFF) != kVersion) return kBadVersion;
  if (bad_crc) return kBadCRC;
  const uint32_t dtype = (w[1] >> 8) & 0xFF, flags = (w[1] >> 16) & 0xFF, code_bits = w[1] >> 24;
  const uint64_t n = u64_at(w, 2), esc = u64_at(w, 4), payload = u64_at(w, 8);
  const uint64_t codes_len = u64_at(w, 10), res_len = u64_at(w, 12);
  if ((flags & ~kFlagRaw) != 0 || w[7] != 0 || w[14] != 0) return kCorrupt;
  if (n > 0xFFFFFFFFull) return kCorrupt;
  h.n = n;
  h.escapes = esc;
  if (flags & kFlagRaw) {
    h.raw = true;
    // Element sizes of the v1 dtype table, index = dtype id.
    const uint32_t sizes = dtype;  // decoded below
    uint32_t size = 0;
    switch (sizes) {
      case 1: case 2: case 8: size = 2; break;
      case 3: case 9: size = 4; break;
      case 4: case 5: case 6: case 7: case 12: size = 1; break;
      case 10: case 11: size = 8; break;
      default: return kUnsupported;
    }
    if (code_bits != 0 || esc != 0 || w[6] != 0 || codes_len != 0) return kCorrupt;
    if (res_len != n * size || payload != res_len) return kCorrupt;
    if (res_len != out_bytes) return kSizeMismatch;
    if (kHeaderSize + payload > cap) return kTruncated;
    return kOK;
  }
  h.raw = false;
  if (dtype != kDTypeBF16 || code_bits != kCodeBits || w[6] != (kChunkLog2 | (kResidualBits << 8) | (kCodebookLen << 16)))
    return kUnsupported;
  if (2 * n != out_bytes) return kSizeMismatch;
  if (esc > n || codes_len != (n + 1) / 2 || res_len != n) return kCorrupt;
  const Layout l = bf16_layout(n);
  if (payload != l.escapes + kEscapeSize * esc - kHeaderSize) return kCorrupt;
  if (kHeaderSize + payload > cap) return kTruncated;
  return kOK;
}

// ---- address maps: where logical element e of frame f lives ---------------------------------------------------
struct DenseMap {
  static constexpr bool kDense = true;
  uint64_t base;
  __device__ __forceinline__ uint64_t addr(uint32_t, uint32_t e) const { return base + 2ull * e; }
};

// PagedMap walks a request's blocks in a paged KV cache. A frame's logical tensor is its segments in order;
// segment s of frame f is global segment g = f*segs_per_frame + s, which is block ids[g % n_blocks] of the
// K or V cache bases[g / n_blocks] (bases: K0, V0, K1, V1, ...).
struct PagedMap {
  static constexpr bool kDense = false;
  const uint64_t* bases;
  const int32_t* ids;
  uint64_t stride_bytes;
  uint32_t block_elems, n_blocks, segs_per_frame;
  __device__ __forceinline__ uint64_t addr(uint32_t f, uint32_t e) const {
    const uint32_t s = e / block_elems, off = e - s * block_elems;
    const uint32_t g = f * segs_per_frame + s;
    const uint32_t kv = g / n_blocks, b = g - kv * n_blocks;
    return __ldg(bases + kv) + (uint64_t)(int64_t)__ldg(ids + b) * stride_bytes + 2ull * off;
  }
};

// Where a tile's elements [e0, e0+len) of frame f start when they are contiguous in memory (0 otherwise).
__device__ __forceinline__ uint64_t tile_base(const DenseMap& m, uint32_t f, uint32_t e0, uint32_t) { return m.addr(f, e0); }
__device__ __forceinline__ uint64_t tile_base(const PagedMap& m, uint32_t f, uint32_t e0, uint32_t len) {
  return e0 / m.block_elems == (e0 + len - 1) / m.block_elems ? m.addr(f, e0) : 0;
}

}  // namespace sz
