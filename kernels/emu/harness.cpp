// Command harness runs the high-ratio kernels of kernels/entropy.cuh on the host (shim.h), launched as
// kernels/entropy.go launches them, for kernels/emu_test.go to compare with the CPU codec. Buffers are exact-size
// heap allocations, so that AddressSanitizer reports any access past them. Modes (DT: bf16, e4m3 or e5m2):
//
//	enc DT IN TABLE OUT                    encode the tensor in file IN with the code table in TABLE; frame to OUT
//	dec DT FRAME FRAMECAP OUTLEN OUT       decode FRAME (FRAMECAP bytes readable) into OUTLEN bytes; prints the
//	                                       status, writes the output to OUT
//	kv DT IN TABLE BLOCKELEMS FRAME RT     scatter IN into layer 1's V blocks of a 2-layer paged cache (K and V
//	                                       interleaved per block), encode them straight from it (frame to FRAME),
//	                                       decode the frame into a cache laid out K then V, gather those blocks
//	                                       back into RT; prints the decoder's status
//	crc IN                                 the CRC-32C of file IN by crc.cuh's kernel, launched as kernels/crc.go
//	                                       launches it; prints it
//	blocks LAYERS NBLOCKS SEGBYTES STRIDE  gather a request's blocks of a random paged cache (K and V bases of
//	                                       LAYERS layers, NBLOCKS random ids, SEGBYTES a block, STRIDE bytes apart)
//	                                       with blocks.cuh's kernel, launched as kernels/blocks.go launches it,
//	                                       and scatter them into other ids of a second cache; checks both against
//	                                       byte copies and that nothing else changed; prints "ok"
//	fenc IN CB STREAM GRID RAWGRID RAWMODE CHUNKS WSLEN REPS OUT WS
//	                                       the fast mode (format v1): encode the bf16 tensor in IN with codebook
//	                                       CB (32 hex digits, its 4 words) REPS times in one workspace of WSLEN
//	                                       bytes, as kernels/gpucodec.go plans it (planEncode: the streaming
//	                                       encoder when STREAM is 1, else the tile one; GRID encoder blocks, none
//	                                       for 0; RAWGRID raw fallback blocks in RAWMODE; CHUNKS chunks); the
//	                                       frame to OUT (every repetition's must be the same), the workspace to WS
//	fdec FRAME FRAMECAP OUTLEN OUT         the fast mode's decoder, as DecodeAsync launches it; prints the status
//	fkv IN CB STREAM GRID RAWGRID RAWMODE CHUNKS WSLEN STRIDE LAYERS BLOCKELEMS OUT RT
//	                                       the fast mode straight from a paged cache, as GatherEncodeAsync and
//	                                       DecodeScatterAsync launch it (one frame per layer, STRIDE bytes apart):
//	                                       scatter IN (per layer its K blocks, then its V blocks, of BLOCKELEMS
//	                                       each) into a cache with K and V interleaved per block and shuffled ids,
//	                                       gather-encode it (frame f to OUT.f), decode-scatter the frames into a
//	                                       cache laid out K then V with other ids, and gather that back into RT;
//	                                       prints the decoder's status
#include "blocks.cuh"
#include "crc.cuh"
#include "decode.cuh"
#include "encode_stream.cuh"
#include "encode_tile.cuh"
#include "entropy.cuh"
#include "raw.cuh"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

using namespace sz;

