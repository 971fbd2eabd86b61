// The streaming encoder (s256u8: inputs of SmallEncodeBytes and more).
//
// The tile encoder paces every block on a barrier, a block-wide scan and the look-back before it may retire, so
// an SM holds few bytes in flight (docs/gpu-kernels.md). The streaming encoder takes all of that off the data
// path: one warp codes one chunk with no block barrier after the code table, writes the dense sections with
// whole-line stores, and parks the chunk's escapes (rare: ~2.4 per chunk on real KV) in the workspace with
// their count. Finishing blocks, appended to the encoder's grid and so dispatched after all its coding blocks
// (blocks start in index order), give each group of kGroup chunks a warp, which waits for the group's counts,
// looks back over the groups before it (their totals, which every coding warp adds its chunk to, back to the
// nearest published prefix), writes their chunk table entries and moves their parked escapes into place; a
// header warp per frame writes the header (a raw one when the escapes do not fit, for the raw fallback kernel)
// from the frame's total, added to the same way. They run in the shadow of the last wave of coding blocks, so
// only the last groups' work follows the data path. A group with more escapes than one warp places quickly
// (kMapped), or a chunk with more than it could park (kSlots), defers them to the raw fallback kernel
// (place_deferred), which places them with all its warps once the encoder has completed.
// No fence orders a coding warp's writes: a fence, or an arrival atomic whose answer the warp waits for, holds
// every block's slot longer (finishing by the last warp to arrive measured 7 % slower). Instead every
// word a finishing warp waits for says itself whether it was written: counts are stored plus one, parked
// escapes with kParked set and the group and frame totals with their count of chunks done, into a workspace
// that is zero at the start, and that the kernel leaves zero itself: the finishing warps zero the counts and
// slots they read (place_deferred those of deferred groups), the header blocks the frame totals and, once no
// look-back reads them any more, the look-back words and group totals (close_frames). So the raw fallback kernel
// after it waits for it only when a frame goes raw or a group deferred its escapes (raw_chunks).
#pragma once

#include "encode.cuh"

