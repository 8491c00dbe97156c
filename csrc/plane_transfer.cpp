#include "plane_transfer.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "plane_groups.h"
#include "prefetch.h"
#include "stream_copy.h"
#include "thread_pool.h"

namespace lmcache_ascend {
namespace {

// Below this many bytes a transfer runs on the calling thread: waking the
// pool costs more than it saves.
constexpr int64_t kParallelThresholdBytes = 256 * 1024;
// Bytes per task: large enough to amortize scheduling, small enough that two
// to sixteen threads get balanced work from one 256-token chunk.
constexpr int64_t kTaskBytes = 128 * 1024;
// Spans of consecutive tasks per thread. A thread copies a span's tasks in
// order and each prefetches the next one's first block run (plane_groups.h,
// Unit); a span's first run is not prefetched, so fewer spans leave less of
// that wait and more spans balance threads better.
constexpr int64_t kSpansPerThread = 4;
// A token-dense block run is copied in slices this long, each after a
// prefetch of the same slice of the next run: 0.84 -> 0.93x a plain copy for a
// flash NHD store on one thread (AMD EPYC); 4 KiB slices gave nothing.
constexpr int64_t kFetchSliceBytes = 1024;

void check_plane(const PlaneSpec& p, int64_t index) {
  auto bad = [&](const char* what) {
    throw std::invalid_argument("plane " + std::to_string(index) + ": " + what);
  };
  if (p.paged_base == 0 || p.obj_base == 0) bad("null base address");
  if (p.num_heads <= 0 || p.head_bytes <= 0) bad("num_heads and head_bytes must be > 0");
  if (p.block_size <= 0) bad("block_size must be > 0");
  if (p.num_slots < 0) bad("num_slots must be >= 0");
  if (p.block_stride < 0 || p.token_stride < 0 || p.head_stride < 0 ||
      p.obj_token_stride < 0 || p.obj_part_stride < 0) {
    bad("strides must be >= 0");
  }
  if (p.parts <= 0 || p.head_bytes % p.parts != 0) bad("parts must divide head_bytes");
}

void check_slots(const SlotList& slots, int64_t begin, int64_t num_slots) {
  for (int64_t t = begin; t < slots.count; ++t) {
    int64_t s = slots.at(t);
    if (s >= num_slots) {
      throw std::out_of_range("slot_mapping[" + std::to_string(t) + "] = " +
                              std::to_string(s) + " is outside the paged buffer (" +
                              std::to_string(num_slots) + " slots)");
    }
  }
}

// Streaming stores pay off only for runs of several cache lines.
constexpr int64_t kStreamingMinBytes = 256;

struct Copier {
  Direction direction;
  bool streaming;

