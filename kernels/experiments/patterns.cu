// The encoder's and decoder's memory access patterns without the format's details, at 256 MiB: what a
// chunk-per-warp encoder reaches when its code and residual stores are line-aligned (off0, off128) or only
// 16-byte aligned (off16, off80: format v1's sections), and a chunk-per-block decoder.
// On the GPU machine: nvcc -O3 -arch=sm_90 -std=c++17 --extended-lambda patterns.cu -o patterns && ./patterns
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1);} } while (0)

__global__ void copy16(const uint4* s, uint4* d, size_t n16) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) d[i] = s[i];
}
__device__ __forceinline__ uint32_t lut(const uint8_t* t, uint32_t x) { return t[x & 0xFF]; }

// MODE 0: trivial compute; 1: table lookups like encode_unit4.
// One warp per 4096-element chunk, U units per lane in flight, 16/U rounds.
template <int U, int MODE, int WIDE>
__global__ void __launch_bounds__(256) enc_pat(const uint8_t* src, uint8_t* codes, uint8_t* res, size_t chunks) {
  __shared__ uint8_t tab[256];
  for (int i = threadIdx.x; i < 256; i += 256) tab[i] = (i >= 112 && i < 128) ? i - 112 : 0x10;
  __syncthreads();
  const uint32_t lane = threadIdx.x & 31;
  const size_t g = (size_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  if (g >= chunks) return;
  const uint8_t* s = src + g * 8192;
  uint8_t* cd = codes + g * 2048;
  uint8_t* rs = res + g * 4096;
  uint32_t acc = 0;
#pragma unroll 1
  for (int r = 0; r < 16 / U; r++) {
    uint4 v[U];
#pragma unroll
    for (int j = 0; j < U; j++) v[j] = __ldcs(reinterpret_cast<const uint4*>(s) + (r * U + j) * 32 + lane);
#pragma unroll
    for (int j = 0; j < U; j++) {
      const uint32_t w[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
      uint32_t rr[4], c[8];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        rr[i] = (w[i] & 0x007F007Fu) | ((w[i] >> 8) & 0x00800080u);
        if (MODE == 1) { c[2 * i] = lut(tab, w[i] >> 7); c[2 * i + 1] = lut(tab, w[i] >> 23); }
        else { c[2 * i] = (w[i] >> 7) & 0xF; c[2 * i + 1] = (w[i] >> 23) & 0xF; }
      }
      uint2 rv = make_uint2(__byte_perm(rr[0], rr[1], 0x6420), __byte_perm(rr[2], rr[3], 0x6420));
      const uint32_t x0 = __byte_perm(__byte_perm(c[0], c[1], 0x0040), __byte_perm(c[2], c[3], 0x0040), 0x5410);
      const uint32_t x1 = __byte_perm(__byte_perm(c[4], c[5], 0x0040), __byte_perm(c[6], c[7], 0x0040), 0x5410);
      const uint32_t y0 = x0 & 0x0F0F0F0Fu, y1 = x1 & 0x0F0F0F0Fu;
      uint32_t cw = __byte_perm(y0 | (y0 >> 4), y1 | (y1 >> 4), 0x6420);
      acc |= (x0 | x1) & 0x10101010u;
      const int u = (r * U + j) * 32 + lane;
      if (WIDE) {
        // gather 4 lanes' code words into one 16B store, 2 lanes' residuals into one 16B store
        uint32_t a = __shfl_sync(~0u, cw, (lane & ~3) + 0), b = __shfl_sync(~0u, cw, (lane & ~3) + 1);
        uint32_t cc = __shfl_sync(~0u, cw, (lane & ~3) + 2), d = __shfl_sync(~0u, cw, (lane & ~3) + 3);
        if ((lane & 3) == 0) *reinterpret_cast<uint4*>(cd + 4 * u) = make_uint4(a, b, cc, d);
        uint32_t ox = __shfl_xor_sync(~0u, rv.x, 1), oy = __shfl_xor_sync(~0u, rv.y, 1);
        if ((lane & 1) == 0) *reinterpret_cast<uint4*>(rs + 8 * u) = make_uint4(rv.x, rv.y, ox, oy);
      } else {
        *reinterpret_cast<uint32_t*>(cd + 4 * u) = cw;
        *reinterpret_cast<uint2*>(rs + 8 * u) = rv;
      }
    }
  }
  if (acc == 0x12345678) codes[0] = 1;
}

// decode pattern: read 4B codes + 8B residuals per unit, write 16B. One chunk per block of T threads.
template <int T>
__global__ void __launch_bounds__(T) dec_pat(const uint8_t* codes, const uint8_t* res, uint8_t* dst) {
  __shared__ uint32_t pairs[256];
  for (int i = threadIdx.x; i < 256; i += T) pairs[i] = ((i & 0xF) + 112) << 7 | (((i >> 4) + 112) << 23);
  constexpr int UPT = 512 / T;
  const size_t c = blockIdx.x;
  uint32_t cw[UPT]; uint2 rw[UPT];
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const int u = threadIdx.x + j * T;
    cw[j] = __ldcs(reinterpret_cast<const uint32_t*>(codes + c * 2048 + 4 * u));
    rw[j] = __ldcs(reinterpret_cast<const uint2*>(res + c * 4096 + 8 * u));
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < UPT; j++) {
    const int u = threadIdx.x + j * T;
    auto sp = [](uint32_t r) { uint32_t x = (r & 0xFF) | ((r & 0xFF00) << 8); return (x & 0x007F007Fu) | ((x & 0x00800080u) << 8); };
    uint4 o = make_uint4(sp(rw[j].x) | pairs[cw[j] & 0xFF], sp(rw[j].x >> 16) | pairs[(cw[j] >> 8) & 0xFF],
                         sp(rw[j].y) | pairs[(cw[j] >> 16) & 0xFF], sp(rw[j].y >> 16) | pairs[cw[j] >> 24]);
    __stcs(reinterpret_cast<uint4*>(dst + c * 8192 + 16 * u), o);
  }
}