namespace sz {

// Escapes a chunk parks in the workspace, with position and exponent (4 bytes: reading the exponents back from
// the input instead cost the finishing a DRAM round trip). 512 hold 12.5 % of a chunk's elements: every chunk of
// the real KV fixture (at most 34) and most chunks of KV that a table fits badly (10 % escapes is 410 a chunk).
// A chunk with more is read again by place_deferred. The slots take 25 % of the input's size in workspace;
// 128 (6.3 %) left every chunk of KV with 5 % escapes to be read twice, at half the fixture's encode speed.
constexpr uint32_t kSlots = 512;
// Chunks per finishing group (a warp each). The groups of the last wave are finished after their last chunk,
// so their finishing warps' work is the encoder's tail: a group of 32 has half the escapes of one of 64 to
// gather and place, one batch of kMapped on real KV (32 against 64: 256 MiB encode +1.6 %).
constexpr uint32_t kGroup = 32;
// A finishing warp places its group's escapes itself when they are at most kMapped (one batch of 8 a lane, each
// mapped to its slot in shared memory) and every chunk's escapes fit its slots; that is every group of real KV
// under a table that fits it. A group with more defers them to place_deferred, which runs after the encoder
// with a warp a chunk over the whole GPU. Placed by the group's one warp, after the coding wave, the escapes of
// KV that the table fits badly were the encoder's tail: 42 % of its speed at 0.6 % escapes, 16 % at 2.8 % (H200).
constexpr uint32_t kMapped = 8 * 32;
static_assert(kGroup * kSlots <= 65536, "stream_finish's slot_of holds a group's slot indices in 16 bits");

// A parked escape is kParked | exponent << 16 | chunk-local position: never zero.
constexpr uint32_t kParked = 0x80000000u;

// A streaming group's published prefix carries kFlagDeferred when the group left its escapes to place_deferred;
// is_prefix tells a published prefix, deferred or not, from an unpublished word.
constexpr uint64_t kFlagDeferred = 4ull << 32;
__device__ __forceinline__ bool is_prefix(uint64_t s) { return ((s >> 32) | 4) == ((kFlagPrefix | kFlagDeferred) >> 32); }

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
// HBM with ECC completes by reading it back (a read-modify-write) and which cost the encoder ~13 %.
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

// store_escape writes one escape entry at at: its chunk-local position (2 bytes, little-endian) and exponent.
__device__ __forceinline__ void store_escape(uint8_t* at, uint32_t pos, uint32_t x) {
  at[0] = (uint8_t)pos;
  at[1] = (uint8_t)(pos >> 8);
  at[2] = (uint8_t)x;
}

// put_escape writes escape k of a frame unless it lies past max_len: such a frame falls back to raw.
__device__ __forceinline__ void put_escape(uint8_t* frame, const Layout& L, uint64_t max_len, uint64_t k, uint32_t pos, uint32_t x) {
  const uint64_t off = L.escapes + kEscapeSize * k;
  if (off + 2 < max_len) store_escape(frame + off, pos, x);
}

// kPollNs is the pause between the finishing and header warps' reads of words not yet written. They wait only in
// the last wave, where each pause is the tail's: 32 ns measured faster on the 256 MiB encode than 256 (counts,
// escapes) and 128 (frame totals).
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
// is agg) with flags (kFlagPrefix, and kFlagDeferred when the group defers its escapes). Called by one whole
// warp. Unlike lookback_warp, a predecessor's aggregate is not published by its finishing warp but added up by
// its coding warps (group_totals: complete when all kGroup chunks are in), so a late group waits for no other
// finishing warp: its look-back ends one round trip after the last predecessor chunk's count lands. Each round
// reads 32 × kLookbackPer predecessors, back to the nearest published prefix.
constexpr int kLookbackPer = 4;  // predecessors per lane and round
__device__ uint32_t lookback_groups(uint64_t* state, const uint64_t* group_totals, uint32_t q, uint32_t agg, uint64_t flags) {
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
        if (is_prefix(s[k]) || (t[k] >> 32) == kGroup) pending &= ~(1u << k);
    }
    uint32_t nearest = 32 * kLookbackPer;  // the lane's nearest predecessor (distance from base) with a prefix
#pragma unroll
    for (int k = kLookbackPer - 1; k >= 0; k--)
      if (is_prefix(s[k])) nearest = k * 32 + lane;
    const uint32_t stop = __reduce_min_sync(0xFFFFFFFFu, nearest);
    uint32_t sum = 0;
#pragma unroll
    for (int k = 0; k < kLookbackPer; k++) {
      const bool prefix = is_prefix(s[k]);
      if (k * 32 + lane <= stop) sum += prefix ? (uint32_t)s[k] : (uint32_t)t[k];
    }
    excl += warp_sum(sum);
    if (stop < 32 * kLookbackPer) break;
  }
  if (lane == 0) st_relaxed_gpu(state + q, flags | (excl + agg));
  return excl;
}

// finish_group: one warp finishes group q of frame f (see above). slot_of (kMapped halfwords) is the warp's
// shared memory.
__device__ __forceinline__ void finish_group(const EncParams& p, const StreamWS& ws, uint32_t f, uint32_t q, uint16_t* slot_of) {
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
  bool over = false;  // a chunk of the lane's has more escapes than slots
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    cnt[k] = cnt[k] ? cnt[k] - 1 : 0;
    sum += cnt[k];
    over |= cnt[k] > kSlots;
  }
  uint32_t total;
  uint32_t excl = warp_excl_scan(sum, &total);
  uint32_t first[PER];  // the group's escapes before each of the lane's chunks
#pragma unroll
  for (uint32_t k = 0; k < PER; k++) {
    first[k] = excl;
    excl += cnt[k];
  }
  const uint64_t* totals = ws.group_totals + (uint64_t)f * groups;
  uint64_t* state = ws.state + (uint64_t)f * groups;
  auto put_table = [&](uint32_t before) {
#pragma unroll
    for (uint32_t k = 0; k < PER; k++) {
      const uint32_t j = lane * PER + k;
      if (j < members) *reinterpret_cast<uint32_t*>(frame + L.table + 4ull * (c0 + j)) = before + first[k];
    }
  };
  if (total > kMapped || __any_sync(0xFFFFFFFFu, over)) {
    // Deferred: the counts stay for place_deferred, which reads the offsets from the chunk table.
    put_table(lookback_groups(state, totals, q, total, kFlagPrefix | kFlagDeferred));
    return;
  }
  // This warp is the counts' only reader: it leaves them zero for the next call.
