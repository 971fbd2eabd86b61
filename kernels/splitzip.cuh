// SplitZip format-v1 GPU codec: bf16 tensors, 4-bit exponent codes, 4,096-element chunks.
//
// The frame layout is codec/FORMAT.md's; this file mirrors the parts a GPU needs. Offsets of the dense
// sections depend only on the element count n, so every block writes its chunk's codes and residuals
// without waiting for anyone. Escapes are rare. Two families of kernels place them:
//   - tile kernels ("t<threads>c<chunks>": the encoder used below 64 MiB and the default decoder, t256c1, which
//     patches each unit's escapes from the frame's chunk table): a block counts its chunks' escapes,
//     learns how many came before by a decoupled look-back over the per-tile counts, and writes them; the
//     block of a frame's last tile writes the header (CRC-32C included) and the frame length, a raw header
//     when the coded frame would not fit (the raw fallback kernel then copies the payload);
//   - streaming kernels ("s<threads>u<units>", the default encoder; at the end of this file): the encoder's
//     warps park a chunk's escapes in the workspace and extra blocks at the end of its grid place them, so
//     nothing waits in the data path; the decoder writes them over its dense stores.
// The encoders' workspace is zero between calls but for its counters (ws_counters): the caller zeroes it once;
// the streaming encoder's finishing and header blocks zero what they read, and after a tile encoder the raw
// fallback kernel, which runs after every encoder, zeroes the words it used.
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

// Tuning experiments the bench can switch on (never set in production).
constexpr uint32_t kTuneNoLookback = 1;  // skip the look-back: wrong escape offsets, measures the data path alone
constexpr uint32_t kTunePlainLoads = 2;  // default-cached loads and stores instead of streaming (.cs) ones
constexpr uint32_t kTuneStreamStores = 4;  // encode: streaming stores for codes and residuals
constexpr uint32_t kTuneNoFinish = 16;  // streaming encoder: no finishing blocks (timing only)
constexpr uint32_t kTuneNoPlace = 64;  // streaming encoder: read the parked escapes but store none (timing only)
constexpr uint32_t kTuneNoHeader = 128;  // streaming encoder: the header warps wait for the total but write nothing (timing only)

