// Host emulation of the CUDA features the high-ratio kernels (kernels/entropy.cuh) use, so that their source runs
// under g++/clang++ with AddressSanitizer and no GPU. Force-included (-include shim.h) before the kernels.
//
// Each GPU thread of a block is a fiber (ucontext) on the one host thread; blocks run one after another, in index
// order, as the kernels' decoupled look-back assumes. A fiber runs until it reaches a warp collective, a barrier
// or a relaxed load (the look-back's spin), then yields to the next fiber of the block, round robin. Warp
// collectives exchange values through a per-warp barrier; __syncthreads is a per-block barrier. A thread that
// returns leaves its barriers; a full-warp collective after a lane of its warp returned, a barrier that can never
// complete, and a spin that never ends abort with a message instead of hanging.
#pragma once
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __constant__
#define __restrict__

// Aligned as CUDA aligns them: with -fsanitize=alignment, an access through a misaligned uint2/uint4 pointer (a
// fault on the GPU) is reported.
struct alignas(8) uint2 {
  uint32_t x, y;
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct EmuDim3 {
  uint32_t x, y, z;
};
// The running fiber's indices: set on every switch (all fibers share the host thread).
inline EmuDim3 threadIdx, blockIdx, blockDim, gridDim;
using std::max;
using std::min;

[[noreturn]] inline void emu_fatal(const char* what) {
  fprintf(stderr, "emu: block %u thread %u: %s\n", blockIdx.x, threadIdx.x, what);
  abort();
}

// ---- fibers ---------------------------------------------------------------------------------------------------
// A fiber's stack, with a guard page below it: a kernel that overflows it faults instead of writing elsewhere.
inline constexpr size_t kEmuStack = 128 << 10, kEmuGuard = 4096;

struct EmuStack {
  char* map = nullptr;
  EmuStack() {
    void* m = mmap(nullptr, kEmuGuard + kEmuStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m, kEmuGuard, PROT_NONE) != 0) {
      perror("emu: fiber stack");
      abort();
    }
    map = static_cast<char*>(m);
  }
  ~EmuStack() { munmap(map, kEmuGuard + kEmuStack); }
  EmuStack(const EmuStack&) = delete;
  EmuStack& operator=(const EmuStack&) = delete;
  char* get() const { return map + kEmuGuard; }
};

struct EmuFiber {
  ucontext_t ctx;
  EmuStack stack;
  bool done = false;
};

// glibc's swapcontext itself: AddressSanitizer's interceptor of it clears the shadow of the whole stack it switches
// to on every switch (it cannot know where the stack's live frames are), which made it the emulation's main cost.
// The fibers announce their switches (__sanitizer_start_switch_fiber), and each stack's shadow is cleared once
// when its fiber starts, so that clearing is not needed.
using EmuSwapFn = int (*)(ucontext_t*, const ucontext_t*);
inline EmuSwapFn emu_swapcontext = [] {
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  void* f = libc ? dlsym(libc, "swapcontext") : nullptr;
  return f ? reinterpret_cast<EmuSwapFn>(f) : &swapcontext;
}();

struct EmuBarrier;
struct EmuWarp;
inline std::vector<EmuFiber>* emu_fibers;
inline std::vector<EmuWarp>* emu_warps;
inline EmuBarrier* emu_block;
inline std::function<void()>* emu_kernel;
inline ucontext_t emu_main;
inline const void* emu_main_bottom;
inline size_t emu_main_size;
inline uint32_t emu_cur, emu_live;
inline uint64_t emu_stalled;   // consecutive yields of fibers that found their barrier still closed
inline uint64_t emu_idle;      // yields since a barrier last opened or a thread last arrived or returned
inline uint32_t emu_lane;
inline EmuWarp* emu_warp;

inline void emu_enter(uint32_t t);

// emu_switch saves the running context in from and resumes fiber to (or the launcher, to = UINT32_MAX). A fiber
// that has returned passes exiting: it is never resumed, and AddressSanitizer drops its fake stack.
inline void emu_switch(ucontext_t* from, uint32_t to, bool exiting) {
  ucontext_t* dst = &emu_main;
  const void* bottom = emu_main_bottom;
  size_t size = emu_main_size;
  if (to != UINT32_MAX) {
    dst = &(*emu_fibers)[to].ctx;
    bottom = (*emu_fibers)[to].stack.get();
    size = kEmuStack;
  }
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, bottom, size);
#else
  (void)bottom, (void)size, (void)exiting;
