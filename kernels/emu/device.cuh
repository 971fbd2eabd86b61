// Host stand-in for kernels/device.cuh (its inline PTX has no host form), for the emulation in shim.h. The
// relaxed loads let the other threads run (emu_spin): the look-back polls its predecessors with them.
#pragma once
#include <stdint.h>
namespace sz {
inline void launch_dependents() {}
inline void wait_prerequisites() {}
inline uint4 load16(uint64_t a) { return __ldcs(reinterpret_cast<const uint4*>(a)); }
inline void store16(uint64_t a, uint4 v) { __stcs(reinterpret_cast<uint4*>(a), v); }
inline uint64_t ld_relaxed_gpu(const uint64_t* p) {
  emu_spin();
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
inline void st_relaxed_gpu(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline uint32_t ld_relaxed_gpu(const uint32_t* p) {
  emu_spin();
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
inline void st_relaxed_gpu(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline void cp_async16(void* smem, uint64_t gaddr) { memcpy(smem, reinterpret_cast<const void*>(gaddr), 16); }
inline void cp_async_wait_all() {}
inline uint32_t top_byte(uint32_t x) { return x >> 24; }
inline uint32_t div8(uint32_t x) { return x >> 3; }
inline uint32_t bit_select(uint32_t m, uint32_t a, uint32_t b) { return (a & m) | (b & ~m); }
inline uint32_t mad_if(bool p, uint32_t a, uint32_t b, uint32_t c) { return p ? a * b + c : c; }
inline uint32_t warp_uniform(uint32_t v) { return __reduce_min_sync(0xFFFFFFFFu, v); }
inline uint32_t ballot_and(uint32_t x, uint32_t m) { return __ballot_sync(0xFFFFFFFFu, (x & m) != 0); }
inline bool any_and(uint32_t x, uint32_t m) { return __any_sync(0xFFFFFFFFu, (x & m) != 0); }
template <typename T>
inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}
}  // namespace sz