static std::vector<uint8_t> readf(const char* path) {
  FILE* f = fopen(path, "rb");
  if (!f) { perror(path); exit(2); }
  std::vector<uint8_t> b;
  uint8_t buf[1 << 16];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, f)) > 0) b.insert(b.end(), buf, buf + k);
  fclose(f);
  return b;
}
static void writef(const char* path, const uint8_t* p, size_t n) {
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    perror(path);
    exit(2);
  }
}
static uint8_t* exact(size_t n) {  // an allocation of exactly n bytes, 16-byte aligned (ASan sees its end)
  void* p = nullptr;
  if (posix_memalign(&p, 16, n ? n : 1)) exit(3);
  return (uint8_t*)p;
}
// copy_of returns an exact allocation of cap bytes starting with (up to cap bytes of) b.
static uint8_t* copy_of(const std::vector<uint8_t>& b, size_t cap) {
  uint8_t* p = exact(cap);
  if (!b.empty()) memcpy(p, b.data(), std::min(cap, b.size()));
  return p;
}
// written_only_where_marked reports (as who) the first byte of buf that is not marked yet changed from the 0xC3
// the destination caches are filled with: a decoder or scatter that wrote outside its blocks.
static bool written_only_where_marked(const uint8_t* buf, const std::vector<uint8_t>& mark, const char* who) {
  for (size_t i = 0; i < mark.size(); i++)
    if (!mark[i] && buf[i] != 0xC3) {
      fprintf(stderr, "%s: byte %zu outside the blocks written\n", who, i);
      return false;
    }
  return true;
}

static uint64_t align16h(uint64_t x) { return (x + 15) & ~uint64_t(15); }
static uint64_t chunks_of(uint64_t n) { return std::max<uint64_t>(1, (n + kHRChunk - 1) / kHRChunk); }

template <class T>
static bool raw_only(uint64_t n, uint64_t chunks, uint64_t table_len) {
  const uint64_t res = (n * T::kResBits + 7) / 8;
  return align16h(align16h(align16h(kHeaderSize + table_len) + 4 * chunks) + res) >= kHeaderSize + T::kBytes * n;
}

template <class T> struct Maps;
template <> struct Maps<HRBF16> { using Dense = DenseMap; using Paged = PagedMap; };
template <> struct Maps<HRE4M3> { using Dense = DenseByteMap; using Paged = PagedByteMap; };
template <> struct Maps<HRE5M2> { using Dense = DenseByteMap; using Paged = PagedByteMap; };

// encode runs the encoder and the raw kernel as entropy.go launches them; returns the frame length.
// raw_grid is hr_raw's grid as entropy.go plans it (card.hrRawGrid), passed in by the test.
template <class T, class Map>
static uint64_t encode(HREncParams p, const Map& map, uint32_t raw_grid) {
  // The workspace as entropy.go sizes it, poisoned: hr_prepare must zero its words and build the table.
  const uint64_t words = 2ull * p.frames + (uint64_t)p.frames * p.chunks;
  std::vector<uint64_t> ws((align16h(8 * words) + sizeof(HREncTable)) / 8 + 2, 0xA5A5A5A5A5A5A5A5ull);
  p.ws = align16h((uint64_t)ws.data());
  const uint64_t n = p.n;
  if (raw_only<T>(n, p.chunks, p.table_len)) p.raw_only = 1;
  uint64_t size = 0;
  p.sizes = (uint64_t)&size;
  const uint64_t total = (uint64_t)p.frames * ((p.chunks + kHREncChunks - 1) / kHREncChunks);
  emu_launch((uint32_t)std::min<uint64_t>(raw_grid, (words + 255) / 256), 256, [&] { hr_prepare<T>(p); });
  emu_launch((uint32_t)total, 256, [&] { hr_encode<T>(p, map); });
  emu_launch(raw_grid, 256, [&] { hr_raw<T>(p, map); });
  return size;
}

template <class T, class Map>
static uint32_t decode(HRDecParams p, const Map& map) {
  uint32_t status = 0;
  p.status = (uint64_t)&status;
  const uint32_t bpf = (p.chunks + 7) / 8;
  emu_launch(p.frames * bpf, 256, [&] { hr_decode<T, 8>(p, map); });
  return status;
}