#pragma unroll
  for (uint32_t k = 0; k < PER; k++)
    if ((member >> k) & 1) st_relaxed_gpu(cnt_at(k), 0u);
  // slot_of maps the group's escapes to their parked slots: one shared load per escape when gathering instead of
  // a binary search over the chunks' prefixes, five dependent ones (+0.3 % at 256 MiB).
#pragma unroll
  for (uint32_t k = 0; k < PER; k++)
    for (uint32_t t = 0; t < cnt[k]; t++) slot_of[first[k] + t] = (uint16_t)((lane * PER + k) * kSlots + t);
  __syncwarp();
  // The parked escapes, in output order: lane l takes the group's escapes l, l + 32, … (e[b]: the slot's word,
  // position | exponent << 16 | kParked; s[b]: its index in the group's slots). Their loads are issued before
  // the look-back: its round trips and theirs overlap.
  uint32_t* slots = ws.slots + ((uint64_t)f * p.chunks + c0) * kSlots;
  uint32_t e[8], s[8], parked = 0;
#pragma unroll
  for (int b = 0; b < 8; b++) {
    const uint32_t i = b * 32 + lane;
    e[b] = 0;
    s[b] = 0;
    if (i < total) {
      s[b] = slot_of[i];
      e[b] = ld_relaxed_gpu(slots + s[b]);
      parked |= 1u << b;
    }
  }
  const uint32_t before = lookback_groups(state, totals, q, total, kFlagPrefix);
  put_table(before);
  // Waits for the slots still unwritten and zeroes them for the next call; a raw frame (escapes past max_len)
  // reads and zeroes them all the same.
  await_words(e, parked, [&](int b) { return slots + s[b]; });
#pragma unroll
  for (int b = 0; b < 8; b++)
    if ((parked >> b) & 1) {
      st_relaxed_gpu(slots + s[b], 0u);
      put_escape(frame, L, max_len, (uint64_t)before + b * 32 + lane, e[b] & 0xFFFF, (e[b] >> 16) & 0xFF);
    }
}

// unit_escapes: bit b set when element b of unit v escapes (code_of: the code table, 0x10 for no code).
__device__ __forceinline__ uint32_t unit_escapes(const uint4& v, const uint8_t* code_of) {
  uint32_t esc = 0;
#pragma unroll
  for (uint32_t i = 0; i < 4; i++) {
    const uint32_t w = word_of(v, i);
    esc |= (uint32_t)(code_of[(w >> 7) & 0xFF] >> 4) << (2 * i) | (uint32_t)(code_of[(w >> 23) & 0xFF] >> 4) << (2 * i + 1);
  }
  return esc;
}

// put_escapes writes a unit's escapes (esc: its escape bits; ue: its first element in the chunk) to out,
// 3 bytes each, the frame being coded: every escape lies inside it (unlike put_escape, no check). Byte by byte
// as store_escape writes them, so that the position's bytes go out before the exponent is picked out of the
// unit (store_escape's argument would be computed first).
__device__ __forceinline__ void put_escapes(uint8_t* out, uint32_t esc, const uint4& v, uint32_t ue) {
  for (; esc; esc &= esc - 1, out += kEscapeSize) {
    const uint32_t b = __ffs(esc) - 1;
    out[0] = (uint8_t)(ue + b);
    out[1] = (uint8_t)((ue + b) >> 8);
    out[2] = (uint8_t)unit_exponent(v, b);
  }
}