// ---- programmatic dependent launch ---------------------------------------------------------------------------
// Built for sm_90 (splitzip_sm90.ptx), an encode kernel lets the kernel after it (the raw-fallback check) launch
// as soon as all its blocks run, and that waits at griddepcontrol.wait for its writes: its launch latency
// (~6 µs on the H100 VM) hides behind the encoder's tail instead of following it (the Go side launches it with
// LaunchProgrammaticStreamSerialization). A kernel that was not launched so passes griddepcontrol.wait at once.
// Built for sm_80, both are no-ops.
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

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
  uint32_t tune;            // tuning experiments (bench only): kTune* bits; 0 in production
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
// counts the streaming encoder's frame decisions (frames decided in the low half, raw ones in the high half),
// word kSeenWord + b is the count block b of the raw fallback kernel saw last. The body after them is zero
// between calls. Blocks of the raw fallback kernel after the streaming encoder: exactly kRawBlocks.
constexpr uint32_t kRawBlocks = 132;
constexpr uint32_t kSeenWord = 16;  // the seen words start on another 128-byte line than the one polled
constexpr uint32_t kCounterWords = kSeenWord + kRawBlocks;
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
  uint32_t tune;  // kTune* bits; 0 in production
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
// CrcTables are the slice-by-4 tables of CRC-32C (t[k][b]: byte b followed by k zero bytes), which a block
// builds in shared memory where it writes a header on the critical path (the streaming encoder's finishing).
struct CrcTables {
  uint32_t t[4][256];
};
__device__ __forceinline__ void build_crc_tables(CrcTables& c) {
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
    uint32_t x = i;
    for (int k = 0; k < 8; k++) x = (x >> 1) ^ (0x82F63B78u & (0u - (x & 1u)));
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
// step; without, a bit per step. (A table in constant memory, read by one thread in a dependent chain, misses
// the constant cache at nearly every step.)
__device__ __forceinline__ uint32_t crc32c_words(const uint32_t* w, int k, const CrcTables* tab) {
  uint32_t crc = 0xFFFFFFFFu;
  for (int i = 0; i < k; i++) {
    crc ^= w[i];
    if (tab) {
      crc = tab->t[3][crc & 0xFF] ^ tab->t[2][(crc >> 8) & 0xFF] ^ tab->t[1][(crc >> 16) & 0xFF] ^ tab->t[0][crc >> 24];
    } else {
#pragma unroll
      for (int b = 0; b < 32; b++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
  }
  return ~crc;
}

// ---- header ------------------------------------------------------------------------------------------------
// write_header stores a bf16 frame header (coded, or raw when raw is set) with its checksum.
__device__ __noinline__ void write_header(uint8_t* frame, uint64_t n, uint64_t escapes, bool raw, uint64_t payload,
                                         const CrcTables* tab = nullptr) {
  uint32_t w[16];
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
  w[15] = crc32c_words(w, 15, tab);
  uint4* o = reinterpret_cast<uint4*>(frame);
#pragma unroll
  for (int i = 0; i < 4; i++) o[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
}

__device__ __forceinline__ uint64_t u64_at(const uint32_t* w, int i) { return w[i] | ((uint64_t)w[i + 1] << 32); }

// HeaderInfo is what the decode kernels need from a frame's header.
struct HeaderInfo {
  bool raw;
  uint64_t n, escapes;
  uint32_t codebook[4];
};

// check_header validates the 64 header bytes w (and, when crc is set, the checksum) against a destination of
// out_bytes and a frame of at most cap bytes.
__device__ uint32_t check_header(const uint32_t* w, bool crc_check, uint64_t out_bytes, uint64_t cap, HeaderInfo& h) {
  if (w[0] != kMagic) return kBadMagic;
  if ((w[1] & 0xFF) != kVersion) return kBadVersion;
  if (crc_check && crc32c_words(w, 15, nullptr) != w[15]) return kBadCRC;
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
  uint64_t base;
  __device__ __forceinline__ uint64_t addr(uint32_t, uint32_t e) const { return base + 2ull * e; }
};

// PagedMap walks a request's blocks in a paged KV cache. A frame's logical tensor is its segments in order;
// segment s of frame f is global segment g = f*segs_per_frame + s, which is block ids[g % n_blocks] of the
// K or V cache bases[g / n_blocks] (bases: K0, V0, K1, V1, ...).
struct PagedMap {
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

// ---- memory access helpers ----------------------------------------------------------------------------------
__device__ __forceinline__ uint4 load16(uint64_t a) { return __ldcs(reinterpret_cast<const uint4*>(a)); }
__device__ __forceinline__ void store16(uint64_t a, uint4 v) { __stcs(reinterpret_cast<uint4*>(a), v); }
// Look-back state words carry their flag and value in one 64-bit word, and the streaming encoder's counts,
// totals and parked escapes say themselves whether they were written (32-bit and 64-bit overloads); none
// orders anything else, so relaxed accesses suffice: acquire/release cost a fence (and an L1 invalidation) per
// access, which under the encoder's write stream took microseconds.
__device__ __forceinline__ uint64_t ld_relaxed_gpu(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_relaxed_gpu(uint64_t* p, uint64_t v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint32_t ld_relaxed_gpu(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_relaxed_gpu(uint32_t* p, uint32_t v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// cp.async of 16 bytes from global to shared memory (bypassing L1), and the wait for a thread's own copies.
__device__ __forceinline__ void cp_async16(void* smem, uint64_t gaddr) {
  const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gaddr) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// ---- decoupled look-back -------------------------------------------------------------------------------------
constexpr uint64_t kFlagAggregate = 1ull << 32;
constexpr uint64_t kFlagPrefix = 2ull << 32;

// lookback publishes chunk c's escape count agg and returns the escapes of chunks 0..c-1 of its frame. Called by
// one whole warp; state is the frame's per-chunk words, zeroed before the launch. Blocks are dispatched in index
// order, so every predecessor has run far enough to publish its count.
__device__ uint32_t lookback_warp(uint64_t* state, uint32_t c, uint32_t agg) {
  const int lane = threadIdx.x & 31;
  if (c == 0) {
    if (lane == 0) st_relaxed_gpu(state, kFlagPrefix | agg);
    return 0;
  }
  if (lane == 0) st_relaxed_gpu(state + c, kFlagAggregate | agg);
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

// ---- encode --------------------------------------------------------------------------------------------------
// The residual byte of a bf16 value: sign in bit 7, mantissa in bits 0-6.
__device__ __forceinline__ uint32_t residual(uint32_t h) { return ((h >> 8) & 0x80) | (h & 0x7F); }

// encode_unit codes up to 8 elements (k valid) held in v: returns the code word (4 bits each, escapes 0),
// the residual bytes, and a mask of escaped elements.
__device__ __forceinline__ void encode_unit(const uint4& v, const uint8_t* code_of, uint32_t& codes, uint2& res,
                                            uint32_t& esc) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  codes = 0;
  esc = 0;
  uint32_t r[2] = {0, 0};
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const uint32_t h = (k & 1) ? (w[k >> 1] >> 16) : (w[k >> 1] & 0xFFFF);
    const uint32_t c = code_of[(h >> 7) & 0xFF];
    const bool e = c > 15;
    esc |= (uint32_t)e << k;
    codes |= (e ? 0u : c) << (4 * k);
    r[k >> 2] |= residual(h) << (8 * (k & 3));
  }
  res = make_uint2(r[0], r[1]);
}

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

// enc_shared is an encode block's shared memory.
template <int THREADS, int CPT>
struct EncShared {
  uint8_t code_of[256];
  uint64_t warp_tot[EncTile<THREADS, CPT>::NP][THREADS / 32];
  uint32_t excl, next;  // next: unused (kept so the PTX stays as measured)
};

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
      v[j] = (p.tune & kTunePlainLoads) ? *reinterpret_cast<const uint4*>(map.addr(f, t0 + ue)) : load16(map.addr(f, t0 + ue));
    } else {
      uint32_t h[8];
#pragma unroll
      for (uint32_t k = 0; k < 8; k++)
        h[k] = ue + k < tile_len ? *reinterpret_cast<const uint16_t*>(map.addr(f, t0 + ue + k)) : 0u;
      v[j] = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
    }
  }
}

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
// would not fit, which tells the raw fallback kernel to copy its payload.
__device__ __forceinline__ void finish_header(const EncParams& p, uint8_t* frame, uint32_t f, uint64_t n, uint64_t E,
                                              const CrcTables* tab) {
  const uint64_t end = bf16_layout(n).escapes + kEscapeSize * E;
  const bool raw = frame_is_raw(n, E);
  write_header(frame, n, E, raw, raw ? 2 * n : end - kHeaderSize, tab);
  reinterpret_cast<uint64_t*>(p.sizes)[f] = raw ? kHeaderSize + 2 * n : end;
}

// finish_frame: the frame's last tile knows the escape total E: header, codebook, gap bytes, length.
__device__ __forceinline__ void finish_frame(const EncParams& p, uint8_t* frame, uint32_t f, uint64_t n, uint64_t E) {
  if (!frame_is_raw(n, E)) put_frame_constants(p, frame, n, 0, 1);
  finish_header(p, frame, f, n, E, nullptr);
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
      if (p.tune & kTuneStreamStores) {
        __stcs(reinterpret_cast<uint32_t*>(frame + L.codes + (t0 + ue) / 2), codes);
        __stcs(reinterpret_cast<uint2*>(frame + L.residuals + t0 + ue), res);
      } else {
        *reinterpret_cast<uint32_t*>(frame + L.codes + (t0 + ue) / 2) = codes;
        *reinterpret_cast<uint2*>(frame + L.residuals + t0 + ue) = res;
      }
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
    const uint32_t excl = (p.tune & kTuneNoLookback) ? 0u : lookback_warp(state, tile, agg);
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
      if (tile == tiles - 1) finish_frame(p, frame, f, n, (uint64_t)excl + agg);
    }
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
// groups of 32 chunks, at most chunks + 4 words per frame), which the bench's runs without its finishing
// blocks ("+f") rely on.
__device__ __forceinline__ uint64_t ws_control_words(const EncParams& p) { return 1 + (uint64_t)p.frames * (p.chunks + 4); }

// raw_chunks runs after every encoder and strides over the chunks of the frames that fall back to raw. After a
// tile encoder it waits for it (griddepcontrol.wait), zeroes the workspace's control words, which the next call
// expects zero, and reads each frame's header flag. After the streaming encoder, whose finishing and header
// warps leave the workspace zero themselves, thread 0 of each block polls the decision count (ws_counters) until
// every frame of this call is decided, which happens as soon as the header warps know the escape totals; only
// when a frame went raw does the kernel wait for the encoder, whose unfenced stores the raw copy overwrites.
// So in the common case no block waits for the encoder's completion: the wait and the header read after it cost
// the 256 MiB encode ~2 µs (1,523 -> 1,529 GB/s without the read, 1,540-1,544 without the kernel; BENCH.md).
template <int THREADS, class Map>
__device__ __forceinline__ void raw_chunks(const EncParams& p, const Map& map) {
  if (p.raw_mode == kRawAfterStream) {
    __shared__ uint32_t raw_frames;
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
      raw_frames = (uint32_t)((d - seen) >> 32);  // nonzero also after 2^32 decisions (a borrow): then it checks
    }
    __syncthreads();
    if (raw_frames == 0) return;
  }
  wait_prerequisites();  // the encoder's headers and stores; its look-back words and counts are no longer read
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
}


// ---- decode --------------------------------------------------------------------------------------------------
// Two residual bytes (in the low 16 bits of r) spread into two bf16 values with zero exponent fields.
__device__ __forceinline__ uint32_t spread2(uint32_t r) {
  const uint32_t x = (r & 0xFF) | ((r & 0xFF00) << 8);
  return (x & 0x007F007Fu) | ((x & 0x00800080u) << 8);
}

// escape_at reads escape k's chunk-local position and exponent.
__device__ __forceinline__ uint32_t escape_pos(const uint8_t* esc, uint32_t k) {
  return esc[3 * k] | ((uint32_t)esc[3 * k + 1] << 8);
}

// raw_copy copies blen bytes of a raw frame's payload from byte b0 on (a block's share: 16 bytes per thread
// and unit row) to frame f's destination.
// code_pairs fills pairs[i], for i = i0, i0 + step, … < 256, with code byte i's two elements' exponent fields
// in place, from the codebook in hdr[16..19].
__device__ __forceinline__ void code_pairs(const uint32_t* hdr, uint32_t* pairs, uint32_t i0, uint32_t step) {
  const uint8_t* cb = reinterpret_cast<const uint8_t*>(hdr + 16);
  for (uint32_t i = i0; i < 256; i += step) pairs[i] = ((uint32_t)cb[i & 0xF] << 7) | ((uint32_t)cb[i >> 4] << 23);
}

// check_tile validates a tile's header hdr and its CPT + 1 chunk table entries tab (starting at chunk c0) for
// one thread, reports an error to the status word (header errors only from a frame's first tile, which checks
// the CRC too; table errors from any) and returns the tile's status. A coded tile's table entries past the
// frame's last chunk become the escape total.
template <int CPT>
__device__ uint32_t check_tile(const DecParams& p, const Layout& L, const uint32_t* hdr, uint32_t* tab, uint32_t c0) {
  uint32_t* status = reinterpret_cast<uint32_t*>(p.status);
  HeaderInfo h;
  uint32_t st = p.frame_cap < kHeaderSize ? (uint32_t)kTruncated : check_header(hdr, c0 == 0, p.out_bytes, p.frame_cap, h);
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

// patch_unit applies the escapes of entries [lo, hi) of the escape stream esc (one chunk's, sorted by position)
// that fall in the unit at chunk-local element uc.
__device__ __forceinline__ void patch_unit(uint4& o, const uint8_t* esc, uint32_t lo, uint32_t hi, uint32_t uc) {
  uint32_t a = lo, b = hi;  // the first escape at or after the unit
  while (a < b) {
    const uint32_t m = (a + b) / 2;
    if (escape_pos(esc, m) < uc) a = m + 1; else b = m;
  }
  for (; a < hi; a++) {
    const uint32_t pos = escape_pos(esc, a);
    if (pos >= uc + kUnit) break;
    set_exponent(o, pos - uc, esc[3 * a + 2]);
  }
}

// store_unit writes decoded unit o at element e0 + ue of frame f's destination: 16 bytes when the unit is
// whole (len elements from e0), element by element at a ragged end; base: the address of e0 when contiguous,
// else 0.
template <class Map>
__device__ __forceinline__ void store_unit(const Map& map, uint64_t base, uint32_t f, uint32_t e0, uint32_t ue, uint32_t len,
                                           const uint4& o, bool plain = false) {
  if (ue + kUnit <= len) {
    const uint64_t a = base ? base + 2ull * ue : map.addr(f, e0 + ue);
    if (plain) *reinterpret_cast<uint4*>(a) = o; else store16(a, o);
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
  uint32_t hdr[20];  // header and codebook
  uint32_t pairs[256];
  uint32_t tab[CPT + 1];  // escapes before each chunk of the tile, and after its last
  uint32_t status;
};

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
      if (p.tune & kTunePlainLoads) {
        codes[j] = *reinterpret_cast<const uint32_t*>(frame + L.codes + (t0 + ue) / 2);
        res[j] = *reinterpret_cast<const uint2*>(frame + L.residuals + t0 + ue);
      } else {
        codes[j] = __ldcs(reinterpret_cast<const uint32_t*>(frame + L.codes + (t0 + ue) / 2));
        res[j] = __ldcs(reinterpret_cast<const uint2*>(frame + L.residuals + t0 + ue));
      }
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
  }
  __syncthreads();
  if (threadIdx.x == 0) sh.status = check_tile<CPT>(p, L, sh.hdr, sh.tab, c0);
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
  const uint8_t* esc = frame + L.escapes;
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    if (ue >= tile_len) continue;
    const bool full = ue + kUnit <= tile_len;
    uint32_t cw = codes[j];
    uint2 rw = res[j];
    if (!full) ragged_unit(frame, L, t0 + ue, tile_len - ue, cw, rw);
    uint4 o = decode_unit(cw, rw, sh.pairs);
    const int kc = (j * THREADS) / kUnitsPerChunk;  // chunk of this unit row within the tile
    if (sh.tab[kc + 1] > sh.tab[kc])
      patch_unit(o, esc, sh.tab[kc], sh.tab[kc + 1], kUnit * ((threadIdx.x + j * THREADS) % kUnitsPerChunk));
    store_unit(map, 0, f, t0, ue, tile_len, o, p.tune & kTunePlainLoads);
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

// ---- baseline --------------------------------------------------------------------------------------------------
// copy16: a plain 16-byte vectorized copy, the bench's SM-side copy ceiling (n16 16-byte words).
__device__ __forceinline__ void copy16(const uint4* __restrict__ src, uint4* __restrict__ dst, uint64_t n16) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n16; i += (uint64_t)gridDim.x * blockDim.x)
    dst[i] = src[i];
}

}  // namespace sz

// ==== pipelined persistent kernels ("t<threads>c<chunks per tile>s<stages>") ===============================
// A block loops over tiles and keeps S stages of input in shared memory: cp.async copies for the next S-1
// tiles are in flight while it codes the current one, so the loads never wait for the block's compute, scan
// or look-back, and no registers hold data in flight.
namespace sz {

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
// cp_async16 copies 16 bytes (of which src_bytes are read; the rest is zero-filled) to shared memory.
__device__ __forceinline__ void cp_async16(void* dst, uint64_t src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, uint64_t src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Where a tile's elements [e0, e0+len) of frame f start when they are contiguous in memory (0 otherwise).
__device__ __forceinline__ uint64_t tile_base(const DenseMap& m, uint32_t f, uint32_t e0, uint32_t) { return m.addr(f, e0); }
__device__ __forceinline__ uint64_t tile_base(const PagedMap& m, uint32_t f, uint32_t e0, uint32_t len) {
  return e0 / m.block_elems == (e0 + len - 1) / m.block_elems ? m.addr(f, e0) : 0;
}

template <int THREADS, int CPT, int S>
struct PipeEnc {
  static constexpr int UPT = kUnitsPerChunk * CPT / THREADS;
  static constexpr int W = THREADS / 32;
  static_assert(UPT >= 1 && kUnitsPerChunk % THREADS == 0 && S >= 2, "pipelined encode shape");
  uint4 stage[S][CPT * kUnitsPerChunk];
  uint32_t cnt[2][UPT][W];  // escapes per (unit row, warp), by tile parity
  uint32_t ticket[S + 1];
  uint32_t excl[2];
  uint8_t code_of[256];
};

// pipe_enc_issue starts the copies of tile t (global tile index; none when t >= total) into stage.
template <int THREADS, int CPT, class Map>
__device__ __forceinline__ void pipe_enc_issue(const EncParams& p, const Map& map, uint32_t t, uint32_t total,
                                               uint32_t tiles, uint4* stage) {
  constexpr int UPT = kUnitsPerChunk * CPT / THREADS;
  if (t >= total) return;
  const uint32_t f = t / tiles, tile = t - f * tiles;
  const uint32_t t0 = tile * CPT * kChunk;
  const uint32_t tile_len = (uint32_t)min((uint64_t)CPT * kChunk, (uint64_t)p.n - t0);
  const uint64_t base = tile_base(map, f, t0, tile_len);
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t u = threadIdx.x + j * THREADS, ue = kUnit * u;
    if (ue < tile_len) {
      const uint32_t bytes = ue + kUnit <= tile_len ? 16u : 2u * (tile_len - ue);
      cp_async16(stage + u, base ? base + 2ull * ue : map.addr(f, t0 + ue), bytes);
    }
  }
}

template <int THREADS, int CPT, int S, class Map>
__device__ __forceinline__ void encode_pipe(const EncParams& p, const Map& map) {
  using Sh = PipeEnc<THREADS, CPT, S>;
  constexpr int UPT = Sh::UPT, W = Sh::W;
  __shared__ Sh sh;
  launch_dependents();
  const uint32_t tiles = (p.chunks + CPT - 1) / CPT;  // per frame
  const uint32_t total = p.frames * tiles;
  uint32_t* ctr = reinterpret_cast<uint32_t*>(ws_body(p));  // the workspace body's first word
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint64_t n = p.n;
  const Layout L = bf16_layout(n);
  const uint64_t max_len = kHeaderSize + 2 * n;

  if (threadIdx.x == 0)
    for (int s = 0; s < S; s++) sh.ticket[s] = atomicAdd(ctr, 1u);
  for (uint32_t x = threadIdx.x; x < 256; x += THREADS) {
    uint32_t code = 0x10;
#pragma unroll
    for (int k = kCodebookLen - 1; k >= 0; k--)
      if (((p.codebook[k >> 2] >> (8 * (k & 3))) & 0xFF) == x) code = k;
    sh.code_of[x] = (uint8_t)code;
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < S - 1; s++) {
    pipe_enc_issue<THREADS, CPT>(p, map, sh.ticket[s], total, tiles, sh.stage[s]);
    cp_async_commit();
  }

  uint32_t prev = ~0u;  // the previous tile, whose escapes are written once its look-back is done
  uint32_t pm[UPT];     // its escape masks
#pragma unroll
  for (int j = 0; j < UPT; j++) pm[j] = 0;
  for (uint32_t k = 0;; k++) {
    cp_async_wait<S - 2>();
    __syncthreads();  // tile k's stage is in; the previous tile's counts and prefix are visible

    if (prev != ~0u) {
      uint32_t any = 0;
#pragma unroll
      for (int j = 0; j < UPT; j++) any |= pm[j];
      if (__any_sync(0xFFFFFFFFu, any)) {
        const int pp = (k - 1) & 1;
        const uint32_t f = prev / tiles, tile = prev - f * tiles;
        const uint32_t t0 = tile * CPT * kChunk;
        uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
        uint32_t base = sh.excl[pp];
#pragma unroll
        for (int j = 0; j < UPT; j++) {
          const uint32_t m = pm[j];
          uint32_t before_warp = 0;
#pragma unroll
          for (int w = 0; w < W; w++) before_warp += w < warp ? sh.cnt[pp][j][w] : 0u;
          if (__any_sync(0xFFFFFFFFu, m)) {
            const uint32_t c = __popc(m);
            uint32_t incl = c;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
              const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, incl, o);
              if (lane >= o) incl += y;
            }
            uint32_t idx = base + before_warp + incl - c;
            const uint32_t u = threadIdx.x + j * THREADS;
            const uint32_t pos0 = kUnit * (u % kUnitsPerChunk);
            uint32_t mm = m;
            while (mm) {
              const int b = __ffs(mm) - 1;
              mm &= mm - 1;
              const uint32_t pos = pos0 + b;
              const uint32_t w = *reinterpret_cast<const uint16_t*>(map.addr(f, t0 + kUnit * u + b));
              const uint64_t off = L.escapes + kEscapeSize * (uint64_t)idx;
              idx++;
              if (off + 2 < max_len) {
                frame[off] = (uint8_t)pos;
                frame[off + 1] = (uint8_t)(pos >> 8);
                frame[off + 2] = (uint8_t)(w >> 7);
              }
            }
          }
          uint32_t row = 0;
#pragma unroll
          for (int w = 0; w < W; w++) row += sh.cnt[pp][j][w];
          base += row;
        }
      }
    }

    const uint32_t t = sh.ticket[k % (S + 1)];
    pipe_enc_issue<THREADS, CPT>(p, map, sh.ticket[(k + S - 1) % (S + 1)], total, tiles, sh.stage[(k + S - 1) % S]);
    cp_async_commit();
    if (t >= total) break;
    uint32_t claim = 0;
    if (threadIdx.x == 0) claim = atomicAdd(ctr, 1u);

    const uint32_t f = t / tiles, tile = t - f * tiles;
    const uint32_t c0 = tile * CPT, t0 = c0 * kChunk;
    const uint32_t tile_len = (uint32_t)min((uint64_t)CPT * kChunk, n - t0);
    uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
    const uint4* st = sh.stage[k % S];
    const int par = k & 1;
#pragma unroll
    for (int j = 0; j < UPT; j++) {
      const uint32_t u = threadIdx.x + j * THREADS, ue = kUnit * u;
      uint32_t codes, e;
      uint2 res;
      encode_unit4(st[u], sh.code_of, codes, res, e);
      if (ue + kUnit <= tile_len) {
        *reinterpret_cast<uint32_t*>(frame + L.codes + (t0 + ue) / 2) = codes;
        *reinterpret_cast<uint2*>(frame + L.residuals + t0 + ue) = res;
      } else if (ue < tile_len) {
        const uint32_t kk = tile_len - ue;  // 1..7 elements
        e &= (1u << kk) - 1;
        codes &= (1u << (4 * kk)) - 1;
        for (uint32_t b = 0; b < (kk + 1) / 2; b++) frame[L.codes + (t0 + ue) / 2 + b] = (uint8_t)(codes >> (8 * b));
        for (uint32_t b = 0; b < kk; b++) frame[L.residuals + t0 + ue + b] = (uint8_t)((b < 4 ? res.x : res.y) >> (8 * (b & 3)));
      } else {
        e = 0;
      }
      pm[j] = e;
      const uint32_t wc = __reduce_add_sync(0xFFFFFFFFu, (uint32_t)__popc(e));
      if (lane == 0) sh.cnt[par][j][warp] = wc;
    }
    prev = t;
    if (threadIdx.x == 0) sh.ticket[(k + S) % (S + 1)] = claim;
    __syncthreads();  // the tile's counts are visible

    if (warp == 0) {
      uint32_t a = 0;
      for (int i = lane; i < UPT * W; i += 32) a += (&sh.cnt[par][0][0])[i];
      a = __reduce_add_sync(0xFFFFFFFFu, a);
      uint64_t* state = reinterpret_cast<uint64_t*>(ws_body(p)) + 1 + (uint64_t)f * tiles;
      const uint32_t excl = (p.tune & kTuneNoLookback) ? 0u : lookback_warp(state, tile, a);
      if (lane == 0) {
        sh.excl[par] = excl;
        uint32_t run = excl;
#pragma unroll
        for (int j = 0; j < UPT; j++) {
          if ((j * THREADS) % kUnitsPerChunk == 0) {
            const uint32_t c = c0 + (j * THREADS) / kUnitsPerChunk;
            if (c < p.chunks) *reinterpret_cast<uint32_t*>(frame + L.table + 4ull * c) = run;
          }
#pragma unroll
          for (int w = 0; w < W; w++) run += sh.cnt[par][j][w];
        }
        if (tile == tiles - 1) finish_frame(p, frame, f, n, (uint64_t)excl + a);
      }
    }
  }
  cp_async_wait<0>();
}

// ---- pipelined decode ----------------------------------------------------------------------------------------
constexpr int kMaxTileEscapes = 512;  // escapes of a tile kept in shared memory; more: searched in the frame

template <int THREADS, int CPT, int S>
struct PipeDec {
  static constexpr int UPT = kUnitsPerChunk * CPT / THREADS;
  static_assert(UPT >= 1 && kUnitsPerChunk % THREADS == 0 && S >= 2 && CPT <= 3, "pipelined decode shape");
  struct __align__(16) Stage {
    uint32_t hdr[20];  // header and codebook
    uint32_t tab[4];   // escapes before each chunk of the tile, and after its last
    uint8_t codes[CPT * kChunk / 2];
    uint8_t res[CPT * kChunk];
  };
  Stage stage[S];
  uint32_t pairs[256];
  uint32_t esc[kMaxTileEscapes];  // (tile-local element << 8) | exponent, ascending
  uint32_t status, nesc;
};

template <int THREADS, int CPT, int S>
__device__ __forceinline__ void pipe_dec_issue(const DecParams& p, uint32_t t, uint32_t total, uint32_t tiles,
                                               typename PipeDec<THREADS, CPT, S>::Stage& st) {
  if (t >= total) return;
  const uint32_t f = t / tiles, c0 = (t - f * tiles) * CPT;
  const uint64_t frame = p.src + (uint64_t)f * p.frame_stride;
  const uint64_t cap = p.frame_cap;
  const uint64_t nx = p.out_bytes / 2;
  const Layout L = bf16_layout(nx);
  const bool spec = (p.out_bytes & 1) == 0 && L.escapes <= cap && c0 < L.chunks;
  const uint32_t t0 = c0 * kChunk;
  const uint32_t tile_len = spec ? (uint32_t)min((uint64_t)CPT * kChunk, nx - t0) : 0;
  const uint32_t i = threadIdx.x;
  if (i < 5) {
    // The header and codebook, never past cap (zero-filled there).
    const uint64_t o = 16ull * i;
    const uint32_t b = (uint32_t)(cap > o ? min((uint64_t)16, cap - o) : 0);
    cp_async16(&st.hdr[4 * i], b ? frame + o : frame, b);
  }
  if (i >= 32 && i < 32 + CPT + 1) {
    const uint32_t c = c0 + i - 32;
    if (spec && c < L.chunks) cp_async4(&st.tab[i - 32], frame + L.table + 4ull * c);
  }
  const uint32_t cbytes = (tile_len + 1) / 2;
  for (uint32_t q = i; q < CPT * kChunk / 32; q += THREADS) {
    const uint32_t o = 16 * q;
    if (o < cbytes) cp_async16(st.codes + o, frame + L.codes + t0 / 2 + o, min(16u, cbytes - o));
  }
  for (uint32_t q = i; q < CPT * kChunk / 16; q += THREADS) {
    const uint32_t o = 16 * q;
    if (o < tile_len) cp_async16(st.res + o, frame + L.residuals + t0 + o, min(16u, tile_len - o));
  }
}

template <int THREADS, int CPT, int S, class Map>
__device__ __forceinline__ void decode_pipe(const DecParams& p, const Map& map) {
  using Sh = PipeDec<THREADS, CPT, S>;
  constexpr int UPT = Sh::UPT;
  __shared__ Sh sh;
  const uint32_t tiles = (p.chunks + CPT - 1) / CPT;
  const uint32_t total = p.frames * tiles;
  const uint64_t nx = p.out_bytes / 2;
  const Layout L = bf16_layout(nx);
#pragma unroll
  for (int s = 0; s < S - 1; s++) {
    pipe_dec_issue<THREADS, CPT, S>(p, blockIdx.x + s * gridDim.x, total, tiles, sh.stage[s]);
    cp_async_commit();
  }
  for (uint32_t k = 0;; k++) {
    const uint32_t t = blockIdx.x + k * gridDim.x;
    if (t >= total) break;
    cp_async_wait<S - 2>();
    __syncthreads();  // tile k's stage is in; the previous tile is done with the shared state
    pipe_dec_issue<THREADS, CPT, S>(p, t + (S - 1) * gridDim.x, total, tiles, sh.stage[(k + S - 1) % S]);
    cp_async_commit();
    typename Sh::Stage& st = sh.stage[k % S];
    const uint32_t f = t / tiles, tile = t - f * tiles;
    const uint32_t c0 = tile * CPT;
    const uint8_t* frame = reinterpret_cast<const uint8_t*>(p.src + (uint64_t)f * p.frame_stride);
    const bool spec = (p.out_bytes & 1) == 0 && L.escapes <= p.frame_cap && c0 < L.chunks;
    const uint32_t t0 = c0 * kChunk;
    const uint32_t tile_len = spec ? (uint32_t)min((uint64_t)CPT * kChunk, nx - t0) : 0;
    if (threadIdx.x == 0) sh.status = check_tile<CPT>(p, L, st.hdr, st.tab, c0);
    code_pairs(st.hdr, sh.pairs, threadIdx.x, THREADS);
    __syncthreads();
    if (sh.status != kOK) continue;

    if ((st.hdr[1] >> 16) & kFlagRaw) {
      const uint64_t b0 = (uint64_t)c0 * (2 * kChunk);
      const uint64_t len = p.out_bytes;
      if (b0 >= len) continue;
      const uint64_t blen = min((uint64_t)CPT * (2 * kChunk), len - b0);
#pragma unroll
      for (int j = 0; j < UPT; j++) {
        const uint64_t ub = 16ull * (threadIdx.x + j * THREADS);
        if (ub + 16 <= blen) {
          store16(map.addr(f, (uint32_t)((b0 + ub) / 2)), *reinterpret_cast<const uint4*>(frame + kHeaderSize + b0 + ub));
        } else if (ub < blen) {
          for (uint64_t q = ub; q < min(ub + 16, blen); q++)
            reinterpret_cast<uint8_t*>(p.dst)[b0 + q] = frame[kHeaderSize + b0 + q];
        }
      }
      continue;
    }

    // Coded. The tile's escapes go to shared memory (when not too many) as sorted (element, exponent) keys.
    const uint8_t* esc = frame + L.escapes;
    const uint32_t lo = st.tab[0], hi = st.tab[CPT];
    const uint32_t ne = hi - lo;
    const bool in_smem = ne <= kMaxTileEscapes;
    if (ne > 0 && in_smem) {
      for (uint32_t i = threadIdx.x; i < ne; i += THREADS) {
        const uint32_t e = lo + i;
        uint32_t q = 0;
#pragma unroll
        for (int c = 1; c < CPT; c++) q += e >= st.tab[c] ? 1u : 0u;
        const uint32_t pos = esc[3 * e] | ((uint32_t)esc[3 * e + 1] << 8);
        sh.esc[i] = ((q * kChunk + pos) << 8) | esc[3 * e + 2];
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < UPT; j++) {
      const uint32_t u = threadIdx.x + j * THREADS, ue = kUnit * u;
      if (ue >= tile_len) continue;
      const uint32_t cw = *reinterpret_cast<const uint32_t*>(st.codes + 4 * u);
      const uint2 rw = *reinterpret_cast<const uint2*>(st.res + 8 * u);
      uint4 o = decode_unit(cw, rw, sh.pairs);
      if (ne > 0) {
        if (in_smem) {
          uint32_t a = 0, b = ne;
          while (a < b) {
            const uint32_t m = (a + b) / 2;
            if ((sh.esc[m] >> 8) < ue) a = m + 1; else b = m;
          }
          for (; a < ne; a++) {
            const uint32_t x = sh.esc[a];
            const uint32_t kk = (x >> 8) - ue;
            if (kk >= kUnit) break;
            set_exponent(o, kk, x & 0xFF);
          }
        } else {
          const int kc = (j * THREADS) / kUnitsPerChunk;
          patch_unit(o, esc, st.tab[kc], st.tab[kc + 1], kUnit * (u % kUnitsPerChunk));
        }
      }
      store_unit(map, 0, f, t0, ue, tile_len, o);
    }
  }
  cp_async_wait<0>();
}

}  // namespace sz

// ==== streaming kernels ("s<threads>u<units per lane>") =======================================================
// The tile encoders above pace every block on a barrier, a block-wide scan and the look-back before it may
// retire, so an SM holds few bytes in flight (BENCH.md). The streaming encoder takes all of that off the data
// path: one warp codes one chunk with no block barrier after the code table, writes the dense sections with
// whole-line stores, and parks the chunk's escapes (rare: ~2.4 per chunk on real KV) in the workspace with
// their count. Finishing blocks, appended to the encoder's grid and so dispatched after all its coding blocks
// (blocks start in index order), give each group of kGroup chunks a warp, which waits for the group's counts,
// looks back over the groups before it (their totals, which every coding warp adds its chunk to, back to the
// nearest published prefix), writes their chunk table entries and moves their parked escapes into place (a
// chunk with more than kSlots escapes is read again); a header warp per frame writes the header (a raw one
// when the escapes do not fit, for the raw fallback kernel) from the frame's total, added to the same way.
// They run in the shadow of the last wave of coding blocks, so only the last groups' work follows the data
// path.
// No fence orders a coding warp's writes: a fence, or an arrival atomic whose answer the warp waits for, holds
// every block's slot longer (finishing by the last warp to arrive measured 7 % slower, BENCH.md). Instead every
// word a finishing warp waits for says itself whether it was written: counts are stored plus one, parked
// escapes with kParked set and the group and frame totals with their count of chunks done, into a workspace
// that is zero at the start, and that the kernel leaves zero itself: the finishing warps zero the counts and
// slots they read, the header blocks the frame totals and, once no look-back reads them any more, the look-back
// words and group totals (zero_group_words). So the raw fallback kernel after it waits for it only when a frame
// goes raw (raw_chunks).
namespace sz {

// Escapes a chunk parks in the workspace, with position and exponent (4 bytes: reading the exponents back from
// the input instead cost the finishing a DRAM round trip): 64 cover every chunk of the real KV fixture (at most
// 34); an overflowing chunk is read again by its finishing warp.
constexpr uint32_t kSlots = 64;
// Chunks per finishing group (a warp each). The groups of the last wave are finished after their last chunk,
// so their finishing warps' work is the encoder's tail: a group of 32 has half the escapes of one of 64 to
// gather and place, one batch of kMapped on real KV (32 against 64: 256 MiB encode +1.6 %, BENCH.md).
constexpr uint32_t kGroup = 32;
// Escapes of a group a finishing warp maps to their parked slots in shared memory (a batch of 8 per lane;
// later batches, none on real KV, search the group's prefix instead).
constexpr uint32_t kMapped = 8 * 32;

// A parked escape is kParked | exponent << 16 | chunk-local position: never zero.
constexpr uint32_t kParked = 0x80000000u;
// A slot index (chunk of the group × kSlots + escape) meaning "not parked": its chunk overflowed its slots.
constexpr uint16_t kUnparked = 0xFFFF;

// StreamWS is the streaming encoder's workspace (gpucodec.go's workspaceSize), zero between calls: a look-back
// word per group (u64: its inclusive prefix, once its finishing warp knows it), a total per group and one per
// frame (u64: chunks done << 32 | their escapes, added to by the coding warps), an escape count + 1 per chunk
// (u32) and kSlots parked escapes per chunk (u32).
struct StreamWS {
  uint64_t* state;
  uint64_t* group_totals;
  uint64_t* totals;
  uint32_t* counts;
  uint32_t* slots;
};
__device__ __forceinline__ uint32_t groups_of(uint32_t chunks) { return (chunks + kGroup - 1) / kGroup; }
__device__ __forceinline__ StreamWS stream_ws(const EncParams& p) {
  const uint64_t groups = (uint64_t)p.frames * groups_of(p.chunks);
  StreamWS w;
  w.state = reinterpret_cast<uint64_t*>(ws_body(p));
  w.group_totals = w.state + groups;
  w.totals = w.group_totals + groups;
  w.counts = reinterpret_cast<uint32_t*>(w.totals + p.frames);
  w.slots = w.counts + (uint64_t)p.frames * p.chunks;
  return w;
}

// The exponent field of element b (0..7) of a unit.
__device__ __forceinline__ uint32_t unit_exponent(const uint4& v, uint32_t b) {
  return (word_of(v, b >> 1) >> (7 + 16 * (b & 1))) & 0xFF;
}

// load_unit reads unit ue (element offset in the chunk) of a chunk of len elements: 16 bytes when whole,
// element by element (zero-filled) at a ragged end. base: the chunk's address when contiguous, else 0.
// (Plain loads: streaming (.cs) ones, and loads with a 256-byte L2 prefetch hint, measured slower here.)
template <class Map>
__device__ __forceinline__ uint4 load_unit(const Map& map, uint64_t base, uint32_t f, uint32_t e0, uint32_t ue, uint32_t len) {
  if (ue + kUnit <= len) return *reinterpret_cast<const uint4*>(base ? base + 2ull * ue : map.addr(f, e0 + ue));
  uint32_t h[8];
#pragma unroll
  for (uint32_t k = 0; k < 8; k++) h[k] = ue + k < len ? *reinterpret_cast<const uint16_t*>(map.addr(f, e0 + ue + k)) : 0u;
  return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
}

// warp_excl_scan returns the lane's exclusive prefix of x over the warp and the warp's total in *tot.
__device__ __forceinline__ uint32_t warp_excl_scan(uint32_t x, uint32_t* tot) {
  const uint32_t lane = threadIdx.x & 31;
  uint32_t incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, incl, o);
    if (lane >= o) incl += y;
  }
  *tot = __shfl_sync(0xFFFFFFFFu, incl, 31);
  return incl - x;
}