template <class T>
static int run(int argc, char** argv) {
  const std::string mode = argv[1];
  if ((mode == "enc" && argc != 7) || (mode == "dec" && argc != 7) || (mode == "kv" && argc != 9)) {
    fprintf(stderr, "harness %s: wrong number of arguments\n", mode.c_str());
    return 2;
  }
  if (mode == "enc") {  // enc DT IN TABLE RAWGRID OUT
    auto in = readf(argv[3]);
    auto table = readf(argv[4]);
    const uint64_t n = in.size() / T::kBytes;
    uint8_t* src = copy_of(in, in.size());
    uint8_t* tab = copy_of(table, table.size());
    const size_t cap = kHeaderSize + in.size() + 64;
    uint8_t* dst = exact(cap);
    memset(dst, 0xA5, cap);
    HREncParams p{};
    p.src = (uint64_t)src;
    p.dst = (uint64_t)dst;
    p.table = (uint64_t)tab;
    p.n = (uint32_t)n;
    p.frames = 1;
    p.chunks = (uint32_t)chunks_of(n);
    p.table_len = (uint32_t)table.size();
    const uint64_t len = encode<T>(p, typename Maps<T>::Dense{p.src}, (uint32_t)strtoul(argv[5], nullptr, 10));
    for (size_t i = len; i < cap; i++)
      if (dst[i] != 0xA5) { fprintf(stderr, "byte %zu past the frame (%llu) written\n", i, (unsigned long long)len); return 1; }
    writef(argv[6], dst, len);
    return 0;
  }
  if (mode == "dec") {  // dec DT FRAME FRAMECAP OUTLEN OUT
    auto fr = readf(argv[3]);
    const uint64_t cap = strtoull(argv[4], 0, 10), out_len = strtoull(argv[5], 0, 10);
    uint8_t* frame = copy_of(fr, cap);
    uint8_t* out = exact(out_len);
    memset(out, 0x5A, out_len);
    HRDecParams p{};
    p.src = (uint64_t)frame;
    p.frame_cap = cap;
    p.dst = (uint64_t)out;
    p.out_bytes = out_len;
    p.frames = 1;
    p.chunks = (uint32_t)chunks_of(out_len / T::kBytes);
    const uint32_t st = decode<T>(p, typename Maps<T>::Dense{p.dst});
    printf("%u\n", st);
    writef(argv[6], out, out_len);
    return 0;
  }
  if (mode == "kv") {  // kv DT IN TABLE BLOCKELEMS RAWGRID FRAMEOUT RTOUT: layer 1's V of a 2-layer cache
    auto in = readf(argv[3]);
    auto table = readf(argv[4]);
    const uint32_t be = atoi(argv[5]);
    const uint32_t B = T::kBytes;
    const uint32_t n = in.size() / B, nb = n / be, nblocks = nb + 5;
    std::mt19937 rng(n);
    std::vector<int32_t> sids(nblocks), dids(nblocks);
    for (uint32_t i = 0; i < nblocks; i++) sids[i] = dids[i] = i;
    std::shuffle(sids.begin(), sids.end(), rng);
    std::shuffle(dids.begin(), dids.end(), rng);
    // source: FlashInfer-like (K and V interleaved per block: stride 2 blocks); destination: K then V.
    const size_t layer_bytes = 2ull * nblocks * be * B;
    uint8_t* sbuf = exact(2 * layer_bytes);
    uint8_t* dbuf = exact(2 * layer_bytes);
    memset(sbuf, 0x3C, 2 * layer_bytes);
    memset(dbuf, 0xC3, 2 * layer_bytes);
    uint64_t sb[4], db[4];
    for (int l = 0; l < 2; l++) {
      sb[2 * l] = (uint64_t)(sbuf + l * layer_bytes);
      sb[2 * l + 1] = sb[2 * l] + (uint64_t)be * B;
      db[2 * l] = (uint64_t)(dbuf + l * layer_bytes);
      db[2 * l + 1] = db[2 * l] + (uint64_t)nblocks * be * B;
    }
    for (uint32_t b = 0; b < nb; b++) memcpy((uint8_t*)sb[3] + (uint64_t)sids[b] * 2 * be * B, in.data() + (uint64_t)b * be * B, (size_t)be * B);
    uint8_t* tab = copy_of(table, table.size());
    const size_t cap = kHeaderSize + in.size() + 64;
    uint8_t* dst = exact(cap);
    memset(dst, 0xA5, cap);
    HREncParams p{};
    p.src = (uint64_t)(sb + 3);
    p.ids = (uint64_t)sids.data();
    p.dst = (uint64_t)dst;
    p.stride_bytes = 2ull * be * B;
    p.table = (uint64_t)tab;
    p.n = n;
    p.frames = 1;
    p.chunks = (uint32_t)chunks_of(n);
    p.block_elems = be;
    p.n_blocks = nb;
    p.segs_per_frame = nb;
    p.table_len = (uint32_t)table.size();
    const uint64_t len = encode<T>(p, typename Maps<T>::Paged{(const uint64_t*)p.src, (const int32_t*)p.ids, p.stride_bytes, be, nb, nb},
                                   (uint32_t)strtoul(argv[6], nullptr, 10));
    for (size_t i = len; i < cap; i++)
      if (dst[i] != 0xA5) { fprintf(stderr, "byte %zu past the frame written\n", i); return 1; }
    writef(argv[7], dst, len);
    uint8_t* frame = exact(len);
    memcpy(frame, dst, len);
    HRDecParams d{};
    d.src = (uint64_t)frame;
    d.frame_cap = len;
    d.dst = (uint64_t)(db + 3);
    d.ids = (uint64_t)dids.data();
    d.stride_bytes = (uint64_t)be * B;
    d.out_bytes = (uint64_t)n * B;
    d.frames = 1;
    d.chunks = (uint32_t)chunks_of(n);
    d.block_elems = be;
    d.n_blocks = nb;
    d.segs_per_frame = nb;
    const uint32_t st = decode<T>(d, typename Maps<T>::Paged{(const uint64_t*)d.dst, (const int32_t*)d.ids, d.stride_bytes, be, nb, nb});
    printf("%u\n", st);
    std::vector<uint8_t> rt(in.size());
    for (uint32_t b = 0; b < nb; b++) memcpy(rt.data() + (uint64_t)b * be * B, (uint8_t*)db[3] + (uint64_t)dids[b] * be * B, (size_t)be * B);
    // Nothing else of the destination cache changed.
    std::vector<uint8_t> mark(2 * layer_bytes, 0);
    for (uint32_t b = 0; b < nb; b++) memset(mark.data() + ((uint8_t*)db[3] - dbuf) + (uint64_t)dids[b] * be * B, 1, (size_t)be * B);
    if (!written_only_where_marked(dbuf, mark, "kv: destination")) return 1;
    writef(argv[8], rt.data(), rt.size());
    return 0;
  }
  fprintf(stderr, "harness: unknown mode %s\n", mode.c_str());
  return 2;
}