  void operator()(char* paged, char* obj, int64_t n) const {
    char* dst = direction == Direction::kToObject ? obj : paged;
    const char* src = direction == Direction::kToObject ? paged : obj;
    if (streaming && n >= kStreamingMinBytes) {
      copy_streaming(dst, src, static_cast<size_t>(n));
    } else {
      std::memcpy(dst, src, static_cast<size_t>(n));
    }
  }
};

// Paged -> object for one block run of a plane whose heads lie head_stride
// apart (vLLM CPU's [K | V] heads, 8 KiB apart in a block): head by head, so
// the paged block is read as one sequential range per head instead of
// num_heads interleaved ones; each head's whole-line pieces still go out with
// streaming stores. Measured 1.15-1.6x the token-by-token order for stores;
// loads keep that order (they read the object rows in address order; head by
// head measured 13-14 GB/s against 17-23). While a head is copied, the next
// run's same head (at `later`, `ahead` tokens) is prefetched.
void store_heads_by_column(const PlaneSpec& p, char* paged, char* obj, int64_t run,
                           const char* later, int64_t ahead, const Copier& copy_bytes) {
  const int64_t piece = p.head_bytes / p.parts;
  for (int64_t h = 0; h < p.num_heads; ++h) {
    if (later != nullptr) {
      prefetch_bytes(later + h * p.head_stride, (ahead - 1) * p.token_stride + p.head_bytes);
    }
    for (int64_t u = 0; u < run; ++u) {
      for (int64_t k = 0; k < p.parts; ++k) {
        copy_bytes(paged + u * p.token_stride + h * p.head_stride + k * piece,
                   obj + u * p.obj_token_stride + k * p.obj_part_stride + h * piece, piece);
      }
    }
  }
}

// Paged -> object for one token-dense block run of n bytes with streaming
// stores, slice by slice, each slice after a prefetch of the same slice of
// the next run (`m` bytes at `later`). Slices end on destination lines, so
// only the run's own first and last lines can be partial.
void store_dense_fetching(const char* paged, char* obj, int64_t n, const char* later,
                          int64_t m) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(obj);
  for (int64_t o = 0; o < n;) {
    const uintptr_t line_end = (base + static_cast<uintptr_t>(o + kFetchSliceBytes)) & ~uintptr_t{63};
    const int64_t e = std::min(n, static_cast<int64_t>(line_end - base));
    if (o < m) prefetch_bytes(later + o, std::min(e, m) - o);
    copy_streaming(obj + o, paged + o, static_cast<size_t>(e - o));
    o = e;
  }
}

// The run a store copies after `r`: `after` inside this unit, else the first
// run of `then` (a legacy plane's unit laid out like `p`); run == 0: none.
struct LaterRun {
  const char* at;
  int64_t run;
};

LaterRun later_run(const PlaneSpec& p, const SlotRun& after, const SlotList& slots,
                   const PlaneSpec* planes, const Unit* then) {
  const auto same_walk = [&](const Group& g) {
    const PlaneSpec& q = planes[g.first];
    return g.legacy && q.block_size == p.block_size && q.token_stride == p.token_stride &&
           q.head_stride == p.head_stride && q.num_heads == p.num_heads &&
           q.head_bytes == p.head_bytes;
  };
  const RunAhead ahead = run_ahead(after, then, slots, p.block_size, same_walk);
  if (ahead.run.run == 0) return {nullptr, 0};
  const PlaneSpec& q = ahead.from_then ? planes[then->group->first] : p;
  return {reinterpret_cast<const char*>(q.paged_base) + ahead.run.block * q.block_stride +
              ahead.run.offset * q.token_stride,
          ahead.run.run};
}

// Copies tokens [begin, end) of one token-dense plane (runs of consecutive
// slots inside one block are one memcpy) or one plane with split [K | V]
// heads (parts > 1). Every other plane goes through plane_groups.cpp.
// Stores prefetch the next run, or the first of `then` (may be null).
void copy_token_range(const PlaneSpec* planes, const PlaneSpec& p, const PlaneShape& s,
                      const SlotList& slots, int64_t begin, int64_t end,
                      const Copier& copy_bytes, const Unit* then) {
  char* const paged_base = reinterpret_cast<char*>(p.paged_base);
  char* const obj_base = reinterpret_cast<char*>(p.obj_base);
  const int64_t piece = p.head_bytes / p.parts;
  const bool store = copy_bytes.direction == Direction::kToObject;
  SlotRun after{};
  for (SlotRun r = next_run(slots, begin, end, p.block_size); r.run > 0; r = after) {
    after = next_run(slots, r.t + r.run, end, p.block_size);
    char* paged = paged_base + r.block * p.block_stride + r.offset * p.token_stride;
    char* obj = obj_base + r.t * p.obj_token_stride;
    const int64_t n = r.run * s.row_bytes;
    if (s.tokens_dense && !(store && copy_bytes.streaming && n >= kStreamingMinBytes)) {
      copy_bytes(paged, obj, n);
      continue;
    }
    if (s.tokens_dense) {
      const LaterRun next = later_run(p, after, slots, planes, then);
      store_dense_fetching(paged, obj, n, next.at, next.run * s.row_bytes);
      continue;
    }
    if (store) {
      // Only this unit's next run: each head's column of it is prefetched in
      // one burst, and bursts for the next unit's first run measured slower
      // (vLLM CPU store, one thread: 0.80 -> 0.69x a plain copy).
      const LaterRun next = later_run(p, after, slots, planes, nullptr);
      store_heads_by_column(p, paged, obj, r.run, next.at, next.run, copy_bytes);
      continue;
    }
    for (int64_t u = 0; u < r.run; ++u, paged += p.token_stride, obj += p.obj_token_stride) {
      for (int64_t h = 0; h < p.num_heads; ++h) {
        for (int64_t k = 0; k < p.parts; ++k) {
          copy_bytes(paged + h * p.head_stride + k * piece,
                     obj + k * p.obj_part_stride + h * piece, piece);
        }
      }
    }
  }
}

}  // namespace