// escapes_from_input: one warp writes the escapes of chunk c of frame f, the k0-th of the frame on, reading the
// chunk again (it had more escapes than slots), 16-byte units in order, four a lane at a time; the next four are
// in flight while these are placed. Chunks dense with escapes are what this runs for (KV that the table fits
// badly, up to 40 % of a chunk), so a part's escapes are assembled in shared memory (stage: kStageBytes, the
// warp's) and copied out as consecutive bytes, 32 a warp's store, instead of three scattered byte stores an
// escape, which kept L2 busy.
constexpr uint32_t kStageBytes = kEscapeSize * 32 * 4 * kUnit;  // a part's escapes at most: 3 KiB
template <class Map>
__device__ __forceinline__ void escapes_from_input(const EncParams& p, const Map& map, uint8_t* frame, uint32_t f, uint32_t c,
                                                   uint64_t k0, const uint8_t* code_of, uint8_t* stage) {
  constexpr int PARTS = 4, UPL = kUnitsPerChunk / 32 / PARTS;
  static_assert(UPL == 4, "a part's unit counts are scanned as two packed words");
  static_assert(kStageBytes == kEscapeSize * 32 * UPL * kUnit, "the stage holds a part's escapes at most");
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t n = p.n;
  const uint32_t e0 = c * kChunk;
  const uint32_t len = (uint32_t)min((uint64_t)kChunk, n - e0);
  const uint64_t base = tile_base(map, f, e0, len);
  uint8_t* out = frame + bf16_layout(n).escapes + kEscapeSize * k0;
  uint4 v[UPL], next[UPL];
  auto load_part = [&](int h, uint4(&to)[UPL]) {
#pragma unroll
    for (int u = 0; u < UPL; u++) {
      const uint32_t ue = kUnit * ((h * UPL + u) * 32 + lane);
      to[u] = ue < len ? load_unit(map, base, f, e0, ue, len) : make_uint4(0, 0, 0, 0);
    }
  };
  load_part(0, v);
#pragma unroll 1
  for (int h = 0; h < PARTS; h++) {
    if (h + 1 < PARTS) load_part(h + 1, next);
    uint32_t esc[UPL];
#pragma unroll
    for (int u = 0; u < UPL; u++) {
      const uint32_t ue = kUnit * ((h * UPL + u) * 32 + lane);
      const uint32_t valid = ue >= len ? 0u : ue + kUnit <= len ? 0xFFu : (1u << (len - ue)) - 1;
      esc[u] = unit_escapes(v[u], code_of) & valid;
    }
    // Units are in order unit-major (all lanes' unit 0, then unit 1, …); a unit's count is at most 8 and a
    // unit's sum over the warp at most 256, so two units share a scanned word.
    uint32_t t01, t23;
    const uint32_t x01 = warp_excl_scan(__popc(esc[0]) | __popc(esc[1]) << 16, &t01);
    const uint32_t x23 = warp_excl_scan(__popc(esc[2]) | __popc(esc[3]) << 16, &t23);
    const uint32_t T0 = t01 & 0xFFFF, T1 = t01 >> 16, T2 = t23 & 0xFFFF, total = T0 + T1 + T2 + (t23 >> 16);
    const uint32_t before[UPL] = {x01 & 0xFFFF, T0 + (x01 >> 16), T0 + T1 + (x23 & 0xFFFF), T0 + T1 + T2 + (x23 >> 16)};
#pragma unroll
    for (int u = 0; u < UPL; u++) put_escapes(stage + kEscapeSize * before[u], esc[u], v[u], kUnit * ((h * UPL + u) * 32 + lane));
    __syncwarp();
    for (uint32_t i = lane; i < kEscapeSize * total; i += 32) out[i] = stage[i];
    __syncwarp();  // the stage is read before the next part writes it
    out += kEscapeSize * total;
#pragma unroll
    for (int u = 0; u < UPL; u++) v[u] = next[u];
  }
}

