// Device primitives the kernels share: programmatic dependent launch, streaming and relaxed memory accesses,
// cp.async, warp reductions.
#pragma once

#include <stdint.h>

namespace sz {

// ---- programmatic dependent launch ---------------------------------------------------------------------------
// Built for sm_90 (splitzip_sm90.ptx), an encode kernel lets the kernel after it (the raw-fallback check) launch
// as soon as all its blocks run, and that waits at griddepcontrol.wait for its writes: its launch latency
// (~6 µs on an H100) hides behind the encoder's tail instead of following it (the Go side launches it with
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
// top_byte is x >> 24. As inline PTX, a table index scaled after it stays a shift and one multiply-add with the
// table's address; the compiler would fold the scaling into the shift and a mask, and add the address apart.
__device__ __forceinline__ uint32_t top_byte(uint32_t x) {
  uint32_t r;
  asm("shr.u32 %0, %1, 24;" : "=r"(r) : "r"(x));
  return r;
}

// div8 is x / 8 as the high half of a multiply by 2^29, which runs on the FMA pipe: the high-ratio encoder's
// placing loop is bound by its ALU pipe, where a shift would go. As inline PTX it stays a multiply.
__device__ __forceinline__ uint32_t div8(uint32_t x) {
  uint32_t r;
  asm("mul.hi.u32 %0, %1, 536870912;" : "=r"(r) : "r"(x));
  return r;
}

// bit_select is a's bits where m has ones and b's elsewhere, as one LOP3: written as (a & m) | (b & ~m) with m a
// constant, the compiler keeps both masks as constants and spends two.
__device__ __forceinline__ uint32_t bit_select(uint32_t m, uint32_t a, uint32_t b) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xCA;" : "=r"(r) : "r"(m), "r"(a), "r"(b));
  return r;
}

// mad_if is p ? a * b + c : c as one predicated multiply-add; the compiler selects b or 0 first, an ALU
// instruction more.
__device__ __forceinline__ uint32_t mad_if(bool p, uint32_t a, uint32_t b, uint32_t c) {
  asm("{\n\t.reg .pred q;\n\tsetp.ne.u32 q, %3, 0;\n\t@q mad.lo.u32 %0, %1, %2, %0;\n\t}"
      : "+r"(c)
      : "r"(a), "r"(b), "r"((uint32_t)p));
  return c;
}

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// warp_uniform returns v, which every lane of the warp holds alike, where the compiler can see that: a warp
// reduction's result is uniform. A warp whose every branch and exit is uniform needs no convergence check before
// its ballots (two instructions a step of the high-ratio decoder or encoder).
__device__ __forceinline__ uint32_t warp_uniform(uint32_t v) { return __reduce_min_sync(0xFFFFFFFFu, v); }
// ballot_and is the warp's ballot of (x & m) != 0. As inline PTX it is a LOP3 into a predicate and the vote; the
// compiler makes the test a shift, a mask and a compare.
__device__ __forceinline__ uint32_t ballot_and(uint32_t x, uint32_t m) {
  uint32_t r;
  asm("{\n\t.reg .pred p;\n\t.reg .b32 t;\n\tand.b32 t, %1, %2;\n\tsetp.ne.u32 p, t, 0;\n\t"
      "vote.sync.ballot.b32 %0, p, 0xffffffff;\n\t}"
      : "=r"(r)
      : "r"(x), "r"(m));
  return r;
}
// any_and is whether some lane of the warp has (x & m) != 0, as inline PTX like ballot_and.
__device__ __forceinline__ bool any_and(uint32_t x, uint32_t m) {
  uint32_t r;
  asm("{\n\t.reg .pred p, q;\n\t.reg .b32 t;\n\tand.b32 t, %1, %2;\n\tsetp.ne.u32 p, t, 0;\n\t"
      "vote.sync.any.pred q, p, 0xffffffff;\n\tselp.u32 %0, 1, 0, q;\n\t}"
      : "=r"(r)
      : "r"(x), "r"(m));
  return r != 0;
}
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

}  // namespace sz
