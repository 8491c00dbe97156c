#include "thread_pool.h"

#include "openmp_team.h"

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
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      num_tasks_ = num_tasks;
      next_.store(0);
      helpers_wanted_ = helpers;
      helpers_active_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mu_);
    // Helpers that have not woken up yet are no longer needed: every task is
    // claimed. Only wait for the ones already running a task.
    helpers_wanted_ = 0;
    done_.wait(lock, [this] { return helpers_active_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void drain() {
    for (;;) {
      int64_t i = next_.fetch_add(1);
      if (i >= num_tasks_) return;
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(num_tasks_);  // stop handing out work
      }
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
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
      }
      drain();
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
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_wanted_ = 0;
  int helpers_active_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
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