__global__ void fill(uint32_t* p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    // two bf16 with exponents 112..127, random sign/mantissa
    uint32_t lo = (h & 0x807F) | ((112 + ((h >> 8) & 15)) << 7), hi = ((h >> 16) & 0x807F) | ((112 + ((h >> 24) & 15)) << 7);
    p[i] = lo | hi << 16;
  }
}
int main() {
  const size_t N = 256ull << 20;  // input bytes
  const size_t chunks = N / 8192;
  uint8_t *src, *out, *dec;
  CK(cudaMalloc(&src, N)); CK(cudaMalloc(&out, N + 4096)); CK(cudaMalloc(&dec, N));
  fill<<<1024, 256>>>((uint32_t*)src, N / 4); CK(cudaMemset(out, 0, N + 4096));
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  auto time = [&](const char* name, double bytes, auto fn) {
    for (int i = 0; i < 3; i++) fn();
    float best = 1e9, tot = 0; int R = 20;
    for (int i = 0; i < R; i++) { cudaEventRecord(a); fn(); cudaEventRecord(b); cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); tot += ms; if (ms < best) best = ms; }
    CK(cudaGetLastError());
    printf("%-44s %7.0f GB/s (mean %7.0f)\n", name, bytes / best / 1e6, bytes / (tot / R) / 1e6);
  };
  time("cudaMemcpy D2D (read+write)", 2.0 * N, [&] { cudaMemcpyAsync(dec, src, N, cudaMemcpyDeviceToDevice); });
  time("copy16 kernel (read+write)", 2.0 * N, [&] { copy16<<<132 * 8, 256>>>((const uint4*)src, (uint4*)dec, N / 16); });
  const size_t codesLen = N / 4, resOff = N / 4;  // codes at out+o, residuals at out+o+N/4
  for (int off : {0, 16, 80, 128}) {
    char name[128];
#define RUN(U, M, W) snprintf(name, sizeof name, "enc U%d mode%d wide%d off%d", U, M, W, off); \
    time(name, (double)N, [&] { enc_pat<U, M, W><<<(chunks + 7) / 8, 256>>>(src, out + off, out + off + resOff, chunks); });
    RUN(8, 0, 0) RUN(8, 1, 0) RUN(16, 1, 0) RUN(8, 1, 1) RUN(4, 1, 1)
    if (off == 0 || off == 80) {
      snprintf(name, sizeof name, "dec T256 off%d", off);
      time(name, (double)N, [&] { dec_pat<256><<<chunks, 256>>>(out + off, out + off + resOff, dec); });
      snprintf(name, sizeof name, "dec T128 off%d", off);
      time(name, (double)N, [&] { dec_pat<128><<<chunks, 128>>>(out + off, out + off + resOff, dec); });
      snprintf(name, sizeof name, "dec T512 off%d", off);
      time(name, (double)N, [&] { dec_pat<512><<<chunks, 512>>>(out + off, out + off + resOff, dec); });
    }
  }
  (void)codesLen;
  return 0;
}
