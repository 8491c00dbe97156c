// Copies with non-temporal ("streaming") stores.
//
// A large gather writes tens of MiB that the CPU will not read again soon (a
// memory object headed for the CPU tier, disk or network). Ordinary stores
// first read every destination line into the cache (write-allocate) and evict
// useful data; streaming stores skip both, which on a memory-bound host is
// worth ~20-30% over memcpy. x86-64 only (SSE2 is baseline there); elsewhere
// this is memcpy. Callers must call store_fence() before publishing results.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmcache_ascend {

inline void copy_streaming(char* dst, const char* src, size_t n) {
#if defined(__SSE2__)
  // Head: bring dst to a 16-byte boundary with an ordinary copy.
  size_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  if (head > n) head = n;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), e);
  }
  std::memcpy(dst + i, src + i, n - i);
#else
  std::memcpy(dst, src, n);
#endif
}

// Orders this thread's streaming stores before anything it does next.
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace lmcache_ascend