// AlignedStream stores a warp's 32 consecutive words of one section (a word per lane: 4-byte codes, or
// 8-byte residuals as two words) as whole 128-byte lines, whatever the section's alignment. Sections are only
// 16-byte aligned (FORMAT.md) and so, usually, is a warp's 128 or 256 bytes: a partial line each time, which
// HBM with ECC completes by reading it back (a read-modify-write) and which cost the encoder ~13 % (BENCH.md).
// Step s writes the line-aligned window [32s - m, 32s - m + 32) of the chunk's words, m of which the previous
// step produced; every lane gives away exactly one word per step, so one shuffle moves it. The chunk's first
// and last line are partial: they are shared with the neighbouring chunks.
struct AlignedStream {
  uint8_t* base;  // the chunk's first word
  uint32_t m;     // words before base in its line
  uint32_t size;  // bytes per word (4 or 8)
  __device__ __forceinline__ AlignedStream(uint8_t* b, uint32_t sz) : base(b), m((uint32_t)((uint64_t)b & 127) / sz), size(sz) {}
  // put stores step s's word w of this lane, prev being the lane's word of step s-1.
  template <class W>
  __device__ __forceinline__ void put(uint32_t s, W w, W prev) const {
    const uint32_t lane = threadIdx.x & 31;
    const W x = lane < 32 - m ? w : prev;
    const W y = shfl_w(x, (lane - m) & 31);
    if (s > 0 || lane >= m) *reinterpret_cast<W*>(base + (uint64_t)size * (32 * s + lane - m)) = y;
  }
  // flush stores the last m words of the chunk (its last step was s-1, prev its words).
  template <class W>
  __device__ __forceinline__ void flush(uint32_t s, W prev) const {
    const uint32_t lane = threadIdx.x & 31;
    const W y = shfl_w(prev, (lane - m) & 31);
    if (lane < m) *reinterpret_cast<W*>(base + (uint64_t)size * (32 * s + lane - m)) = y;
  }
  static __device__ __forceinline__ uint32_t shfl_w(uint32_t x, uint32_t l) { return __shfl_sync(0xFFFFFFFFu, x, l); }
  static __device__ __forceinline__ uint2 shfl_w(uint2 x, uint32_t l) {
    return make_uint2(__shfl_sync(0xFFFFFFFFu, x.x, l), __shfl_sync(0xFFFFFFFFu, x.y, l));
  }
};

