// Plane groups: the host kernel for every plane that is neither token-dense
// nor split into [K | V] parts (see plane_transfer.h for what a plane is).
//
// Internal to the C++ core; plane_transfer.cpp validates the table, forms the
// groups and schedules (group, token range) tasks on the thread pool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "plane_transfer.h"

namespace lmcache_ascend {

struct PlaneShape {
  int64_t row_bytes;
  bool heads_dense;   // all heads of a token are one contiguous run
  bool tokens_dense;  // consecutive slots of a block are one contiguous run
};

inline PlaneShape shape_of(const PlaneSpec& p) {
  PlaneShape s;
  s.row_bytes = p.num_heads * p.head_bytes;
  s.heads_dense = p.parts == 1 && (p.num_heads == 1 || p.head_stride == p.head_bytes);
  s.tokens_dense = s.heads_dense && p.token_stride == s.row_bytes &&
                   p.obj_token_stride == s.row_bytes;
  return s;
}

// One run of tokens [t, t + run) whose slots are consecutive inside one block:
// slot of token t + u = block * block_size + offset + u. run == 0: no token left.
struct SlotRun {
  int64_t t;
  int64_t block;
  int64_t offset;
  int64_t run;
};

// The first run at or after token t (tokens with slot < 0 are skipped), ending
// before token `end` and at the end of its block.
inline SlotRun next_run(const SlotList& slots, int64_t t, int64_t end, int64_t block_size) {
  while (t < end && slots.at(t) < 0) ++t;
  if (t >= end) return {t, 0, 0, 0};
  const int64_t slot = slots.at(t);
  const int64_t offset = slot % block_size;
  const int64_t limit = std::min(end - t, block_size - offset);
  int64_t run = 1;
  while (run < limit && slots.at(t + run) == slot + run) ++run;
  return {t, slot / block_size, offset, run};
}

// Planes the kernel walks together, one block run at a time. Plane tuples
// (MLA, DSA) and the K / V planes of a token-major object put several planes
// side by side in one object row; copying them plane by plane writes (or
// reads) every row in several passes, and a short column (a 2-byte scale)
// then costs a whole cache line from DRAM per token. A group covers planes
// whose object columns follow each other, so each row moves in one pass.
struct Group {
  int64_t first;
  int64_t count;
  int64_t row_bytes;  // object bytes per token over the group's planes
  bool legacy;        // token-dense or parts > 1: copy_token_range() is best
};

// One unit of work: tokens [begin, end) of one group. A thread copies the
// units of a span in order; each unit prefetches the first block run of the
// unit after it while it copies its own last run (blocks lie at random places,
// so a run whose data was not prefetched waits on DRAM: one such run per
// 16-token unit made a DSA-C8 store 2x slower on one thread).
struct Unit {
  const Group* group;
  int64_t begin;
  int64_t end;
};

// The run a copy prefetches while it finishes its current one: `after` (its
// unit's next run) when there is one, else the first run of `then` (the unit
// the thread copies next; may be null) if `same_walk(*then->group)`: its planes
// walk their blocks as the current ones do, so one prefetch pattern fits both.
// `from_then` says whose planes the run's addresses are in; run.run == 0: none.
struct RunAhead {
  SlotRun run;
  bool from_then;
};

template <class SameWalk>
RunAhead run_ahead(SlotRun after, const Unit* then, const SlotList& slots, int64_t block_size,
                   SameWalk&& same_walk) {
  if (after.run > 0) return {after, false};
  if (then == nullptr || !same_walk(*then->group)) return {SlotRun{}, false};
  return {next_run(slots, then->begin, then->end, block_size), true};
}

// Splits a plane table into groups, in table order.
std::vector<Group> group_planes(const PlaneSpec* planes, int64_t num_planes);

// Copies tokens [begin, end) of a non-legacy group (slots already validated);
// `then` (may be null) is the unit the calling thread copies next.
void copy_group_range(const PlaneSpec* planes, const Group& g, const SlotList& slots,
                      int64_t begin, int64_t end, Direction direction, bool streaming,
                      const Unit* then);

}  // namespace lmcache_ascend
