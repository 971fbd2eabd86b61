// Times the streaming encoder's stages (encode, finish, raw-fallback check) and the decoder separately, on
// real KV tiled to a size, and checks the frame equals the tile encoder's and the decode is bit-exact.
// On the GPU machine: nvcc -O3 -arch=sm_90 -std=c++17 --extended-lambda stages.cu -o stages &&
//   ./stages ../../tests/data/kv_evaluation.safetensors <KiB>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include "../splitzip.cu"
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); exit(1);} } while (0)

int main(int argc, char** argv) {
  FILE* fp = fopen(argv[1], "rb");
  std::vector<uint8_t> file;
  { uint8_t buf[1 << 16]; size_t k; while ((k = fread(buf, 1, sizeof buf, fp)) > 0) file.insert(file.end(), buf, buf + k); }
  uint64_t hl; memcpy(&hl, file.data(), 8);
  std::vector<uint16_t> kv((file.size() - 8 - hl) / 2);
  memcpy(kv.data(), file.data() + 8 + hl, kv.size() * 2);
  const size_t N = (size_t)atoll(argv[2]) << 10, n = N / 2;
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; i++) {
    size_t copy = i / kv.size();
    uint32_t x = (uint32_t)(copy * 2654435761u + i * 40503u); x ^= x >> 13;
    h[i] = kv[i % kv.size()] ^ (copy ? (x & 7) : 0);
  }
  uint64_t hist[256] = {};
  for (size_t i = 0; i < n; i++) hist[(h[i] >> 7) & 0xFF]++;
  int order[256]; for (int i = 0; i < 256; i++) order[i] = i;
  std::stable_sort(order, order + 256, [&](int a, int b) { return hist[a] > hist[b]; });
  EncParams p{};
  for (int k = 0; k < 16; k++) p.codebook[k / 4] |= (uint32_t)order[k] << (8 * (k % 4));
  uint8_t *src, *dst, *dst2, *ws, *out; uint64_t* sizes; uint32_t* status;
  const size_t cap = 64 + N + 4096;
  CK(cudaMalloc(&src, N)); CK(cudaMalloc(&dst, cap)); CK(cudaMalloc(&dst2, cap)); CK(cudaMalloc(&out, N));
  CK(cudaMalloc(&ws, 96 << 20)); CK(cudaMalloc(&sizes, 64)); CK(cudaMalloc(&status, 64));
  CK(cudaMemcpy(src, h.data(), N, cudaMemcpyHostToDevice));
  const uint32_t chunks = (uint32_t)((n + 4095) / 4096), groups = (chunks + kGroup - 1) / kGroup;
  const uint32_t fgrid = (groups + 7) / 8;
  p.src = (uint64_t)src; p.dst = (uint64_t)dst; p.sizes = (uint64_t)sizes; p.ws = (uint64_t)ws;
  p.n = (uint32_t)n; p.frames = 1; p.chunks = chunks;
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  auto time = [&](const char* name, auto fn) {
    for (int i = 0; i < 2; i++) fn();
    std::vector<float> t;
    for (int i = 0; i < 15; i++) { cudaEventRecord(a); fn(); cudaEventRecord(b); cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); t.push_back(ms); }
    CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    std::sort(t.begin(), t.end());
    printf("%7zu KiB %-36s %8.1f us  %6.0f GB/s\n", N >> 10, name, t[t.size() / 2] * 1e3, N / (t[t.size() / 2] * 1e6));
  };
  time("memcpy D2D (one side)", [&] { cudaMemcpyAsync(out, src, N, cudaMemcpyDeviceToDevice); });
  auto raw = [&] { sz_raw_t256_dense<<<std::min<uint32_t>(chunks, 528), 256>>>(p); };
  auto tile = [&] { cudaMemsetAsync(ws, 0, 8 * (2 + chunks)); sz_encode_t256c4_dense<<<(chunks + 3) / 4, 256>>>(p); raw(); };
  p.dst = (uint64_t)dst2; tile(); p.dst = (uint64_t)dst;
  uint64_t len2; CK(cudaMemcpy(&len2, sizes, 8, cudaMemcpyDeviceToHost));
  std::vector<uint8_t> f2(len2); CK(cudaMemcpy(f2.data(), dst2, len2, cudaMemcpyDeviceToHost));
  { auto enc = [&] { sz_encode_s256u8_dense<<<(chunks + 7) / 8, 256>>>(p); };
    auto fin = [&] { sz_finish_dense<<<fgrid, 256>>>(p); };
    time("s256u8 enc+fin+raw", [&] { enc(); fin(); raw(); });
    time("s256u8 enc", enc);
    time("s256u8 fin", fin);
    time("raw", raw);
    time("noop", [&] { sz_noop<<<1, 32>>>(); });
    CK(cudaMemset(dst, 0x5A, cap)); enc(); fin(); raw();
    uint64_t len; CK(cudaMemcpy(&len, sizes, 8, cudaMemcpyDeviceToHost));
    std::vector<uint8_t> f1(len); CK(cudaMemcpy(f1.data(), dst, len, cudaMemcpyDeviceToHost));
    printf("   frame %lu B ratio %.4f; equals tile encoder's: %s\n", len, (double)N / len, f1 == f2 ? "yes" : "NO");
  }
  DecParams d{};
  d.src = (uint64_t)dst2; d.frame_cap = len2; d.dst = (uint64_t)out; d.status = (uint64_t)status; d.out_bytes = N; d.frames = 1; d.chunks = chunks;
  time("decode s256u8", [&] { cudaMemsetAsync(status, 0, 4); sz_decode_s256u8_dense<<<chunks, 256>>>(d); });
  time("decode s256u8 without memset", [&] { sz_decode_s256u8_dense<<<chunks, 256>>>(d); });
  return 0;
}
