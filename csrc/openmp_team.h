// Running host-kernel tasks on the process's OpenMP team.
//
// Engines on CPU (vLLM CPU, SGLang CPU) compute on torch's OpenMP threads,
// which libgomp keeps spinning for a while after every parallel region and
// which vLLM binds to its cores. A separate pool of our own then shares those
// cores with spinning threads: measured on 2 cores, a store ran at 0.62-0.70
// of a plain copy on our own pool and 0.77-0.86 on the OpenMP team
// (benchmarks/kernels.py, DSA-C8). So when an OpenMP runtime is already
// loaded (torch's libgomp), the tasks run on its team; the runtime is found
// with dlsym at run time and never linked, because a second runtime in the
// process would bring a second set of spinning threads.
//
// Not used (the caller falls back to its own pool) when:
// - no OpenMP runtime is loaded (MindSpore-only processes, plain C++ tests);
// - $LMCACHE_ASCEND_THREAD_POOL is "own";
// - the caller is already inside a parallel region (nested teams run serial);
// - this process was forked after it used the team: libgomp's workers do not
//   survive fork() and its child would wait on them forever.
#pragma once

#include <cstdint>
#include <functional>

namespace lmcache_ascend {

// True when run_on_openmp_team() would run tasks on the OpenMP team now.
bool openmp_team_available();

// Runs fn(0) .. fn(num_tasks - 1) on up to `threads` threads of the OpenMP
// team (the caller is one of them) and returns true; returns false without
// running anything when openmp_team_available() is false. The first exception
// a task throws is rethrown after every thread has left the region. Jobs from
// several calling threads run one after another.
bool run_on_openmp_team(int64_t num_tasks, int threads, const std::function<void(int64_t)>& fn);

}  // namespace lmcache_ascend