// place_deferred runs in the raw fallback kernel after the streaming encoder, once the encoder has completed
// (the kernel boundary orders its writes: plain loads through L2 read them), when a group deferred its escapes.
// Warp w of the grid takes chunks w, w + warps, …; a chunk whose count is still in the workspace belongs to
// such a group: the warp writes its escapes at the offset its finishing warp put in the chunk table, from the
// parked slots or, when the chunk had more escapes than slots, from the input, and zeroes the count and the
// slots for the next call. A raw frame's chunks are only zeroed. code_of: the block's code table.
template <int THREADS, class Map>
__device__ __forceinline__ void place_deferred(const EncParams& p, const Map& map, const uint8_t* code_of) {
  constexpr int K = 4;  // slots a lane reads at once: K × 32 a batch, which holds most chunks' escapes
  __shared__ uint8_t stage[THREADS / 32][kStageBytes];
  const StreamWS ws = stream_ws(p);
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t chunks = (uint64_t)p.frames * p.chunks, warps = (uint64_t)gridDim.x * (THREADS / 32);
  const uint64_t n = p.n;
  const Layout L = bf16_layout(n);
  uint64_t g = (uint64_t)blockIdx.x * (THREADS / 32) + (threadIdx.x >> 5);
  uint32_t c1 = g < chunks ? __ldcg(ws.counts + g) : 0;  // count + 1; the next chunk's is loaded a chunk ahead
  for (; g < chunks; g += warps) {
    const uint32_t cur = c1;
    c1 = g + warps < chunks ? __ldcg(ws.counts + g + warps) : 0;
    if (cur == 0) continue;  // a group that placed its own escapes
    const uint32_t cnt = cur - 1, f = (uint32_t)(g / p.chunks), c = (uint32_t)(g - (uint64_t)f * p.chunks);
    uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + (uint64_t)f * p.frame_stride);
    uint32_t* slot = ws.slots + g * kSlots;
    // Loaded together, one round trip: a raw frame's chunk table holds input bytes, read and not used.
    const bool raw = __ldcg(frame + 6) & kFlagRaw;
    const uint32_t k0 = __ldcg(reinterpret_cast<const uint32_t*>(frame + L.table + 4ull * c));
    __syncwarp();  // every lane has read the count before lane 0 zeroes it
    if (lane == 0) ws.counts[g] = 0;
    // The parked slots, a batch at a time: zeroed for the next call and, when they hold all the chunk's
    // escapes of a coded frame, stored at its offset (a coded frame holds all its escapes: no check).
    const uint32_t parked = min(cnt, kSlots);
    const bool store = !raw && cnt <= kSlots;
    uint8_t* out = frame + L.escapes + kEscapeSize * ((uint64_t)k0 + lane);
#pragma unroll 1
    for (uint32_t b0 = 0; b0 < parked; b0 += 32 * K) {
      uint32_t w[K];
#pragma unroll
      for (int k = 0; k < K; k++) w[k] = b0 + k * 32 + lane < parked ? __ldcg(slot + b0 + k * 32 + lane) : 0u;
#pragma unroll
      for (int k = 0; k < K; k++)
        if (w[k]) slot[b0 + k * 32 + lane] = 0;
      if (store) {
#pragma unroll
        for (int k = 0; k < K; k++)
          if (w[k]) store_escape(out + kEscapeSize * (b0 + 32 * k), w[k] & 0xFFFF, (w[k] >> 16) & 0xFF);
      }
    }
    if (!raw && cnt > kSlots) escapes_from_input(p, map, frame, f, c, k0, code_of, stage[threadIdx.x >> 5]);
  }
}

// stream_finish: finishing block b; its warp w finishes group b × WARPS + w (over all frames' groups).
template <int THREADS>
__device__ __forceinline__ void stream_finish(const EncParams& p, uint32_t b) {
  constexpr int WARPS = THREADS / 32;
  __shared__ uint16_t slot_of[WARPS][kMapped];
  const uint32_t groups = groups_of(p.chunks);
  const uint64_t w = (uint64_t)b * WARPS + (threadIdx.x >> 5);
  if (w >= (uint64_t)p.frames * groups) return;
  const uint32_t f = (uint32_t)(w / groups), q = (uint32_t)(w - (uint64_t)f * groups);
  finish_group(p, stream_ws(p), f, q, slot_of[threadIdx.x >> 5]);
}

// close_frames: header block b, once every group of its frames has published its prefix (a look-back reads
// words only until its own group publishes) and counted all its chunks (the coding warps' additions are in),
// tells the raw fallback kernel whether each frame needs it (late: bit w for frame b × WARPS + w, set by the
// header warps for raw frames and here for frames with a deferred group) and zeroes their look-back words and
// group totals. All of them, not group by group: a late look-back may still read an early group's words. The
// warps without a frame to write the header of check while the others write theirs.
template <int THREADS>
__device__ __forceinline__ void close_frames(const EncParams& p, const StreamWS& ws, uint32_t b, uint32_t* late) {
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
            if (is_prefix(s) && (t >> 32) == min(kGroup, p.chunks - q * kGroup)) {
              pending &= ~(1u << k);
              if (s & kFlagDeferred) atomicOr(late, 1u << (uint32_t)(g / groups - f0));
            }
          }
        if (!__any_sync(0xFFFFFFFFu, pending != 0)) break;
        __nanosleep(128);
      }
    }
  }
  __syncthreads();
  // No answer awaited: fire-and-forget reductions.
  if (threadIdx.x < f1 - f0)
    atomicAdd(reinterpret_cast<unsigned long long*>(ws_counters(p)), ((*late >> threadIdx.x) & 1) ? (1ull << 32) | 1 : 1ull);
  for (uint64_t i = threadIdx.x; i < count; i += THREADS) {
    st_relaxed_gpu(ws.state + first + i, 0ull);
    st_relaxed_gpu(ws.group_totals + first + i, 0ull);
  }
}