// put_escape writes escape k of a frame (3 bytes) unless it lies past max_len: such a frame falls back to raw.
__device__ __forceinline__ void put_escape(uint8_t* frame, const Layout& L, uint64_t max_len, uint64_t k, uint32_t pos, uint32_t x) {
  const uint64_t off = L.escapes + kEscapeSize * k;
  if (off + 2 < max_len) {
    frame[off] = (uint8_t)pos;
    frame[off + 1] = (uint8_t)(pos >> 8);
    frame[off + 2] = (uint8_t)x;
  }
}

// kPollNs is the pause between the finishing and header warps' reads of words not yet written. They wait only in
// the last wave, where each pause is the tail's: 32 ns instead of 256 (counts, escapes) and 128 (frame totals)
// measured +1 to +13 GB/s on the 256 MiB encode in each of six paired rounds (BENCH.md).
constexpr uint32_t kPollNs = 32;

// await_words waits until each of a lane's K words that are wanted (want bit k) and still read zero has been
// written, re-reading the zero ones (word k at at(k)) with a pause between rounds; w[k] holds what was read.
template <int K, class At>
__device__ __forceinline__ void await_words(uint32_t (&w)[K], uint32_t want, At at) {
  while (true) {
    bool waiting = false;
#pragma unroll
    for (int k = 0; k < K; k++) waiting |= ((want >> k) & 1) && w[k] == 0;
    if (!__any_sync(0xFFFFFFFFu, waiting)) return;
    __nanosleep(kPollNs);
#pragma unroll
    for (int k = 0; k < K; k++)
      if (((want >> k) & 1) && w[k] == 0) w[k] = ld_relaxed_gpu(at(k));
  }
}