// crc runs crc32c over the file in (an exact-size copy) as CRC32CAsync does: the result preset to the
// conditioning term, then ceil(pieces / kCRCThreads) blocks, at least one.
static int crc(const char* in) {
  auto b = readf(in);
  const uint64_t n = b.size();
  uint8_t* src = copy_of(b, n);
  uint32_t shifted = 0xFFFFFFFFu;  // ~0 followed by n zero bytes
  for (uint64_t d = n, k = 0; d != 0; d >>= 1, k++)
    if (d & 1) shifted = crc_mulmod(shifted, kCRCX8[k]);
  uint32_t* out = reinterpret_cast<uint32_t*>(exact(4));
  *out = ~shifted;
  const uint64_t pieces = ((n & ~uint64_t(15)) + kCRCPiece - 1) / kCRCPiece;
  CRCParams p{reinterpret_cast<uint64_t>(src), n, reinterpret_cast<uint64_t>(out)};
  emu_launch((uint32_t)std::max<uint64_t>(1, (pieces + kCRCThreads - 1) / kCRCThreads), kCRCThreads, [&] { crc32c(p); });
  printf("%u\n", *out);
  free(src);
  free(out);
  return 0;
}

// blocks: see the usage above. The grid is kernels/blocks.go's, capped low here so that blocks loop over
// segments as they do on large requests.
static int blocks(uint32_t layers, uint32_t nb, uint64_t seg, uint64_t stride) {
  const uint32_t bases_n = 2 * layers, cache_blocks = 2 * nb + 3;
  const uint64_t base_bytes = cache_blocks * stride;
  std::mt19937_64 rng(seg * 31 + nb);
  auto fill = [&](uint8_t* p, uint64_t n) { for (uint64_t i = 0; i < n; i++) p[i] = (uint8_t)rng(); };
  // Two caches: a source and a destination, each its bases side by side.
  uint8_t* src = reinterpret_cast<uint8_t*>(exact(bases_n * base_bytes));
  uint8_t* dst = reinterpret_cast<uint8_t*>(exact(bases_n * base_bytes));
  fill(src, bases_n * base_bytes);
  memset(dst, 0xC3, bases_n * base_bytes);
  uint64_t* sb = reinterpret_cast<uint64_t*>(exact(8 * bases_n));
  uint64_t* db = reinterpret_cast<uint64_t*>(exact(8 * bases_n));
  for (uint32_t i = 0; i < bases_n; i++) sb[i] = (uint64_t)(src + i * base_bytes), db[i] = (uint64_t)(dst + i * base_bytes);
  std::vector<int32_t> perm(cache_blocks);
  for (uint32_t i = 0; i < cache_blocks; i++) perm[i] = (int32_t)i;
  std::shuffle(perm.begin(), perm.end(), rng);
  int32_t* sids = reinterpret_cast<int32_t*>(exact(4 * nb));
  int32_t* dids = reinterpret_cast<int32_t*>(exact(4 * nb));
  for (uint32_t b = 0; b < nb; b++) sids[b] = perm[b], dids[b] = perm[nb + b];
  const uint32_t segs = bases_n * nb;
  uint8_t* buf = reinterpret_cast<uint8_t*>(exact(segs * seg));
  const uint32_t grid = std::min<uint32_t>(segs, 5);
  BlockCopyParams p{(uint64_t)sb, (uint64_t)sids, (uint64_t)buf, stride, seg, nb, segs, 1, 0};
  emu_launch(grid, kBlockCopyThreads, [&] { copy_blocks(p); });
  for (uint32_t g = 0; g < segs; g++)
    if (memcmp(buf + g * seg, (uint8_t*)sb[g / nb] + (uint64_t)sids[g % nb] * stride, seg) != 0) {
      fprintf(stderr, "gather: segment %u differs\n", g);
      return 1;
    }
  p = BlockCopyParams{(uint64_t)db, (uint64_t)dids, (uint64_t)buf, stride, seg, nb, segs, 0, 0};
  emu_launch(grid, kBlockCopyThreads, [&] { copy_blocks(p); });
  std::vector<uint8_t> mark(bases_n * base_bytes, 0);
  for (uint32_t g = 0; g < segs; g++) {
    const uint64_t at = (uint64_t)(g / nb) * base_bytes + (uint64_t)dids[g % nb] * stride;
    if (memcmp(dst + at, buf + g * seg, seg) != 0) {
      fprintf(stderr, "scatter: segment %u differs\n", g);
      return 1;
    }
    memset(mark.data() + at, 1, seg);
  }
  if (!written_only_where_marked(dst, mark, "scatter")) return 1;
  printf("ok\n");
  for (void* q : {(void*)src, (void*)dst, (void*)sb, (void*)db, (void*)sids, (void*)dids, (void*)buf}) free(q);
  return 0;
}

