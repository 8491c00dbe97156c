#include "plane_groups.h"

#include <algorithm>

#include "line_writer.h"
#include "piece_copy.h"
#include "prefetch.h"
#include "stream_copy.h"

namespace lmcache_ascend {

std::vector<Group> group_planes(const PlaneSpec* planes, int64_t num_planes) {
  std::vector<Group> groups;
  for (int64_t i = 0; i < num_planes; ++i) {
    const PlaneSpec& p = planes[i];
    const PlaneShape s = shape_of(p);
    // Token-dense planes already move whole block runs per memcpy, and split
    // [K | V] heads (parts > 1) interleave two object planes: keep both as is.
    const bool legacy = s.tokens_dense || p.parts != 1;
    if (!legacy && !groups.empty() && !groups.back().legacy) {
      Group& g = groups.back();
      const PlaneSpec& first = planes[g.first];
      const PlaneSpec& last = planes[i - 1];
      if (p.obj_token_stride == first.obj_token_stride && p.block_size == first.block_size &&
          p.obj_base == last.obj_base + shape_of(last).row_bytes &&
          g.row_bytes + s.row_bytes <= p.obj_token_stride) {
        ++g.count;
        g.row_bytes += s.row_bytes;
        continue;
      }
    }
    groups.push_back({i, 1, s.row_bytes, legacy});
  }
  return groups;
}

namespace {

// One plane of a group as pieces: `pieces` runs of `piece` bytes per token,
// `step` apart on the paged side, side by side from `column` in the object row.
struct PieceView {
  char* paged;
  int64_t block_stride;
  int64_t token_stride;
  int64_t step;
  int64_t pieces;
  int64_t piece;
  int64_t column;
};

// Groups are small (a plane tuple has at most a handful of planes): views of
// up to this many planes live on the stack.
constexpr int64_t kInlineViews = 8;

PieceView view_of(const PlaneSpec& p, const PlaneSpec& first) {
  const PlaneShape s = shape_of(p);
  PieceView v;
  v.paged = reinterpret_cast<char*>(p.paged_base);
  v.block_stride = p.block_stride;
  v.token_stride = p.token_stride;
  v.step = p.head_stride;
  v.pieces = s.heads_dense ? 1 : p.num_heads;
  v.piece = s.heads_dense ? s.row_bytes : p.head_bytes;
  v.column = p.obj_base - first.obj_base;
  return v;
}

// True when every piece can be written with streaming stores, each covering
// whole cache lines (sizes, columns, stride and base all multiples of 64):
// MLA's 1024 + 128, HND heads of 256. Streaming part of a line and the rest
// later (NZ's 32-byte pieces land in 16 rows at once; DSA-C8 rows are 1282
// bytes) makes the CPU write partial lines or read them back from DRAM.
bool streams_whole_lines(const PieceView* views, int64_t count, const char* obj0,
                         int64_t obj_stride) {
  if ((reinterpret_cast<uintptr_t>(obj0) & 63) != 0 || obj_stride % 64 != 0) return false;
  for (int64_t k = 0; k < count; ++k) {
    if (views[k].piece % 64 != 0 || views[k].column % 64 != 0) return false;
  }
  return true;
}

// Paged -> object, one run of consecutive slots of a block at a time: every
// plane's piece column is copied for the whole run by fixed-size loops,
// reading the paged block in address order.
//
// The blocks are a few KiB per plane at random places in a large pool, so
// the hardware prefetchers restart at every block of every plane (an MLA
// layer reads a 16 KiB and a 2 KiB region per block, DSA-C8 four down to 32
// bytes) and the reads wait on DRAM. So while a run is copied, the next run's
// data is prefetched, interleaved with the copy (per token for single-piece
// rows, per piece column for NZ's 32-byte pieces): measured 20-25% faster for
// MLA, ~15% for DSA-C8, ~4% for NZ, where one burst of prefetches per block
// gave nothing. Columns of whole-line heads (HND's 4 KiB per block) already
// stream well and measured ~4% slower with it, so they go without. A unit's
// last run prefetches the first run of the unit its thread copies next
// (find_ahead; see Unit in plane_groups.h).
//
// Packed rows that cannot be streamed piece by piece (DSA-C8: 1282 bytes)
// are written through a LineWriter: a block run's rows are one contiguous
// range, assembled piece after piece in address order and streamed a line at
// a time (store_run_lines; 1.1-1.3x the L1 stage it replaced in the op,
// 1.4-1.5x in a standalone gather: see line_writer.h). NZ's lines are gathered from their piece columns and
// streamed one by one instead (store_piece_lines: 1.4-1.8x the
// column-by-column ordinary stores, whose half-line writes each read the line
// from DRAM first).

// Pieces of 16 or 32 bytes (310P NZ, fp8 / bf16), an even number of them per
// token, side by side at 64-byte aligned object rows: each object line is
// gathered from its 64 / piece columns and streamed whole (stream_gathered_lines).
bool streams_piece_lines(const PieceView& v, const char* obj0, int64_t obj_stride) {
  if (v.pieces < 2 || (v.piece != 16 && v.piece != 32)) return false;
  if (v.pieces % (64 / v.piece) != 0 || v.column % 64 != 0) return false;
  return (reinterpret_cast<uintptr_t>(obj0) & 63) == 0 && obj_stride % 64 == 0;
}

// One block run of a piece-column plane, a line of columns at a time; while a
// line's columns are copied, the next run's same columns are prefetched.
void store_piece_lines(const PieceView& v, char* rows, int64_t obj_stride, const char* src,
                       const char* later, int64_t ahead, int64_t run) {
  const int64_t per_line = 64 / v.piece;
  for (int64_t h = 0; h < v.pieces; h += per_line) {
    if (ahead > 0) {
      for (int64_t j = 0; j < per_line; ++j) {
        prefetch_bytes(later + (h + j) * v.step, (ahead - 1) * v.token_stride + v.piece);
      }
    }
    char* dst = rows + v.column + h * v.piece;
    const char* from = src + h * v.step;
    stream_gathered_lines(v.piece, dst, obj_stride, from, v.token_stride, v.step, run);
  }
}

bool any_piece_lines(const PieceView* views, int64_t count, const char* obj0, int64_t obj_stride) {
  for (int64_t k = 0; k < count; ++k) {
    if (streams_piece_lines(views[k], obj0, obj_stride)) return true;
  }
  return false;
}

// One block run of packed rows, token by token and piece by piece in object
// address order; the first `ahead` tokens of the next run (at `later[k]` per
// plane) are prefetched as the same tokens of this run are written.
void store_run_lines(const PieceView* views, int64_t count, char* rows, const SlotRun& r,
                     const char* const* later, int64_t ahead) {
  LineWriter out(rows, wide_streaming());
  for (int64_t u = 0; u < r.run; ++u) {
    for (int64_t k = 0; k < count; ++k) {
      const PieceView& v = views[k];
      const char* src = v.paged + r.block * v.block_stride + (r.offset + u) * v.token_stride;
      const char* next = u < ahead ? later[k] + u * v.token_stride : nullptr;
      for (int64_t h = 0; h < v.pieces; ++h) {
        if (next != nullptr) prefetch_bytes(next + h * v.step, v.piece);
        out.put(src + h * v.step, static_cast<size_t>(v.piece));
      }
    }
  }
  out.finish();
}

// Where the next block run's data starts, per plane, and how many of its
// tokens to prefetch (0: nothing to prefetch).
struct Ahead {
  std::vector<const char*> later;
  int64_t tokens = 0;
};

// `after` (the next run of this unit), else the first run of `then` when its
// planes walk their blocks the same way (same pieces, steps and strides).
void find_ahead(const PieceView* views, int64_t count, const PlaneSpec* then_planes,
                const Unit* then, const SlotList& slots, SlotRun r, int64_t block_size,
                Ahead& out) {
  out.tokens = 0;
  PieceView then_views[kInlineViews];
  const auto same_walk = [&](const Group& g) {
    if (g.legacy || g.count != count || count > kInlineViews) return false;
    const PlaneSpec& first = then_planes[g.first];
    if (first.block_size != block_size) return false;
    for (int64_t k = 0; k < count; ++k) {
      then_views[k] = view_of(then_planes[g.first + k], first);
      const PieceView &a = views[k], &b = then_views[k];
      if (a.piece != b.piece || a.pieces != b.pieces || a.step != b.step ||
          a.token_stride != b.token_stride) {
        return false;
      }
    }
    return true;
  };
  const RunAhead ahead = run_ahead(r, then, slots, block_size, same_walk);
  if (ahead.run.run == 0) return;
  const PieceView* at = ahead.from_then ? then_views : views;
  for (int64_t k = 0; k < count; ++k) {
    out.later[k] = at[k].paged + ahead.run.block * at[k].block_stride +
                   ahead.run.offset * at[k].token_stride;
  }
  out.tokens = ahead.run.run;
}

void store_group(const PieceView* views, const Group& g, const PlaneSpec* planes, char* obj0,
                 int64_t obj_stride, int64_t block_size, const SlotList& slots, int64_t begin,
                 int64_t end, bool streaming, const Unit* then) {
  const bool nt = streaming && streams_whole_lines(views, g.count, obj0, obj_stride);
  const bool lines = streaming && !nt && obj_stride == g.row_bytes &&
                     !any_piece_lines(views, g.count, obj0, obj_stride);
  Ahead next;
  next.later.resize(static_cast<size_t>(g.count));
  SlotRun after{};
  for (SlotRun r = next_run(slots, begin, end, block_size); r.run > 0; r = after) {
    const int64_t t = r.t, block = r.block, offset = r.offset, run = r.run;
    after = next_run(slots, t + run, end, block_size);
    find_ahead(views, g.count, planes, then, slots, after, block_size, next);
    const int64_t ahead = next.tokens;
    const char* const* later = next.later.data();
    char* rows = obj0 + t * obj_stride;
    if (lines) {
      store_run_lines(views, g.count, rows, r, later, ahead);
      continue;
    }
    for (int64_t k = 0; k < g.count; ++k) {
      const PieceView& v = views[k];
      const char* src = v.paged + block * v.block_stride + offset * v.token_stride;
      if (v.pieces == 1) {
        for (int64_t u = 0; u < run; ++u) {
          if (u < ahead) prefetch_bytes(later[k] + u * v.token_stride, v.piece);
          copy_pieces(rows + u * obj_stride + v.column, 0, src + u * v.token_stride, 0, 1,
                      v.piece, nt);
        }
        continue;
      }
      if (streaming && streams_piece_lines(v, obj0, obj_stride)) {
        store_piece_lines(v, rows, obj_stride, src, later[k], ahead, run);
        continue;
      }
      const bool fetch = ahead > 0 && v.piece < 64;
      for (int64_t h = 0; h < v.pieces; ++h) {
        if (fetch) prefetch_bytes(later[k] + h * v.step, (ahead - 1) * v.token_stride + v.piece);
        copy_pieces(rows + v.column + h * v.piece, obj_stride, src + h * v.step, v.token_stride,
                    run, v.piece, nt);
      }
    }
  }
}

// NZ loads read a run's object rows a 32-byte piece column at a time (a paged
// line takes one piece from each of two rows), slowly enough that the hardware
// prefetchers fall behind: load_piece_lines prefetches the rows this many
// tokens ahead (past a run's end: the next run's rows, or bytes the transfer
// does not own, which a prefetch touches harmlessly). One thread, AMD EPYC:
// 0.51-0.58 -> 0.67-0.72x a plain copy. Plane tuples and HND heads, which read
// whole-line pieces a row at a time, measured no clear change and go without.
constexpr int64_t kLoadAheadTokens = 8;

// Pieces of 16 or 32 bytes whose tokens are adjacent in the paged block (310P
// NZ: a piece column is one contiguous range), starting on a line: each paged
// line is gathered from the 64 / piece object rows of its tokens and streamed
// whole, reading those rows in address order.
bool loads_piece_lines(const PieceView& v, const char* dst) {
  if (v.piece != 16 && v.piece != 32) return false;
  if (v.token_stride != v.piece || v.step % 64 != 0) return false;
  return (reinterpret_cast<uintptr_t>(dst) & 63) == 0;
}

// The whole lines of one block run (see loads_piece_lines); returns how many
// tokens they covered (the rest, under a line, go column by column).
int64_t load_piece_lines(const PieceView& v, char* dst, const char* rows, int64_t obj_stride,
                         int64_t run) {
  const int64_t per_line = 64 / v.piece;
  const int64_t whole = run / per_line * per_line;
  for (int64_t u = 0; u < whole; u += per_line) {
    for (int64_t j = 0; j < per_line; ++j) {
      prefetch_bytes(rows + (u + j + kLoadAheadTokens) * obj_stride + v.column, v.pieces * v.piece);
    }
    char* line = dst + u * v.token_stride;
    const char* from = rows + u * obj_stride + v.column;
    stream_gathered_lines(v.piece, line, v.step, from, v.piece, obj_stride, v.pieces);
  }
  return whole;
}

// Object -> paged, per run of consecutive slots in one block. Pieces of whole
// cache lines (plane tuple rows, HND's 256-byte heads) are copied token by
// token, reading the object rows in address order. Smaller pieces (NZ's 32
// bytes), whose tokens are adjacent in a paged piece column, are streamed a
// paged line at a time from the 2 (or 4) object rows it holds, reading those
// rows in address order (load_piece_lines: 1.05-1.2x going column by column
// over the whole run, which reads 16 rows at once); a run's start off a line
// and its last tokens under a line go column by column.
void load_group(const PieceView* views, const Group& g, const char* obj0, int64_t obj_stride,
                int64_t block_size, const SlotList& slots, int64_t begin, int64_t end,
                bool streaming) {
  for (SlotRun r = next_run(slots, begin, end, block_size); r.run > 0;
       r = next_run(slots, r.t + r.run, end, block_size)) {
    const int64_t block = r.block, offset = r.offset, run = r.run;
    const char* rows = obj0 + r.t * obj_stride;
    for (int64_t k = 0; k < g.count; ++k) {
      const PieceView& v = views[k];
      char* dst = v.paged + block * v.block_stride + offset * v.token_stride;
      if (v.piece % 64 == 0) {
        for (int64_t u = 0; u < run; ++u) {
          copy_pieces(dst + u * v.token_stride, v.step, rows + u * obj_stride + v.column,
                      v.piece, v.pieces, v.piece, streaming);
        }
        continue;
      }
      int64_t done = 0;
      if (streaming && loads_piece_lines(v, dst)) {
        done = load_piece_lines(v, dst, rows, obj_stride, run);
      }
      if (done == run) continue;
      for (int64_t h = 0; h < v.pieces; ++h) {
        copy_pieces(dst + h * v.step + done * v.token_stride, v.token_stride,
                    rows + done * obj_stride + v.column + h * v.piece, obj_stride, run - done,
                    v.piece, streaming);
      }
    }
  }
}

}  // namespace

void copy_group_range(const PlaneSpec* planes, const Group& g, const SlotList& slots,
                      int64_t begin, int64_t end, Direction direction, bool streaming,
                      const Unit* then) {
  PieceView inline_views[kInlineViews];
  std::vector<PieceView> heap_views;
  PieceView* views = inline_views;
  if (g.count > kInlineViews) {
    heap_views.resize(static_cast<size_t>(g.count));
    views = heap_views.data();
  }
  const PlaneSpec& first = planes[g.first];
  for (int64_t k = 0; k < g.count; ++k) views[k] = view_of(planes[g.first + k], first);
  char* obj0 = reinterpret_cast<char*>(first.obj_base);
  if (direction == Direction::kToObject) {
    store_group(views, g, planes, obj0, first.obj_token_stride, first.block_size, slots, begin,
                end, streaming, then);
  } else {
    load_group(views, g, obj0, first.obj_token_stride, first.block_size, slots, begin, end,
               streaming);
  }
}

}  // namespace lmcache_ascend