// frame_escapes waits until every chunk of frame f has added its escapes to the frame's total, and returns it.
__device__ __forceinline__ uint64_t frame_escapes(const StreamWS& ws, uint32_t f, uint32_t chunks) {
  uint64_t v = ld_relaxed_gpu(ws.totals + f);
  while ((v >> 32) != chunks) {
    __nanosleep(kPollNs);
    v = ld_relaxed_gpu(ws.totals + f);
  }
  return (uint32_t)v;
}

// lookback_groups returns the escapes before group q of a frame and publishes its inclusive prefix (q's total
// is agg). Called by one whole warp. Unlike lookback_warp, a predecessor's aggregate is not published by its
// finishing warp but added up by its coding warps (group_totals: complete when all kGroup chunks are in), so a
// late group waits for no other finishing warp: its look-back ends one round trip after the last predecessor
// chunk's count lands. Each round reads 32 × kLookbackPer predecessors, back to the nearest published prefix.
constexpr int kLookbackPer = 4;  // predecessors per lane and round
__device__ uint32_t lookback_groups(uint64_t* state, const uint64_t* group_totals, uint32_t q, uint32_t agg) {
  const uint32_t lane = threadIdx.x & 31;
  uint32_t excl = 0;
  for (int64_t base = (int64_t)q - 1; base >= 0; base -= 32 * kLookbackPer) {
    // All of a lane's words are read at once, and those neither a prefix nor a complete total read again.
    uint64_t s[kLookbackPer], t[kLookbackPer];
    uint32_t pending = 0;
#pragma unroll
    for (int k = 0; k < kLookbackPer; k++) {
      const int64_t idx = base - (k * 32 + lane);
      s[k] = kFlagPrefix;  // before the frame's first group: prefix 0
      t[k] = 0;
      if (idx >= 0) pending |= 1u << k;
    }
    while (__any_sync(0xFFFFFFFFu, pending != 0)) {
#pragma unroll
      for (int k = 0; k < kLookbackPer; k++)
        if ((pending >> k) & 1) {
          const int64_t idx = base - (k * 32 + lane);
          s[k] = ld_relaxed_gpu(state + idx);
          t[k] = ld_relaxed_gpu(group_totals + idx);
        }
#pragma unroll
      for (int k = 0; k < kLookbackPer; k++)  // predecessors are never a frame's ragged last group
        if ((s[k] >> 32) == (kFlagPrefix >> 32) || (t[k] >> 32) == kGroup) pending &= ~(1u << k);
    }
    uint32_t nearest = 32 * kLookbackPer;  // the lane's nearest predecessor (distance from base) with a prefix
#pragma unroll
    for (int k = kLookbackPer - 1; k >= 0; k--)
      if ((s[k] >> 32) == (kFlagPrefix >> 32)) nearest = k * 32 + lane;
    const uint32_t stop = __reduce_min_sync(0xFFFFFFFFu, nearest);
    uint32_t sum = 0;
#pragma unroll
    for (int k = 0; k < kLookbackPer; k++) {
      const bool prefix = (s[k] >> 32) == (kFlagPrefix >> 32);
      if (k * 32 + lane <= stop) sum += prefix ? (uint32_t)s[k] : (uint32_t)t[k];
    }
    excl += warp_sum(sum);
    if (stop < 32 * kLookbackPer) break;
  }
  if (lane == 0) st_relaxed_gpu(state + q, kFlagPrefix | (excl + agg));
  return excl;
}