// FastPlan is fenc's and fkv's arguments CB STREAM GRID RAWGRID RAWMODE CHUNKS WSLEN: the codebook and the
// launches kernels/gpucodec.go's planEncode decided.
struct FastPlan {
  uint32_t codebook[4];
  bool stream;
  uint32_t grid, raw_grid, raw_mode, chunks;
  uint64_t ws_len;
};

// fast_plan reads a FastPlan from the seven arguments at a; false (having said why) when the codebook is not 32
// hex digits.
static bool fast_plan(char** a, FastPlan* pl) {
  const std::string cb = a[0];
  if (cb.size() != 32) {
    fprintf(stderr, "codebook %s: want 32 hex digits\n", cb.c_str());
    return false;
  }
  for (int k = 0; k < 4; k++) pl->codebook[k] = (uint32_t)strtoul(cb.substr(8 * k, 8).c_str(), nullptr, 16);
  pl->stream = std::string(a[1]) == "1";
  pl->grid = (uint32_t)strtoul(a[2], nullptr, 10), pl->raw_grid = (uint32_t)strtoul(a[3], nullptr, 10);
  pl->raw_mode = (uint32_t)strtoul(a[4], nullptr, 10), pl->chunks = (uint32_t)strtoul(a[5], nullptr, 10);
  pl->ws_len = strtoull(a[6], nullptr, 10);
  return true;
}

