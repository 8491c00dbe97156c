// A job's tasks 0 .. count - 1, handed out one at a time to whichever thread
// asks next. Shared by both places host kernels run in parallel: the core's
// own pool (thread_pool.cpp) and the process's OpenMP team (openmp_team.cpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>

namespace lmcache_ascend {

struct TaskList {
  TaskList(const std::function<void(int64_t)>& fn, int64_t count) : fn(&fn), count(count) {}

  // Runs tasks until none is left. The first exception a task throws is kept
  // (see rethrow()) and the tasks nobody has started yet are abandoned; no
  // exception leaves drain(), so it may run under C frames (libgomp's).
  void drain() {
    for (;;) {
      const int64_t i = next.fetch_add(1);
      if (i >= count) return;
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
        next.store(count);
      }
    }
  }

  // After every thread has left drain(): the first task's exception, if any.
  void rethrow() const {
    if (error) std::rethrow_exception(error);
  }

 private:
  const std::function<void(int64_t)>* fn;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::exception_ptr error;
};

}  // namespace lmcache_ascend