// finish_group: one warp finishes group q of frame f (see above). pre (kGroup + 1 words) and slot_of (kMapped
// halfwords) are the warp's shared memory.
template <class Map>
__device__ __forceinline__ void finish_group(const EncParams& p, const Map& map, const StreamWS& ws, uint32_t f, uint32_t q,
                                          const uint8_t* code_of, uint32_t* pre, uint16_t* slot_of) {
  constexpr uint32_t PER = kGroup / 32;  // chunks per lane
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t groups = groups_of(p.chunks);
  const uint64_t n = p.n;
  const Layout L = bf16_layout(n);
  const uint64_t max_len = kHeaderSize + 2 * n;
  uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
  const uint32_t c0 = q * kGroup;  // the group's first chunk
  const uint32_t members = min(kGroup, p.chunks - c0);
  // The group's counts (count + 1; zero until the chunk's warp has stored it).
  uint32_t* counts = ws.counts + (uint64_t)f * p.chunks + c0;
  uint32_t cnt[PER], member = 0, sum = 0;
  auto cnt_at = [&](int k) { return counts + lane * PER + k; };
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    cnt[k] = 0;
    if (lane * PER + k < members) member |= 1u << k, cnt[k] = ld_relaxed_gpu(cnt_at(k));
  }
  await_words(cnt, member, cnt_at);
  // This warp is the counts' only reader: it leaves them zero for the next call.
#pragma unroll
  for (uint32_t k = 0; k < PER; k++)
    if ((member >> k) & 1) st_relaxed_gpu(cnt_at(k), 0u);
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    cnt[k] = cnt[k] ? cnt[k] - 1 : 0;
    sum += cnt[k];
  }
  uint32_t total;
  uint32_t excl = warp_excl_scan(sum, &total);
  uint32_t heavy = 0;  // this lane's chunks with more than kSlots escapes
  uint32_t first[PER];  // the group's escapes before each of the lane's chunks
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    const uint32_t j = lane * PER + k;
    pre[j] = first[k] = excl;
    if (cnt[k] > kSlots) heavy |= 1u << k;
    excl += cnt[k];
  }
  if (lane == 31) pre[kGroup] = excl;
  // slot_of maps the group's first kMapped escapes to their parked slots: one shared load per escape when
  // gathering instead of a binary search over pre, five dependent ones (+0.3 % at 256 MiB, BENCH.md).
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    const uint32_t j = lane * PER + k;
    for (uint32_t t = 0; t < cnt[k] && first[k] + t < kMapped; t++)
      slot_of[first[k] + t] = cnt[k] <= kSlots ? (uint16_t)(j * kSlots + t) : kUnparked;
  }
  __syncwarp();
  // Parked escapes, in output order: lanes take consecutive escapes of the group, eight batches of 32 in
  // flight. e[b] is the slot's word (position | exponent << 16 | kParked) then, once awaited, position |
  // exponent << 16 | the chunk (of the group) << 24; ~0 where the batch has no escape for the lane. s[b] is
  // the slot's index in the group's slots.
  uint32_t* slots = ws.slots + ((uint64_t)f * p.chunks + c0) * kSlots;
  uint32_t e[8], s[8], parked = 0;
  auto gather = [&](uint32_t i0) {
    parked = 0;
#pragma unroll
    for (int b = 0; b < 8; b++) {
      const uint32_t i = i0 + b * 32 + lane;
      e[b] = 0xFFFFFFFFu;
      s[b] = 0;
      if (i < total) {
        uint32_t slot;
        if (i < kMapped) {
          slot = slot_of[i];
        } else {
          uint32_t lo = 0, hi = kGroup;  // the chunk j with pre[j] <= i < pre[j+1]
          while (hi - lo > 1) {
            const uint32_t m = (lo + hi) / 2;
            if (pre[m] <= i) lo = m; else hi = m;
          }
          slot = pre[lo + 1] - pre[lo] <= kSlots ? lo * kSlots + (i - pre[lo]) : kUnparked;
        }
        if (slot != kUnparked) {
          s[b] = slot;
          e[b] = ld_relaxed_gpu(slots + slot);
          parked |= 1u << b;
        }
      }
    }
  };
  // Waits for the gathered slots still unwritten, zeroes them for the next call and tags each with its chunk.
  auto settle = [&]() {
    await_words(e, parked, [&](int b) { return slots + s[b]; });
#pragma unroll
    for (int b = 0; b < 8; b++)
      if ((parked >> b) & 1) {
        st_relaxed_gpu(slots + s[b], 0u);
        e[b] = (e[b] & 0xFFFFFFu) | (s[b] / kSlots) << 24;
      }
  };
  // The first batches' loads are issued before the look-back: its round trips and theirs overlap.
  gather(0);
  const uint32_t before = lookback_groups(ws.state + (uint64_t)f * groups, ws.group_totals + (uint64_t)f * groups, q, total);
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    const uint32_t j = lane * PER + k;
    if (j < members) *reinterpret_cast<uint32_t*>(frame + L.table + 4ull * (c0 + j)) = before + first[k];
  }
  // A raw frame (escapes past max_len) or a timing run without placement still reads and zeroes every slot.
  const bool place = !(p.tune & kTuneNoPlace) && L.escapes + kEscapeSize * (uint64_t)before < max_len;
  for (uint32_t i0 = 0; i0 < total; i0 += 8 * 32) {
    if (i0 > 0) gather(i0);
    settle();
    if (!place) continue;
#pragma unroll
    for (int b = 0; b < 8; b++)
      if (e[b] != 0xFFFFFFFFu) put_escape(frame, L, max_len, (uint64_t)before + i0 + b * 32 + lane, e[b] & 0xFFFF, (e[b] >> 16) & 0xFF);
  }
  // Chunks whose escapes overflowed their slots (none on real KV): their kSlots parked words are zeroed once
  // written, and the warp reads the chunk again, an eighth at a time (the coding warps' register budget bounds
  // this path's; more in flight spills).
  for (uint32_t hb = __ballot_sync(0xFFFFFFFFu, heavy != 0); hb; hb &= hb - 1) {
    const uint32_t src = __ffs(hb) - 1;
    for (uint32_t hm = __shfl_sync(0xFFFFFFFFu, heavy, src); hm; hm &= hm - 1) {
      const uint32_t j = src * PER + __ffs(hm) - 1;
      {
        constexpr int K = kSlots / 32;
        uint32_t w[K];
        auto at = [&](int k) { return slots + j * kSlots + k * 32 + lane; };
#pragma unroll
        for (int k = 0; k < K; k++) w[k] = ld_relaxed_gpu(at(k));
        await_words(w, (1u << K) - 1, at);
#pragma unroll
        for (int k = 0; k < K; k++) st_relaxed_gpu(at(k), 0u);
      }
      uint64_t kk = (uint64_t)before + pre[j];
      if (!place || L.escapes + kEscapeSize * kk >= max_len) continue;  // the frame is raw
      const uint32_t e0 = (c0 + j) * kChunk;
      const uint32_t len = (uint32_t)min((uint64_t)kChunk, n - e0);
      const uint64_t base = tile_base(map, f, e0, len);
      constexpr int PARTS = 8, UPL = kUnitsPerChunk / 32 / PARTS;
#pragma unroll 1
      for (int h = 0; h < PARTS; h++) {
        uint4 v[UPL];
#pragma unroll
        for (int u = 0; u < UPL; u++) {
          const uint32_t ue = kUnit * ((h * UPL + u) * 32 + lane);
          v[u] = ue < len ? load_unit(map, base, f, e0, ue, len) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UPL; u++) {
          const uint32_t ue = kUnit * ((h * UPL + u) * 32 + lane);
          uint32_t esc = 0;
#pragma unroll
          for (uint32_t b = 0; b < 8; b++)
            if (ue + b < len && code_of[unit_exponent(v[u], b)] > 15) esc |= 1u << b;
          uint32_t tot;
          uint64_t k = kk + warp_excl_scan(__popc(esc), &tot);
          while (esc) {
            const uint32_t b = __ffs(esc) - 1;
            esc &= esc - 1;
            put_escape(frame, L, max_len, k++, ue + b, unit_exponent(v[u], b));
          }
          kk += tot;
        }
      }
    }
  }
}