// fast_launch runs the encode of p as planned: the encoder (none for grid 0), then the raw fallback kernel.
template <class Map>
static void fast_launch(const FastPlan& pl, const EncParams& p, const Map& map) {
  if (pl.grid > 0) {
    if (pl.stream) emu_launch(pl.grid, 256, [&] { encode_stream<256, 8>(p, map); });
    else emu_launch(pl.grid, 256, [&] { encode_tile<256, 4>(p, map); });
  }
  emu_launch(pl.raw_grid, 256, [&] { raw_chunks<256>(p, map); });
}

// fenc: see the usage above.
static int fast_encode(char** argv) {
  auto in = readf(argv[2]);
  FastPlan pl;
  if (!fast_plan(argv + 3, &pl)) return 2;
  const uint64_t reps = strtoull(argv[10], nullptr, 10);
  const uint64_t n = in.size() / 2, cap = kHeaderSize + in.size();
  uint8_t* src = copy_of(in, in.size());
  uint8_t* ws = exact(pl.ws_len);
  memset(ws, 0, pl.ws_len);
  uint64_t* sizes = reinterpret_cast<uint64_t*>(exact(8));
  std::vector<uint8_t> first;
  for (uint64_t r = 0; r < reps; r++) {
    uint8_t* dst = exact(cap);
    memset(dst, 0xA5, cap);  // poison: every byte of the frame must be written
    EncParams p{};
    p.src = (uint64_t)src, p.dst = (uint64_t)dst, p.sizes = (uint64_t)sizes, p.ws = (uint64_t)ws;
    p.n = (uint32_t)n, p.frames = 1, p.chunks = pl.chunks, p.raw_mode = pl.raw_mode;
    memcpy(p.codebook, pl.codebook, sizeof p.codebook);
    *sizes = 0;
    fast_launch(pl, p, DenseMap{p.src});
    if (*sizes < kHeaderSize || *sizes > cap) {
      fprintf(stderr, "fenc: the encoder reported a %llu-byte frame\n", (unsigned long long)*sizes);
      return 1;
    }
    std::vector<uint8_t> frame(dst, dst + *sizes);
    free(dst);
    if (r == 0) first = frame;
    else if (frame != first) {
      fprintf(stderr, "fenc: repetition %llu wrote another frame\n", (unsigned long long)r);
      return 1;
    }
  }
  writef(argv[11], first.data(), first.size());
  writef(argv[12], ws, pl.ws_len);
  free(src);
  free(ws);
  free(sizes);
  return 0;
}

// fdec: see the usage above.
static int fast_decode(char** argv) {
  auto frame = readf(argv[2]);
  const uint64_t frame_cap = strtoull(argv[3], nullptr, 10), out_len = strtoull(argv[4], nullptr, 10);
  uint8_t* src = copy_of(frame, frame_cap);
  uint8_t* dst = exact(out_len);
  memset(dst, 0x5A, out_len);
  uint32_t status = 0;
  DecParams p{};
  p.src = (uint64_t)src, p.frame_cap = frame_cap, p.dst = (uint64_t)dst, p.status = (uint64_t)&status;
  p.out_bytes = out_len, p.frames = 1, p.chunks = (uint32_t)std::max<uint64_t>(1, (out_len + 8191) / 8192);
  emu_launch(p.chunks, 256, [&] { decode_tile<256, 1>(p, DenseMap{p.dst}); });
  printf("%u\n", status);
  writef(argv[5], dst, out_len);
  free(src);
  free(dst);
  return 0;
}