#endif
  emu_swapcontext(from, dst);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// emu_next returns the first live fiber after the running one, round robin (the running one if it is alone).
inline uint32_t emu_next() {
  const uint32_t n = (uint32_t)emu_fibers->size();
  uint32_t i = emu_cur;
  do i = (i + 1) % n;
  while ((*emu_fibers)[i].done && i != emu_cur);
  return i;
}

inline void emu_yield() {
  const uint32_t me = emu_cur, to = emu_next();
  if (to == me) return;
  emu_enter(to);
  emu_switch(&(*emu_fibers)[me].ctx, to, false);
}

// emu_progress notes that a thread arrived at a barrier, a barrier opened or a thread returned.
inline void emu_progress() { emu_stalled = emu_idle = 0; }

// ---- barriers -------------------------------------------------------------------------------------------------
struct EmuBarrier {
  uint32_t expected = 0, arrived = 0;
  uint64_t gen = 0;
  uint32_t acc = 0, result = 0;  // __syncthreads_or's OR

  uint32_t wait(uint32_t v = 0) {
    const uint64_t g = gen;
    acc |= v;
    emu_progress();
    if (++arrived == expected) {
      open();
      return result;
    }
    while (gen == g) {
      if (++emu_stalled > 2ull * emu_live + 2) emu_fatal("deadlock: every thread waits at a barrier that cannot open");
      emu_yield();
    }
    return result;
  }
  void drop() {
    if (--expected == arrived && arrived) open();
  }
  void open() {
    result = acc;
    acc = arrived = 0;
    gen++;
    emu_progress();
  }
};

struct EmuWarp {
  EmuBarrier bar;
  uint64_t slot[2][32];  // double-buffered: one barrier per exchange
  uint32_t exited = 0;          // lanes that returned
  uint32_t lane_parity[32] = {};  // the slot buffer each lane's next exchange uses
};

inline void emu_enter(uint32_t t) {
  emu_cur = t;
  threadIdx = {t, 0, 0};
  emu_lane = t % 32;
  emu_warp = &(*emu_warps)[t / 32];
}

// emu_xchg publishes v for the lanes of the warp and returns every lane's value (valid until the lane's next
// exchange). The lanes in mask must all be running.
inline const uint64_t* emu_xchg(uint32_t mask, uint64_t v) {
  if (emu_warp->exited & mask) emu_fatal("warp collective names a lane that has returned");
  uint32_t& par = emu_warp->lane_parity[emu_lane];
  uint64_t* s = emu_warp->slot[par];
  par ^= 1;
  s[emu_lane] = v;
  emu_warp->bar.wait();
  return s;
}

