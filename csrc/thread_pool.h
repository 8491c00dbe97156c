// A small persistent worker pool for the host kernels, used where the
// process's OpenMP team is not (see openmp_team.h for when it is).
//
// Threads are created once and reused: creating threads per call costs tens of
// microseconds, which is visible for one 256-token chunk. The pool is rebuilt
// lazily in a forked child (worker threads do not survive fork). Jobs are
// serialized: callers from several Python threads (GIL released) queue up.
#pragma once

#include <cstdint>
#include <functional>

namespace lmcache_ascend {

// Runs fn(0) .. fn(num_tasks - 1) on up to `max_threads` threads (the caller
// counts as one): on the OpenMP team when openmp_team_available(), else on
// this pool. The first exception thrown by a task is rethrown here after
// every started task has finished.
void parallel_for(int64_t num_tasks, int max_threads,
                  const std::function<void(int64_t)>& fn);

int hardware_threads();

}  // namespace lmcache_ascend
