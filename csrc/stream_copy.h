// Copies with non-temporal ("streaming") stores.
//
// A large gather writes tens of MiB that the CPU will not read again soon (a
// memory object headed for the CPU tier, disk or network). Ordinary stores
// first read every destination line into the cache (write-allocate) and evict
// useful data; streaming stores skip both, which on a memory-bound host is
// worth ~20-30% over memcpy. x86-64 only (SSE2 is baseline there); elsewhere
// this is memcpy. Callers must call store_fence() before publishing results.
//
// Where the CPU has AVX2 the stores are 32 bytes wide, whatever -march the
// build used (the wide loops are compiled for AVX2 alone and called only after
// a run-time check): a gather of 32 KiB block runs measured 1.2-1.3x the
// 16-byte stores per thread on an AMD EPYC, which is what a host with memory
// bandwidth to spare per core sees; 64-byte AVX-512 stores gave nothing more.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__SSE2__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LMCACHE_ASCEND_WIDE_STREAMING 1
#include <immintrin.h>
#endif

namespace lmcache_ascend {

// True where 32-byte streaming stores are used (the CPU and its OS support AVX2).
inline bool wide_streaming() {
#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
#else
  return false;
#endif
}

namespace detail {

#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
// `lines` runs of 128 bytes; dst 32-byte aligned.
__attribute__((target("avx2"))) inline void stream_128s_wide(char* dst, const char* src, size_t lines) {
  for (size_t i = 0; i < lines; ++i, dst += 128, src += 128) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
    __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64));
    __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 96), e);
  }
}

// `lines` runs of 64 bytes; dst 32-byte aligned.
__attribute__((target("avx2"))) inline void stream_64s_wide(char* dst, const char* src, size_t lines) {
  for (size_t i = 0; i < lines; ++i, dst += 64, src += 64) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 32), b);
  }
}
#endif

#if defined(__SSE2__)
// `lines` runs of 64 bytes; dst 16-byte aligned.
inline void stream_64s_narrow(char* dst, const char* src, size_t lines) {
  for (size_t i = 0; i < lines; ++i, dst += 64, src += 64) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32));
    __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), e);
  }
}
#endif

}  // namespace detail

// copy_streaming() with the store width chosen by the caller: `wide` (32-byte
// stores, only where wide_streaming() is true) or 16-byte. Exposed for tests,
// which check both widths on every machine that has them.
inline void copy_streaming_width(char* dst, const char* src, size_t n, bool wide) {
#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
  if (wide && n >= 256) {
    const size_t head = (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31;
    std::memcpy(dst, src, head);
    const size_t lines = (n - head) / 128;
    detail::stream_128s_wide(dst + head, src + head, lines);
    std::memcpy(dst + head + lines * 128, src + head + lines * 128, n - head - lines * 128);
    return;
  }
#else
  (void)wide;
#endif
#if defined(__SSE2__)
  // Head: bring dst to a 16-byte boundary with an ordinary copy.
  size_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  if (head > n) head = n;
  std::memcpy(dst, src, head);
  const size_t lines = (n - head) / 64;
  detail::stream_64s_narrow(dst + head, src + head, lines);
  std::memcpy(dst + head + lines * 64, src + head + lines * 64, n - head - lines * 64);
#else
  std::memcpy(dst, src, n);
#endif
}

// `lines` whole cache lines to a 64-byte aligned dst, streamed (32 bytes wide
// where `wide`, which only wide_streaming() may allow); memcpy off x86-64.
inline void stream_lines(char* dst, const char* src, size_t lines, bool wide) {
#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
  if (wide) {
    detail::stream_64s_wide(dst, src, lines);
    return;
  }
#else
  (void)wide;
#endif
#if defined(__SSE2__)
  detail::stream_64s_narrow(dst, src, lines);
#else
  std::memcpy(dst, src, lines * 64);
#endif
}

inline void copy_streaming(char* dst, const char* src, size_t n) {
  copy_streaming_width(dst, src, n, wide_streaming());
}

// Orders this thread's streaming stores before anything it does next.
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace lmcache_ascend
