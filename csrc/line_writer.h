// Streams one contiguous destination range assembled from pieces.
//
// A plane tuple's object rows can be a size no cache line divides (DSA-C8:
// 1024 + 128 + 128 + 2 = 1282 bytes), so a row's pieces start anywhere in a
// line and neither they nor the rows can be streamed one by one. When rows
// are packed, a block run's rows are one contiguous range, written piece after
// piece in address order: LineWriter takes the pieces in that order, streams
// every whole line a piece covers straight from its source, and assembles the
// lines where pieces meet in a 64-byte buffer before streaming them. Only the
// range's first and last lines, which it may share with other rows (other
// threads' runs, other layers), are written with ordinary stores, and only
// over the range's own bytes.
//
// Measured against gathering a whole block run into an L1 stage and streaming
// the stage out (what DSA-C8 stores did before), one thread, AMD EPYC: a
// standalone gather of DSA-C8 rows from 16-token blocks at random places went
// 0.65-0.73 -> 0.95-1.10x a plain memcpy of the same bytes; the stage's extra
// pass through L1 left the reads waiting. In the op, with the prefetch of the
// next unit's first run (plane_groups.h), DSA-C8 stores went 0.70-0.84 ->
// 0.91-0.95x torch's copy of the same bytes (benchmarks/kernels.py, two threads).
//
// Callers: plane_groups.cpp (stores of packed rows that are not whole lines).
// Like every streaming copy, the caller must call store_fence() before
// publishing the result.
#pragma once

#include <cstdint>
#include <cstring>

#include "stream_copy.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmcache_ascend {

// Copies sizeof(T) <= n <= 2 * sizeof(T) bytes as two overlapping moves.
template <typename T>
inline void copy_ends(char* dst, const char* src, size_t n) {
  T head, tail;
  std::memcpy(&head, src, sizeof(T));
  std::memcpy(&tail, src + n - sizeof(T), sizeof(T));
  std::memcpy(dst, &head, sizeof(T));
  std::memcpy(dst + n - sizeof(T), &tail, sizeof(T));
}

// Copies n < 64 bytes with at most four overlapping moves and no library
// call: the pieces where a row's planes meet are 2-63 bytes of a line, a few
// per row, and a memcpy call each costs more than the bytes.
inline void copy_short(char* dst, const char* src, size_t n) {
#if defined(__SSE2__)
  if (n >= 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (n >= 32 ? 16 : n - 16)));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (n >= 32 ? n - 32 : 0)));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + n - 16));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (n >= 32 ? 16 : n - 16)), b);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (n >= 32 ? n - 32 : 0)), c);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + n - 16), d);
    return;
  }
#endif
  if (n >= 16) {
    std::memcpy(dst, src, n);  // no SSE2: no 16-byte moves
  } else if (n >= 8) {
    copy_ends<uint64_t>(dst, src, n);
  } else if (n >= 4) {
    copy_ends<uint32_t>(dst, src, n);
  } else if (n >= 2) {
    copy_ends<uint16_t>(dst, src, n);
  } else if (n == 1) {
    *dst = *src;
  }
}

// One assembled line, streamed with 16-byte stores inline: a call into the
// 32-byte loop (compiled for AVX2 apart) costs more than the line.
inline void stream_line_inline(char* dst, const char* src) {
#if defined(__SSE2__)
  for (int b = 0; b < 64; b += 16) {
    const __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(src + b));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + b), v);
  }
#else
  std::memcpy(dst, src, 64);
#endif
}

// Writes [begin, end) from pieces given in address order by put(); finish()
// writes the last partial line. The pieces must add up to exactly the range.
class LineWriter {
 public:
  // `wide` = 32-byte streaming stores (only where wide_streaming() is true).
  LineWriter(char* begin, bool wide) : begin_(begin), pos_(begin), wide_(wide) {}

  void put(const char* src, size_t len) {
    while (len > 0) {
      const size_t off = reinterpret_cast<uintptr_t>(pos_) & 63;
      if (off == 0 && len >= 64) {
        const size_t lines = len / 64;
        stream_lines(pos_, src, lines, wide_);
        pos_ += lines * 64;
        src += lines * 64;
        len -= lines * 64;
        continue;
      }
      const size_t n = len < 64 - off ? len : 64 - off;
      copy_short(line_ + off, src, n);
      pos_ += n;
      src += n;
      len -= n;
      if ((reinterpret_cast<uintptr_t>(pos_) & 63) == 0) flush(pos_ - 64, 64);
    }
  }

  void finish() {
    const size_t off = reinterpret_cast<uintptr_t>(pos_) & 63;
    if (off != 0) flush(pos_ - off, off);
  }

 private:
  // Line at `line` holds line_[0, upto); bytes before begin_ are not ours.
  void flush(char* line, size_t upto) {
    if (line < begin_) {
      std::memcpy(begin_, line_ + (begin_ - line), static_cast<size_t>(line + upto - begin_));
    } else if (upto == 64) {
      stream_line_inline(line, line_);
    } else {
      std::memcpy(line, line_, upto);
    }
  }

  char* begin_;
  char* pos_;
  bool wide_;
  alignas(64) char line_[64];
};

}  // namespace lmcache_ascend