// stream_finish: finishing block b; its warp w finishes group b × WARPS + w (over all frames' groups).
template <int THREADS, class Map>
__device__ __forceinline__ void stream_finish(const EncParams& p, const Map& map, uint32_t b, uint8_t* code_of) {
  constexpr int WARPS = THREADS / 32;
  __shared__ uint32_t pre[WARPS][kGroup + 1];
  __shared__ uint16_t slot_of[WARPS][kMapped];
  enc_code_table<THREADS>(p, code_of);
  __syncthreads();
  const uint32_t groups = groups_of(p.chunks);
  const uint64_t w = (uint64_t)b * WARPS + (threadIdx.x >> 5);
  if (w >= (uint64_t)p.frames * groups) return;
  const uint32_t f = (uint32_t)(w / groups), q = (uint32_t)(w - (uint64_t)f * groups);
  finish_group(p, map, stream_ws(p), f, q, code_of, pre[threadIdx.x >> 5], slot_of[threadIdx.x >> 5]);
}

// zero_group_words: header block b zeroes the look-back words and group totals of its frames once no warp
// reads or adds to them any more: every group of those frames has published its prefix (a look-back reads
// words only until its own group publishes) and counted all its chunks (the coding warps' additions are in).
// All of them, not group by group: a late look-back may still read an early group's words. The warps without
// a frame to write the header of check while the others write theirs.
template <int THREADS>
__device__ __forceinline__ void zero_group_words(const EncParams& p, const StreamWS& ws, uint32_t b) {
  constexpr int WARPS = THREADS / 32, K = 4;  // groups per thread and round, loads in flight together
  const uint32_t groups = groups_of(p.chunks);
  const uint64_t f0 = (uint64_t)b * WARPS, f1 = min((uint64_t)p.frames, f0 + WARPS);
  const uint64_t first = f0 * groups, count = (f1 - f0) * groups;
  const uint32_t busy = f1 - f0 < WARPS ? 32 * (uint32_t)(f1 - f0) : 0;  // threads of the header warps
  if (threadIdx.x >= busy) {
    const uint32_t step = THREADS - busy;
    for (uint64_t r = 0; r < count; r += (uint64_t)step * K) {  // rounds alike for a warp's lanes
      const uint64_t i0 = r + threadIdx.x - busy;
      uint32_t pending = 0;
#pragma unroll
      for (int k = 0; k < K; k++)
        if (i0 + (uint64_t)k * step < count) pending |= 1u << k;
      while (true) {
#pragma unroll
        for (int k = 0; k < K; k++)
          if ((pending >> k) & 1) {
            const uint64_t g = first + i0 + (uint64_t)k * step;
            const uint32_t q = (uint32_t)(g % groups);
            const uint64_t s = ld_relaxed_gpu(ws.state + g), t = ld_relaxed_gpu(ws.group_totals + g);
            if ((s >> 32) == (kFlagPrefix >> 32) && (t >> 32) == min(kGroup, p.chunks - q * kGroup)) pending &= ~(1u << k);
          }
        if (!__any_sync(0xFFFFFFFFu, pending != 0)) break;
        __nanosleep(128);
      }
    }
  }
  __syncthreads();
  for (uint64_t i = threadIdx.x; i < count; i += THREADS) {
    st_relaxed_gpu(ws.state + first + i, 0ull);
    st_relaxed_gpu(ws.group_totals + first + i, 0ull);
  }
}

// stream_header: header block b; its warp w writes the header, codebook, gaps and length of frame b × WARPS + w
// (the codebook and gaps first, the rest once the frame's total is complete, while the frame's last group places
// its escapes) and tells the raw fallback kernel whether the frame is raw (ws_counters). Then the block leaves
// its frames' control words zero for the next call: the frame total here, the counts in their finishing warps,
// the look-back words and group totals in zero_group_words.
template <int THREADS>
__device__ __forceinline__ void stream_header(const EncParams& p, uint32_t b) {
  __shared__ CrcTables crc;
  build_crc_tables(crc);
  const StreamWS ws = stream_ws(p);
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t f = (uint64_t)b * (THREADS / 32) + (threadIdx.x >> 5);
  if (f < p.frames) {
    uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + f * p.frame_stride);
    // A frame that turns out raw gets these overwritten by the raw copy, which waits for this kernel.
    if (!(p.tune & kTuneNoHeader)) put_frame_constants(p, frame, p.n, lane, 32);
    const uint64_t E = frame_escapes(ws, (uint32_t)f, p.chunks);
    if (lane == 0) {
      st_relaxed_gpu(ws.totals + f, 0ull);  // its only reader; every chunk has added to it
      // No answer awaited: a fire-and-forget reduction.
      atomicAdd(reinterpret_cast<unsigned long long*>(ws_counters(p)), frame_is_raw(p.n, E) ? (1ull << 32) | 1 : 1ull);
      if (!(p.tune & kTuneNoHeader)) finish_header(p, frame, (uint32_t)f, p.n, E, &crc);
    }
  }
  zero_group_words<THREADS>(p, ws, b);
}

// The streaming encoder's grid is its coding blocks, then its finishing blocks, then a header block per WARPS
// frames (neither for the bench's "+f"). Blocks start in index order, so every coding block has started before
// any finishing block takes a slot, and a finishing or header warp only waits for warps that run. Finishing
// blocks interleaved with the coding ones (one after every 64, finishing the groups of 512 blocks back)
// measured slower: each holds a slot through its DRAM round trips, and at the end the last groups wait for the
// last coding blocks all the same (BENCH.md).
enum StreamKind { kCode, kFinish, kHeader, kIdle };
struct StreamRole {
  StreamKind kind;
  uint32_t index;
};
template <int WARPS>
__device__ __forceinline__ StreamRole stream_role(const EncParams& p, uint32_t b) {
  const uint32_t coding = (uint32_t)(((uint64_t)p.frames * p.chunks + WARPS - 1) / WARPS);
  if (b < coding) return {kCode, b};
  if (p.tune & kTuneNoFinish) return {kIdle, 0};
  const uint32_t finishing = (uint32_t)(((uint64_t)p.frames * groups_of(p.chunks) + WARPS - 1) / WARPS);
  if (b - coding < finishing) return {kFinish, b - coding};
  const uint32_t h = b - coding - finishing;
  return {h < (p.frames + WARPS - 1) / WARPS ? kHeader : kIdle, h};
}

// encode_stream: warp w of coding block b codes chunk b × WARPS + w (over all frames' chunks), UPL units per
// lane in flight (a chunk is 16 units per lane: 16 / UPL rounds); the finishing blocks after them place the
// escapes (stream_role).
template <int THREADS, int UPL, class Map>
__device__ __forceinline__ void encode_stream(const EncParams& p, const Map& map) {
  constexpr int WARPS = THREADS / 32, ROUNDS = kUnitsPerChunk / 32 / UPL;
  static_assert(ROUNDS * UPL * 32 == kUnitsPerChunk, "units per lane divide a chunk");
  __shared__ uint8_t code_of[256];
  const StreamRole role = stream_role<WARPS>(p, blockIdx.x);
  if (role.kind != kCode) {
    launch_dependents();
    if (role.kind == kFinish) stream_finish<THREADS>(p, map, role.index, code_of);
    if (role.kind == kHeader) stream_header<THREADS>(p, role.index);
    return;
  }
  const StreamWS ws = stream_ws(p);
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t g = (uint64_t)role.index * WARPS + (threadIdx.x >> 5);
  const bool live = g < (uint64_t)p.frames * p.chunks;  // whole warps; the grid's last block may have idle ones
  const uint32_t f = live ? (uint32_t)(g / p.chunks) : 0, c = live ? (uint32_t)(g - (uint64_t)f * p.chunks) : 0;
  const uint64_t n = p.n;
  const Layout L = bf16_layout(n);
  uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
  const uint32_t e0 = c * kChunk;
  const uint32_t len = live ? (uint32_t)min((uint64_t)kChunk, n - e0) : 0;
  const uint64_t base = len ? tile_base(map, f, e0, len) : 0;
  uint32_t* slot = ws.slots + g * kSlots;
  uint32_t run = 0;  // escapes of the chunk so far
  // Whole chunks store line-aligned; a frame's ragged last chunk stores unit by unit.
  const bool aligned = len == kChunk;
  const AlignedStream cs(frame + L.codes + e0 / 2, 4), rs(frame + L.residuals + e0, 8);
  uint32_t prev_codes = 0;
  uint2 prev_res = make_uint2(0, 0);

  uint4 v[UPL];
#pragma unroll
  for (int j = 0; j < UPL; j++) v[j] = load_unit(map, base, f, e0, kUnit * (j * 32 + lane), len);
  // A whole chunk's later rounds are copied into shared memory (cp.async) right away, so a warp waits one round
  // trip for its chunk instead of one a round and holds twice the bytes in flight without the registers (u8:
  // 4 KiB more a warp, 32 KiB a block). H100, same run, taking turns: 256 MiB 1,516-1,518 -> 1,524-1,526 GB/s,
  // 1 GiB 1,606-1,607 -> 1,621-1,623 (BENCH.md). u4 would need 48 KiB a block more: it keeps its loads.
  constexpr bool STAGE = UPL >= 8;
  __shared__ uint4 stage[STAGE ? WARPS : 1][STAGE ? (ROUNDS - 1) * UPL * 32 : 1];
  if (STAGE && aligned) {
    uint4* st = stage[threadIdx.x >> 5];
#pragma unroll
    for (int r = 1; r < ROUNDS; r++)
#pragma unroll
      for (int j = 0; j < UPL; j++) {
        const uint32_t ue = kUnit * ((r * UPL + j) * 32 + lane);
        cp_async16(st + ((r - 1) * UPL + j) * 32 + lane, base ? base + 2ull * ue : map.addr(f, e0 + ue));
      }
  }
  enc_code_table<THREADS>(p, code_of);  // while the loads fly
  __syncthreads();
  launch_dependents();  // the raw-fallback kernel may launch (and wait) as the last blocks run
#pragma unroll 1
  for (int r = 0; r < ROUNDS; r++) {
#pragma unroll
    for (int j = 0; j < UPL; j++) {
      const uint32_t ue = kUnit * ((r * UPL + j) * 32 + lane);
      uint32_t codes, esc;
      uint2 res;
      encode_unit4(v[j], code_of, codes, res, esc);
      if (aligned) {
        cs.put(r * UPL + j, codes, prev_codes);
        rs.put(r * UPL + j, res, prev_res);
        prev_codes = codes;
        prev_res = res;
      } else if (ue + kUnit <= len) {
        *reinterpret_cast<uint32_t*>(frame + L.codes + (e0 + ue) / 2) = codes;
        *reinterpret_cast<uint2*>(frame + L.residuals + e0 + ue) = res;
      } else if (ue < len) {
        const uint32_t k = len - ue;  // 1..7 elements
        esc &= (1u << k) - 1;
        codes &= (1u << (4 * k)) - 1;  // the high nibble of an odd last byte is zero
        for (uint32_t b = 0; b < (k + 1) / 2; b++) frame[L.codes + (e0 + ue) / 2 + b] = (uint8_t)(codes >> (8 * b));
        for (uint32_t b = 0; b < k; b++) frame[L.residuals + e0 + ue + b] = (uint8_t)((b < 4 ? res.x : res.y) >> (8 * (b & 3)));
      } else {
        esc = 0;
      }
      if (__any_sync(0xFFFFFFFFu, esc != 0)) {
        uint32_t tot;
        uint32_t k = run + warp_excl_scan(__popc(esc), &tot);
        while (esc) {
          const uint32_t b = __ffs(esc) - 1;
          esc &= esc - 1;
          if (k < kSlots) st_relaxed_gpu(slot + k, kParked | unit_exponent(v[j], b) << 16 | (ue + b));
          k++;
        }
        run += tot;
      }
    }
    if (r + 1 < ROUNDS) {
      if (STAGE && aligned) {
        cp_async_wait_all();
        const uint4* st = stage[threadIdx.x >> 5];
#pragma unroll
        for (int j = 0; j < UPL; j++) v[j] = st[(r * UPL + j) * 32 + lane];
      } else {
#pragma unroll
        for (int j = 0; j < UPL; j++) v[j] = load_unit(map, base, f, e0, kUnit * (((r + 1) * UPL + j) * 32 + lane), len);
      }
    }
  }
  if (aligned) {
    cs.flush(kUnitsPerChunk / 32, prev_codes);
    rs.flush(kUnitsPerChunk / 32, prev_res);
  }
  if (live && lane == 0) {
    // The chunk's frame and index again, from the block index read anew: kept live through the coding loop,
    // they cost spills there (its registers are at their cap).
    uint32_t b;
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(b));
    const uint64_t g2 = (uint64_t)b * WARPS + (threadIdx.x >> 5);
    const uint32_t f2 = (uint32_t)(g2 / p.chunks), c2 = (uint32_t)(g2 - (uint64_t)f2 * p.chunks);
    const StreamWS w2 = stream_ws(p);
    st_relaxed_gpu(w2.counts + g2, run + 1);
    // No answer awaited: both compile to fire-and-forget reductions.
    atomicAdd(reinterpret_cast<unsigned long long*>(w2.group_totals + (uint64_t)f2 * groups_of(p.chunks) + c2 / kGroup), (1ull << 32) | run);
    atomicAdd(reinterpret_cast<unsigned long long*>(w2.totals + f2), (1ull << 32) | run);
  }
}

