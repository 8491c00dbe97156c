#include "thread_pool.h"

#include "openmp_team.h"
#include "task_list.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lmcache_ascend {
namespace {

constexpr int kMaxWorkers = 64;

class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) {
      threads_.emplace_back([this] { worker_loop(); });
    }
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int size() const { return static_cast<int>(threads_.size()); }

  void run(int64_t num_tasks, int helpers,
           const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> job_guard(job_mu_);
    TaskList tasks(fn, num_tasks);
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_ = &tasks;
      helpers_wanted_ = helpers;
      helpers_active_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    tasks.drain();
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Helpers that have not woken up yet are no longer needed: every task is
      // claimed. Only wait for the ones already running a task.
      helpers_wanted_ = 0;
      done_.wait(lock, [this] { return helpers_active_ == 0; });
      tasks_ = nullptr;
    }
    tasks.rethrow();
  }

 private:

  void worker_loop() {
    uint64_t seen = 0;
    TaskList* tasks = nullptr;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] {
          return stopping_ || (generation_ != seen && helpers_wanted_ > 0);
        });
        if (stopping_) return;
        seen = generation_;
        --helpers_wanted_;
        ++helpers_active_;
        tasks = tasks_;
      }
      tasks->drain();
      {
        std::lock_guard<std::mutex> lock(mu_);
        --helpers_active_;
      }
      done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex job_mu_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  TaskList* tasks_ = nullptr;  // the running job's, on run()'s stack
  int helpers_wanted_ = 0;
  int helpers_active_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

std::mutex g_pool_mu;
Pool* g_pool = nullptr;
pid_t g_pool_pid = 0;

Pool& pool_for(int helpers) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (g_pool != nullptr && g_pool_pid != getpid()) {
    // Forked child: the worker threads are gone and the mutexes may be held
    // by threads that no longer exist. Abandon the old pool deliberately.
    g_pool = nullptr;
  }
  if (g_pool == nullptr) {
    // Sized once and never replaced, so a job running on it is never freed
    // under its feet; larger requests are capped at its size.
    int workers = std::max(helpers, std::min(hardware_threads() - 1, kMaxWorkers));
    g_pool = new Pool(std::max(1, workers));
    g_pool_pid = getpid();
  }
  return *g_pool;
}

}  // namespace

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void parallel_for(int64_t num_tasks, int max_threads,
                  const std::function<void(int64_t)>& fn) {
  if (num_tasks <= 0) return;
  int threads = std::max(1, std::min<int>(max_threads, kMaxWorkers + 1));
  if (threads == 1 || num_tasks == 1) {
    for (int64_t i = 0; i < num_tasks; ++i) fn(i);
    return;
  }
  const int team = static_cast<int>(std::min<int64_t>(threads, num_tasks));
  if (run_on_openmp_team(num_tasks, team, fn)) return;
  int helpers = static_cast<int>(std::min<int64_t>(threads - 1, num_tasks - 1));
  Pool& pool = pool_for(helpers);
  pool.run(num_tasks, std::min(helpers, pool.size()), fn);
}

}  // namespace lmcache_ascend