inline uint32_t __ballot_sync(uint32_t mask, int p) {
  const uint64_t* s = emu_xchg(mask, p != 0);
  uint32_t m = 0;
  for (int i = 0; i < 32; i++) m |= (uint32_t)(s[i] & 1) << i;
  return m & mask;
}
inline uint32_t __reduce_min_sync(uint32_t mask, uint32_t v) {
  const uint64_t* s = emu_xchg(mask, v);
  uint32_t m = UINT32_MAX;
  for (int i = 0; i < 32; i++)
    if ((mask >> i) & 1) m = (uint32_t)s[i] < m ? (uint32_t)s[i] : m;
  return m;
}
inline int __any_sync(uint32_t mask, int p) { return __ballot_sync(mask, p) != 0; }
inline int __all_sync(uint32_t mask, int p) { return __ballot_sync(mask, p) == mask; }
template <class T>
inline T emu_shfl(uint32_t mask, T v, int src) {
  static_assert(sizeof(T) <= 8);
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  const uint64_t r = emu_xchg(mask, b)[src];
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}
template <class T>
inline T __shfl_sync(uint32_t mask, T v, int src) {
  return emu_shfl(mask, v, src & 31);
}
template <class T>
inline T __shfl_xor_sync(uint32_t mask, T v, int m) {
  return emu_shfl(mask, v, ((int)emu_lane ^ m) & 31);
}
template <class T>
inline T __shfl_up_sync(uint32_t mask, T v, unsigned d) {
  const int l = (int)emu_lane;
  return emu_shfl(mask, v, l - (int)d >= 0 ? l - (int)d : l);
}
template <class T>
inline T __shfl_down_sync(uint32_t mask, T v, unsigned d) {
  const int l = (int)emu_lane;
  return emu_shfl(mask, v, l + (int)d < 32 ? l + (int)d : l);
}
inline void __syncwarp(uint32_t mask = ~0u) { emu_xchg(mask, 0); }
inline void __syncthreads() { emu_block->wait(); }
inline int __syncthreads_or(int p) { return emu_block->wait(p != 0) != 0; }
inline int __popc(uint32_t x) { return __builtin_popcount(x); }
inline int __popcll(uint64_t x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(uint32_t x) { return x ? __builtin_clz(x) : 32; }
inline uint32_t __brev(uint32_t x) {
  uint32_t r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// The upper word of hi:lo shifted left by shift mod 32 (CUDA's wrapping funnel shift).
inline uint32_t __funnelshift_l(uint32_t lo, uint32_t hi, uint32_t shift) {
  const uint64_t v = ((uint64_t)hi << 32 | lo) << (shift & 31);
  return (uint32_t)(v >> 32);
}
inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t shift) {
  const uint64_t v = ((uint64_t)hi << 32 | lo) >> (shift & 31);
  return (uint32_t)v;
}
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t v = (uint64_t)y << 32 | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; i++) r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
template <class T>
inline T __ldcs(const T* p) {
  return *p;
}
template <class T>
inline void __stcs(T* p, T v) {
  *p = v;
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
inline uint32_t atomicAdd(uint32_t* p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline uint32_t atomicOr(uint32_t* p, uint32_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline uint32_t atomicXor(uint32_t* p, uint32_t v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
inline uint32_t atomicCAS(uint32_t* p, uint32_t c, uint32_t v) {
  __atomic_compare_exchange_n(p, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return c;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { emu_yield(); }
inline size_t __cvta_generic_to_shared(const void*) { return 0; }

// emu_spin is called by the relaxed loads (the look-back polls its predecessors with them): the fiber lets the
// others run, and a poll that no thread ever answers aborts.
inline void emu_spin() {
  if (++emu_idle > 50'000'000) emu_fatal("livelock: a thread polls memory that no thread writes");
  emu_stalled = 0;
  emu_yield();
}

// The dynamic shared memory of a block (entropy.cuh's extern __shared__ array is patched to point here).
alignas(16) inline uint8_t emu_dyn_smem[1 << 17];

inline void emu_start() {
  const uint32_t me = emu_cur;
#ifdef EMU_ASAN
  // Fiber 0 starts from the launcher: note the launcher's stack, which the last fiber returns to.
  if (me == 0) __sanitizer_finish_switch_fiber(nullptr, &emu_main_bottom, &emu_main_size);
  else __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  (*emu_kernel)();
  auto& fs = *emu_fibers;
  fs[me].done = true;
  emu_live--;
  emu_progress();
  emu_warp->exited |= 1u << emu_lane;
  emu_warp->bar.drop();
  emu_block->drop();
  if (emu_live == 0) {
    emu_switch(&fs[me].ctx, UINT32_MAX, true);
  } else {
    const uint32_t to = emu_next();
    emu_enter(to);
    emu_switch(&fs[me].ctx, to, true);
  }
  emu_fatal("a returned thread was resumed");
}

// emu_launch runs kernel on grid blocks of block threads (a multiple of 32), block after block.
template <class K>
void emu_launch(uint32_t grid, uint32_t block, K kernel) {
  if (block == 0 || block % 32) emu_fatal("block size must be a positive multiple of 32");
  std::function<void()> k = kernel;
  std::vector<EmuFiber> fibers(block);
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (uint32_t b = 0; b < grid; b++) {
    std::vector<EmuWarp> warps(block / 32);
    for (auto& w : warps) w.bar.expected = 32;
    EmuBarrier bbar;
    bbar.expected = block;
    emu_fibers = &fibers;
    emu_warps = &warps;
    emu_block = &bbar;
    emu_kernel = &k;
    emu_live = block;
    emu_progress();
    blockIdx = {b, 0, 0};
    for (uint32_t t = 0; t < block; t++) {
      auto& f = fibers[t];
      f.done = false;
#ifdef EMU_ASAN
      __asan_unpoison_memory_region(f.stack.get(), kEmuStack);
#endif
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kEmuStack;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, emu_start, 0);
    }
    emu_enter(0);
    emu_switch(&emu_main, 0, false);
    if (emu_live != 0) emu_fatal("block ended with threads still running");
  }
}
