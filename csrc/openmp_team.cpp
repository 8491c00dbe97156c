#include "openmp_team.h"

#include "task_list.h"

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <string>

namespace lmcache_ascend {
namespace {

// libgomp's entry points, as compiled `#pragma omp parallel` code calls them.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpLevel = int (*)();

struct Runtime {
  GompParallel parallel = nullptr;
  OmpLevel level = nullptr;
};

std::mutex g_runtime_mu;
Runtime g_runtime;  // found once; torch may be imported after our first call
std::atomic<bool> g_used{false};
std::atomic<bool> g_forked_after_use{false};

void on_fork_child() {
  if (g_used.load()) g_forked_after_use.store(true);
}

Runtime runtime() {
  std::lock_guard<std::mutex> lock(g_runtime_mu);
  if (g_runtime.parallel == nullptr) {
    auto parallel = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    auto level = reinterpret_cast<OmpLevel>(dlsym(RTLD_DEFAULT, "omp_get_level"));
    if (parallel != nullptr && level != nullptr) {
      pthread_atfork(nullptr, nullptr, &on_fork_child);
      g_runtime = {parallel, level};
    }
  }
  return g_runtime;
}

// $LMCACHE_ASCEND_THREAD_POOL, read as lmcache_ascend.kernels.host reads it
// (which also rejects values other than auto and own): blanks around it and
// letter case do not matter.
bool chosen_by_environment() {
  const char* setting = std::getenv("LMCACHE_ASCEND_THREAD_POOL");
  if (setting == nullptr) return true;
  std::string value;
  for (const char* c = setting; *c != '\0'; ++c) {
    if (!std::isspace(static_cast<unsigned char>(*c))) {
      value += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
    }
  }
  return value != "own";
}

void drain(void* tasks) { static_cast<TaskList*>(tasks)->drain(); }

std::mutex g_job_mu;

// The runtime when its team may be used now (see openmp_team.h), else empty.
Runtime usable_runtime() {
  if (!chosen_by_environment() || g_forked_after_use.load()) return {};
  const Runtime rt = runtime();
  return rt.parallel != nullptr && rt.level() == 0 ? rt : Runtime{};
}

}  // namespace

bool openmp_team_available() { return usable_runtime().parallel != nullptr; }

bool run_on_openmp_team(int64_t num_tasks, int threads, const std::function<void(int64_t)>& fn) {
  const Runtime rt = usable_runtime();
  if (rt.parallel == nullptr) return false;
  TaskList tasks(fn, num_tasks);
  {
    std::lock_guard<std::mutex> lock(g_job_mu);
    g_used.store(true);
    rt.parallel(&drain, &tasks, static_cast<unsigned>(threads), 0);
  }
  tasks.rethrow();
  return true;
}

}  // namespace lmcache_ascend