// stream_header: header block b; its warp w writes the header, codebook, gaps and length of frame b × WARPS + w
// (the codebook and gaps first, the rest once the frame's total is complete, while the frame's last group places
// its escapes). Then the block tells the raw fallback kernel which frames need it and leaves its frames' control
// words zero for the next call: the frame total here, the counts in their finishing warps (or place_deferred),
// the look-back words and group totals in close_frames.
template <int THREADS>
__device__ __forceinline__ void stream_header(const EncParams& p, uint32_t b) {
  __shared__ CrcTables crc;
  __shared__ uint32_t late;
  if (threadIdx.x == 0) late = 0;
  build_crc_tables(crc);  // its barriers order late's zero before any use
  const StreamWS ws = stream_ws(p);
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t f = (uint64_t)b * (THREADS / 32) + (threadIdx.x >> 5);
  if (f < p.frames) {
    uint8_t* frame = reinterpret_cast<uint8_t*>(p.dst + f * p.frame_stride);
    // A frame that turns out raw gets these overwritten by the raw copy, which waits for this kernel.
    put_frame_constants(p, frame, p.n, lane, 32);
    const uint64_t E = frame_escapes(ws, (uint32_t)f, p.chunks);
    // Every lane has read the complete total before lane 0 zeroes it: lanes of a warp need not run in step
    // (independent thread scheduling), and a lane still polling would wait on the zero forever.
    __syncwarp();
    if (lane == 0) {
      st_relaxed_gpu(ws.totals + f, 0ull);  // its only reader; every chunk has added to it
      if (frame_is_raw(p.n, E)) atomicOr(&late, 1u << (threadIdx.x >> 5));
      finish_header(p, frame, (uint32_t)f, p.n, E, &crc);
    }
  }
  close_frames<THREADS>(p, ws, b, &late);
}

// The streaming encoder's grid is its coding blocks, then its finishing blocks, then a header block per WARPS
// frames. Blocks start in index order, so every coding block has started before
// any finishing block takes a slot, and a finishing or header warp only waits for warps that run. Finishing
// blocks interleaved with the coding ones (one after every 64, finishing the groups of 512 blocks back)
// measured slower: each holds a slot through its DRAM round trips, and at the end the last groups wait for the
// last coding blocks all the same.
enum StreamKind { kCode, kFinish, kHeader, kIdle };
struct StreamRole {
  StreamKind kind;
  uint32_t index;
};
template <int WARPS>
__device__ __forceinline__ StreamRole stream_role(const EncParams& p, uint32_t b) {
  const uint32_t coding = (uint32_t)(((uint64_t)p.frames * p.chunks + WARPS - 1) / WARPS);
  if (b < coding) return {kCode, b};
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
    if (role.kind == kFinish) stream_finish<THREADS>(p, role.index);
    if (role.kind == kHeader) stream_header<THREADS>(p, role.index);
    return;
  }
  const StreamWS ws = stream_ws(p);
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t g = (uint64_t)role.index * WARPS + warp_uniform(threadIdx.x >> 5);
  const bool live = g < (uint64_t)p.frames * p.chunks;  // whole warps; the grid's last block may have idle ones
  // f is made uniform again: the 64-bit division is a subroutine call, whose result the compiler does not know
  // to be uniform, and its branches on the chunk would each need a convergence check.
  const uint32_t f = warp_uniform(live ? (uint32_t)(g / p.chunks) : 0);
  const uint32_t c = live ? (uint32_t)(g - (uint64_t)f * p.chunks) : 0;
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
  // 4 KiB more a warp, 32 KiB a block): +0.5 % on the 256 MiB encode and +1 % at 1 GiB on an H100. With fewer
  // units per lane (UPL) the stage would take more shared memory a block: such shapes keep their loads.
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

}  // namespace sz
