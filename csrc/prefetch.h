// Software prefetch of the next block run's bytes.
//
// Paged KV blocks lie at random places in a large pool, so the hardware
// prefetchers restart at every block and a gather waits on DRAM at each one.
// The gathers prefetch the next run's bytes while they copy the current run
// (interleaved with the copy, not in one burst: see plane_groups.cpp).
#pragma once

#include <cstdint>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace lmcache_ascend {

// Starts loading [p, p + n) into L2. Prefetches never fault.
inline void prefetch_bytes(const char* p, int64_t n) {
#if defined(__SSE2__)
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(n);
  for (uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63}; a < end; a += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
  }
#else
  (void)p, (void)n;
#endif
}

}  // namespace lmcache_ascend