// fkv: see the usage above. Both caches hold 2 × NB + 3 blocks a layer; nothing outside the blocks written may
// change in the destination.
static int fast_kv(char** argv) {
  auto in = readf(argv[2]);
  FastPlan pl;
  if (!fast_plan(argv + 3, &pl)) return 2;
  const uint64_t stride = strtoull(argv[10], nullptr, 10);
  const uint32_t layers = (uint32_t)strtoul(argv[11], nullptr, 10), be = (uint32_t)strtoul(argv[12], nullptr, 10);
  const uint64_t n = in.size() / 2 / layers;  // elements per frame
  if (n * 2 * layers != in.size() || n % (2ull * be) != 0) {
    fprintf(stderr, "fkv: a %zu-byte input is not %u layers of K and V blocks of %u elements\n", in.size(), layers, be);
    return 2;
  }
  const uint32_t nb = (uint32_t)(n / (2ull * be)), cache_blocks = 2 * nb + 3;
  const uint64_t block_bytes = 2ull * be, layer_bytes = 2ull * cache_blocks * block_bytes;
  std::mt19937 rng(nb * 7 + layers);
  std::vector<int32_t> perm(cache_blocks);
  for (uint32_t i = 0; i < cache_blocks; i++) perm[i] = (int32_t)i;
  std::shuffle(perm.begin(), perm.end(), rng);
  int32_t* sids = reinterpret_cast<int32_t*>(exact(4ull * nb));
  int32_t* dids = reinterpret_cast<int32_t*>(exact(4ull * nb));
  for (uint32_t b = 0; b < nb; b++) sids[b] = perm[b], dids[b] = perm[nb + b];
  // Source: per layer K and V interleaved per block (FlashInfer's layout: V base = K base + a block, stride 2).
  uint8_t* sbuf = exact(layers * layer_bytes);
  memset(sbuf, 0x3C, layers * layer_bytes);
  uint64_t* sb = reinterpret_cast<uint64_t*>(exact(16ull * layers));
  for (uint32_t l = 0; l < layers; l++) {
    sb[2 * l] = (uint64_t)(sbuf + l * layer_bytes), sb[2 * l + 1] = sb[2 * l] + block_bytes;
    for (uint32_t kv = 0; kv < 2; kv++)
      for (uint32_t b = 0; b < nb; b++)
        memcpy((uint8_t*)sb[2 * l + kv] + (uint64_t)sids[b] * 2 * block_bytes,
               in.data() + (l * n + (uint64_t)kv * nb * be + (uint64_t)b * be) * 2, block_bytes);
  }
  uint8_t* ws = exact(pl.ws_len);
  memset(ws, 0, pl.ws_len);
  uint64_t* sizes = reinterpret_cast<uint64_t*>(exact(8ull * layers));
  uint8_t* frames = exact(stride * layers);
  EncParams p{};
  p.src = (uint64_t)sb, p.ids = (uint64_t)sids, p.dst = (uint64_t)frames, p.frame_stride = stride;
  p.sizes = (uint64_t)sizes, p.ws = (uint64_t)ws, p.stride_bytes = 2 * block_bytes;
  p.n = (uint32_t)n, p.frames = layers, p.chunks = pl.chunks, p.block_elems = be, p.n_blocks = nb, p.segs_per_frame = 2 * nb;
  p.raw_mode = pl.raw_mode;
  memcpy(p.codebook, pl.codebook, sizeof p.codebook);
  const PagedMap smap{sb, sids, p.stride_bytes, be, nb, 2 * nb};
  for (int rep = 0; rep < 2; rep++) {  // the second on the workspace the first left
    memset(frames, 0xA5, stride * layers);
    fast_launch(pl, p, smap);
  }
  for (uint32_t l = 0; l < layers; l++) {
    if (sizes[l] < kHeaderSize || sizes[l] > stride) {
      fprintf(stderr, "fkv: the encoder reported a %llu-byte frame %u\n", (unsigned long long)sizes[l], l);
      return 1;
    }
    writef((std::string(argv[13]) + "." + std::to_string(l)).c_str(), frames + l * stride, sizes[l]);
  }
  // Destination: per layer all K blocks, then all V blocks; other ids.
  uint8_t* dbuf = exact(layers * layer_bytes);
  memset(dbuf, 0xC3, layers * layer_bytes);
  uint64_t* db = reinterpret_cast<uint64_t*>(exact(16ull * layers));
  for (uint32_t l = 0; l < layers; l++)
    db[2 * l] = (uint64_t)(dbuf + l * layer_bytes), db[2 * l + 1] = db[2 * l] + cache_blocks * block_bytes;
  uint32_t status = 0;
  DecParams d{};
  d.src = (uint64_t)frames, d.frame_stride = stride, d.frame_cap = stride, d.dst = (uint64_t)db, d.ids = (uint64_t)dids;
  d.stride_bytes = block_bytes, d.status = (uint64_t)&status, d.out_bytes = 2 * n, d.frames = layers;
  d.chunks = (uint32_t)((2 * n + 8191) / 8192), d.block_elems = be, d.n_blocks = nb, d.segs_per_frame = 2 * nb;
  const PagedMap dmap{db, dids, d.stride_bytes, be, nb, 2 * nb};
  emu_launch(d.frames * d.chunks, 256, [&] { decode_tile<256, 1>(d, dmap); });
  printf("%u\n", status);
  std::vector<uint8_t> rt(in.size());
  std::vector<uint8_t> mark(layers * layer_bytes, 0);
  for (uint32_t l = 0; l < layers; l++)
    for (uint32_t kv = 0; kv < 2; kv++)
      for (uint32_t b = 0; b < nb; b++) {
        const uint8_t* at = (uint8_t*)db[2 * l + kv] + (uint64_t)dids[b] * block_bytes;
        memcpy(rt.data() + (l * n + (uint64_t)kv * nb * be + (uint64_t)b * be) * 2, at, block_bytes);
        memset(mark.data() + (at - dbuf), 1, block_bytes);
      }
  if (!written_only_where_marked(dbuf, mark, "fkv: destination")) return 1;
  writef(argv[14], rt.data(), rt.size());
  for (void* q : {(void*)sids, (void*)dids, (void*)sbuf, (void*)sb, (void*)ws, (void*)sizes, (void*)frames, (void*)dbuf, (void*)db}) free(q);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "crc") return crc(argv[2]);
  if (argc == 6 && std::string(argv[1]) == "blocks")
    return blocks((uint32_t)atoi(argv[2]), (uint32_t)atoi(argv[3]), strtoull(argv[4], nullptr, 10), strtoull(argv[5], nullptr, 10));
  if (argc == 13 && std::string(argv[1]) == "fenc") return fast_encode(argv);
  if (argc == 6 && std::string(argv[1]) == "fdec") return fast_decode(argv);
  if (argc == 15 && std::string(argv[1]) == "fkv") return fast_kv(argv);
  if (argc < 3) {
    fprintf(stderr, "usage: harness enc|dec|kv bf16|e4m3|e5m2 ...\n");
    return 2;
  }
  const std::string dt = argv[2];
  if (dt == "bf16") return run<HRBF16>(argc, argv);
  if (dt == "e4m3") return run<HRE4M3>(argc, argv);
  if (dt == "e5m2") return run<HRE5M2>(argc, argv);
  fprintf(stderr, "harness: unknown dtype %s\n", dt.c_str());
  return 2;
}