// ---- streaming decode: the dense sections, then the escapes over them ---------------------------------------
// decode_stream decodes chunk b (over all frames' chunks). Its codes and residuals are loaded speculatively
// (the destination size fixes a coded frame's layout) while warp 0 checks the header and warp 1 reads the
// chunk's escapes into shared memory; after one barrier the block stores the chunk as if it had no escapes,
// and after a second writes the escaped elements (~0.06 % of real KV) over their placeholders. The dense
// stores wait for nothing but the loads and the header; the escapes land while their lines are still in L2
// (a separate pass measured 7 % slower: merging two bytes into a line that has left L2 reads it back).
constexpr uint32_t kDecEsc = 256;  // escapes a decode block keeps in shared memory (more: read in place)

template <int THREADS, class Map>
__device__ __forceinline__ void decode_stream(const DecParams& p, const Map& map) {
  constexpr int UPT = kUnitsPerChunk / THREADS;
  static_assert(UPT >= 1 && UPT * THREADS == kUnitsPerChunk && THREADS >= 64, "decode block shape (warp 1 reads the escapes)");
  __shared__ uint32_t hdr[20];  // header and codebook
  __shared__ uint32_t pairs[256];
  __shared__ uint32_t status_sh;
  __shared__ uint32_t esc_sh[kDecEsc];
  __shared__ uint32_t esc_lo, esc_n, esc_ok;
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t f = blockIdx.x / p.chunks, c = blockIdx.x - f * p.chunks;
  const uint8_t* frame = reinterpret_cast<const uint8_t*>(p.src + (uint64_t)f * p.frame_stride);
  const uint64_t nx = p.out_bytes / 2;
  const Layout L = bf16_layout(nx);
  const bool spec = (p.out_bytes & 1) == 0 && L.escapes <= p.frame_cap && c < L.chunks;
  const uint32_t e0 = c * kChunk;
  const uint32_t len = spec ? (uint32_t)min((uint64_t)kChunk, nx - e0) : 0;
  uint32_t codes[UPT];
  uint2 res[UPT];
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    codes[j] = 0;
    res[j] = make_uint2(0, 0);
    if (ue + kUnit <= len) {
      codes[j] = __ldcs(reinterpret_cast<const uint32_t*>(frame + L.codes + (e0 + ue) / 2));
      res[j] = __ldcs(reinterpret_cast<const uint2*>(frame + L.residuals + e0 + ue));
    }
  }
  if (warp == 0) {
    if (lane < 5 && p.frame_cap >= kHeaderSize + 16 * (lane / 4))
      reinterpret_cast<uint4*>(hdr)[lane] = reinterpret_cast<const uint4*>(frame)[lane];
    __syncwarp();
    if (lane == 0) {
      HeaderInfo h;
      status_sh = p.frame_cap < kHeaderSize ? (uint32_t)kTruncated : check_header(hdr, c == 0, p.out_bytes, p.frame_cap, h);
    }
    code_pairs(hdr, pairs, lane, 32);
  } else if (warp == 1) {
    // The chunk's escapes, checked as the CPU decoder does (meaningless for a raw or foreign frame, whose
    // header check decides first).
    uint32_t lo = 0, hi = 0, ok = 0;
    if (spec && p.frame_cap >= kHeaderSize) {
      const uint64_t E = *reinterpret_cast<const uint64_t*>(frame + 16);
      const uint32_t* table = reinterpret_cast<const uint32_t*>(frame + L.table);
      lo = table[c];
      hi = c + 1 < L.chunks ? table[c + 1] : (uint32_t)min(E, (uint64_t)0xFFFFFFFFu);
      ok = lo <= hi && hi <= E && (c > 0 || lo == 0) && L.escapes + kEscapeSize * (uint64_t)hi <= p.frame_cap;
    }
    if (ok) {
      const uint8_t* esc = frame + L.escapes;
      uint32_t bad = 0;
      for (uint32_t i = lo + lane; i < hi; i += 32) {
        const uint32_t pos = escape_pos(esc, i), x = esc[3 * i + 2];
        if (pos >= len || (i > lo && escape_pos(esc, i - 1) >= pos)) bad = 1;  // ascending, inside the chunk
        if (i - lo < kDecEsc) esc_sh[i - lo] = pos | x << 16;
      }
      ok = !__any_sync(0xFFFFFFFFu, bad);
    }
    if (lane == 0) esc_lo = lo, esc_n = hi - lo, esc_ok = ok;
  }
  __syncthreads();
  const uint32_t st = status_sh;
  if (st != kOK) {
    // Header errors are reported by the frame's first block (which checks the CRC too).
    if (c == 0 && threadIdx.x == 0) atomicCAS(reinterpret_cast<uint32_t*>(p.status), 0u, st);
    return;
  }
  if ((hdr[1] >> 16) & kFlagRaw) {
    // Verbatim payload: this chunk's 8 KiB of it.
    const uint64_t b0 = (uint64_t)c * (2 * kChunk), all = p.out_bytes;
    if (b0 >= all) return;
    raw_copy<THREADS, UPT>(p, map, frame, f, b0, min((uint64_t)(2 * kChunk), all - b0));
    return;
  }
  const uint64_t base = tile_base(map, f, e0, len);
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const uint32_t ue = kUnit * (threadIdx.x + j * THREADS);
    if (ue >= len) continue;
    const bool full = ue + kUnit <= len;
    uint32_t cw = codes[j];
    uint2 rw = res[j];
    if (!full) ragged_unit(frame, L, (uint64_t)e0 + ue, len - ue, cw, rw);
    store_unit(map, base, f, e0, ue, len, decode_unit(cw, rw, pairs));
  }
  // The escapes, over the dense stores (the barrier orders them).
  if (!esc_ok) {
    if (threadIdx.x == 0) atomicCAS(reinterpret_cast<uint32_t*>(p.status), 0u, (uint32_t)kCorrupt);
    return;
  }
  __syncthreads();
  const uint8_t* esc = frame + L.escapes + kEscapeSize * (uint64_t)esc_lo;
  for (uint32_t i = threadIdx.x; i < esc_n; i += THREADS) {
    const uint32_t e = i < kDecEsc ? esc_sh[i] : escape_pos(esc, i) | (uint32_t)esc[3 * i + 2] << 16;
    const uint32_t pos = e & 0xFFFF, x = e >> 16;
    const uint32_t r = frame[L.residuals + e0 + pos];
    *reinterpret_cast<uint16_t*>(base ? base + 2ull * pos : map.addr(f, e0 + pos)) = (uint16_t)(((r & 0x80) << 8) | (x << 7) | (r & 0x7F));
  }
}

}  // namespace sz