void transfer_planes(const PlaneSpec* planes, int64_t num_planes,
                     const SlotList& slots, int64_t skip_prefix,
                     Direction direction, int num_threads, bool streaming) {
  if (num_planes < 0) throw std::invalid_argument("num_planes must be >= 0");
  if (slots.count < 0) throw std::invalid_argument("slot count must be >= 0");
  if (slots.itemsize != 4 && slots.itemsize != 8) {
    throw std::invalid_argument("slot_mapping must hold int32 or int64");
  }
  if (direction != Direction::kToPaged && direction != Direction::kToObject) {
    throw std::invalid_argument("direction must be 0 (H2D) or 1 (D2H)");
  }
  const int64_t begin = std::max<int64_t>(0, std::min(skip_prefix, slots.count));
  if (num_planes == 0 || begin == slots.count) return;
  if (slots.data == nullptr) throw std::invalid_argument("slot_mapping is null");

  int64_t min_slots = planes[0].num_slots;
  for (int64_t i = 0; i < num_planes; ++i) {
    check_plane(planes[i], i);
    min_slots = std::min(min_slots, planes[i].num_slots);
  }
  check_slots(slots, begin, min_slots);

  const std::vector<Group> groups = group_planes(planes, num_planes);
  int64_t max_row = 0;
  int64_t all_rows = 0;
  for (const Group& g : groups) {
    max_row = std::max(max_row, g.row_bytes);
    all_rows += g.row_bytes;
  }
  const int64_t tokens = slots.count - begin;
  const int64_t tile = std::max<int64_t>(16, kTaskBytes / std::max<int64_t>(1, max_row));
  const int64_t tiles_per_group = (tokens + tile - 1) / tile;
  const int64_t num_groups = static_cast<int64_t>(groups.size());
  const int threads = tokens * all_rows < kParallelThresholdBytes ? 1 : num_threads;

  const Copier copier{direction, streaming};
  const int64_t num_units = num_groups * tiles_per_group;
  auto unit = [&](int64_t i) {
    const int64_t t0 = begin + (i % tiles_per_group) * tile;
    return Unit{&groups[static_cast<size_t>(i / tiles_per_group)], t0,
                std::min(slots.count, t0 + tile)};
  };
  // Loads prefetch nothing across units (they read the object in address
  // order; NZ loads prefetch only inside a unit): one unit per task balances
  // threads best.
  const int64_t spans = direction == Direction::kToPaged ? num_units
                        : threads == 1                   ? 1
                                                         : std::min(num_units, threads * kSpansPerThread);
  parallel_for(spans, threads, [&](int64_t span) {
    const int64_t first = span * num_units / spans, last = (span + 1) * num_units / spans;
    for (int64_t i = first; i < last; ++i) {
      const Unit u = unit(i);
      const Unit then = unit(std::min(i + 1, num_units - 1));
      const Unit* next = i + 1 < last ? &then : nullptr;
      if (u.group->legacy) {
        const PlaneSpec& p = planes[u.group->first];
        copy_token_range(planes, p, shape_of(p), slots, u.begin, u.end, copier, next);
      } else {
        copy_group_range(planes, *u.group, slots, u.begin, u.end, direction, streaming, next);
      }
    }
    if (streaming) store_fence();
  });
}

}  // namespace lmcache_ascend
