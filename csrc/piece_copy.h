// Strided copies of many small fixed-size pieces.
//
// Several Ascend layouts move a token as many short runs: 310P NZ keeps a row
// as 16-element (32-byte bf16) pieces 512 bytes apart, and plane tuples (MLA,
// DSA) keep a 2-byte scale or a 128-byte rope next to a 1 KiB latent. A
// variable-length std::memcpy per piece is a library call whose cost dwarfs
// 32 bytes: copy_pieces() dispatches the piece size to a compile-time
// constant, so the compiler inlines the moves, and loops over a whole column
// of pieces (a block run's tokens, or a token's heads) per call.
#pragma once

#include <cstdint>
#include <cstring>

#include "stream_copy.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmcache_ascend {

// `count` pieces of N bytes: piece i goes from src + i * src_step to
// dst + i * dst_step. Streaming (NT) requires N % 16 == 0 and a 16-byte
// aligned dst and dst_step; the caller checks (see copy_pieces()).
template <int64_t N, bool NT>
inline void copy_pieces_fixed(char* dst, int64_t dst_step, const char* src,
                              int64_t src_step, int64_t count) {
  for (int64_t i = 0; i < count; ++i, dst += dst_step, src += src_step) {
#if defined(__SSE2__)
    if constexpr (NT) {
      for (int64_t b = 0; b < N; b += 16) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + b));
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + b), v);
      }
      continue;
    }
#endif
    std::memcpy(dst, src, N);
  }
}

#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
// copy_pieces_fixed<N, true> with 32-byte stores (stream_copy.h): N % 32 == 0,
// dst and dst_step 32-byte aligned, the CPU has AVX2 (the caller checks).
template <int64_t N>
__attribute__((target("avx2"))) inline void stream_pieces_wide(char* dst, int64_t dst_step, const char* src,
                                                             int64_t src_step, int64_t count) {
  static_assert(N % 32 == 0, "whole 32-byte stores");
  for (int64_t i = 0; i < count; ++i, dst += dst_step, src += src_step) {
    for (int64_t b = 0; b < N; b += 32) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + b));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + b), v);
    }
  }
}
#endif

// `count` destination cache lines, each gathered from 64 / N pieces of N
// bytes: line i at dst + i * dst_step takes piece j from
// src + i * src_step + j * piece_step. A line's stores are issued back to back
// and streamed, so it leaves the write-combining buffer whole: no
// read-for-ownership and no partial-line write (310P NZ's 32-byte pieces,
// written one piece column at a time, land half a line each). dst and
// dst_step must be 64-byte aligned; the callers check (plane_groups.cpp).
template <int64_t N>
inline void stream_gathered_lines(char* dst, int64_t dst_step, const char* src, int64_t src_step,
                                  int64_t piece_step, int64_t count) {
  static_assert(N % 16 == 0 && 64 % N == 0, "a line is a whole number of 16-byte pieces");
  for (int64_t i = 0; i < count; ++i, dst += dst_step, src += src_step) {
#if defined(__SSE2__)
    for (int64_t j = 0; j < 64 / N; ++j) {
      for (int64_t b = 0; b < N; b += 16) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j * piece_step + b));
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + j * N + b), v);
      }
    }
#else
    for (int64_t j = 0; j < 64 / N; ++j) std::memcpy(dst + j * N, src + j * piece_step, N);
#endif
  }
}

// stream_gathered_lines<N> for a piece size known only at run time: 16 or 32
// bytes (the callers check, as streams_piece_lines / loads_piece_lines do).
// `allow_wide` = false keeps 16-byte stores (tests compare both widths).
inline void stream_gathered_lines(int64_t piece, char* dst, int64_t dst_step, const char* src,
                                  int64_t src_step, int64_t piece_step, int64_t count,
                                  bool allow_wide = true) {
#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
  if (piece == 32 && allow_wide && wide_streaming()) {
    // a line is two 32-byte pieces: each is one 32-byte store, still back to back
    for (int64_t i = 0; i < count; ++i, dst += dst_step, src += src_step) {
      stream_pieces_wide<32>(dst, 32, src, piece_step, 2);
    }
    return;
  }
#else
  (void)allow_wide;
#endif
  if (piece == 16) {
    stream_gathered_lines<16>(dst, dst_step, src, src_step, piece_step, count);
  } else {
    stream_gathered_lines<32>(dst, dst_step, src, src_step, piece_step, count);
  }
}

// copy_pieces_fixed<N> with streaming stores where `nt`, 32 bytes wide where
// also `wide` (the caller checks alignment and wide_streaming()).
template <int64_t N>
inline void copy_pieces_n(char* dst, int64_t dst_step, const char* src, int64_t src_step,
                          int64_t count, bool nt, bool wide) {
#if defined(LMCACHE_ASCEND_WIDE_STREAMING)
  if constexpr (N % 32 == 0) {
    if (wide) {
      stream_pieces_wide<N>(dst, dst_step, src, src_step, count);
      return;
    }
  }
#else
  (void)wide;
#endif
  if (nt) {
    copy_pieces_fixed<N, true>(dst, dst_step, src, src_step, count);
  } else {
    copy_pieces_fixed<N, false>(dst, dst_step, src, src_step, count);
  }
}

inline void copy_pieces_any(char* dst, int64_t dst_step, const char* src,
                            int64_t src_step, int64_t count, int64_t n, bool nt, bool wide) {
  for (int64_t i = 0; i < count; ++i, dst += dst_step, src += src_step) {
    if (nt) {
      copy_streaming_width(dst, src, static_cast<size_t>(n), wide);
    } else {
      std::memcpy(dst, src, static_cast<size_t>(n));
    }
  }
}

// Dispatches n to a fixed-size loop for the sizes real layouts use (fp16/bf16
// scale 2, NZ piece 32 (bf16) or 64 (fp32), rope / indexer 128, heads 256 and
// 512); anything else goes through memcpy / copy_streaming per piece.
// `streaming` is honoured only where streaming stores are possible (16-byte
// multiples at 16-byte aligned destinations) or, for other sizes, long enough.
// `allow_wide` = false keeps 16-byte streaming stores (tests compare both widths).
inline void copy_pieces(char* dst, int64_t dst_step, const char* src, int64_t src_step,
                        int64_t count, int64_t n, bool streaming, bool allow_wide = true) {
  const bool nt = streaming && n % 16 == 0 && dst_step % 16 == 0 &&
                  (reinterpret_cast<uintptr_t>(dst) & 15) == 0;
  const bool wide_ok = allow_wide && wide_streaming();
  const bool wide = wide_ok && nt && n % 32 == 0 && dst_step % 32 == 0 &&
                    (reinterpret_cast<uintptr_t>(dst) & 31) == 0;
#define LMCACHE_ASCEND_PIECES(N)                                           \
  case N:                                                                  \
    copy_pieces_n<N>(dst, dst_step, src, src_step, count, nt, wide);       \
    return;
  switch (n) {
    LMCACHE_ASCEND_PIECES(2)
    LMCACHE_ASCEND_PIECES(4)
    LMCACHE_ASCEND_PIECES(8)
    LMCACHE_ASCEND_PIECES(16)
    LMCACHE_ASCEND_PIECES(32)
    LMCACHE_ASCEND_PIECES(64)
    LMCACHE_ASCEND_PIECES(128)
    LMCACHE_ASCEND_PIECES(256)
    LMCACHE_ASCEND_PIECES(512)
    default:
      copy_pieces_any(dst, dst_step, src, src_step, count, n, streaming && n >= 64, wide_ok);
  }
#undef LMCACHE_ASCEND_PIECES
}

}  // namespace lmcache_ascend
