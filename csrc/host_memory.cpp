#include "host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "thread_pool.h"

namespace lmcache_ascend {
namespace {

constexpr int64_t kCopySliceBytes = 1 << 20;
constexpr int64_t kHugePage = 2 << 20;

std::mutex g_alloc_mu;
std::unordered_map<uintptr_t, int64_t>& registry() {
  static auto* r = new std::unordered_map<uintptr_t, int64_t>();
  return *r;
}

}  // namespace

int64_t page_size() {
  long p = sysconf(_SC_PAGESIZE);
  return p > 0 ? p : 4096;
}

uintptr_t host_alloc(int64_t size, int64_t alignment, bool huge_pages) {
  if (size <= 0) throw std::invalid_argument("size must be > 0");
  if (alignment <= 0 || (alignment & (alignment - 1)) != 0) {
    throw std::invalid_argument("alignment must be a power of two");
  }
  alignment = std::max<int64_t>(alignment, page_size());
  if (huge_pages) alignment = std::max(alignment, kHugePage);
  void* p = nullptr;
  if (posix_memalign(&p, static_cast<size_t>(alignment), static_cast<size_t>(size)) != 0) {
    throw std::bad_alloc();
  }
  if (huge_pages) madvise(p, static_cast<size_t>(size), MADV_HUGEPAGE);
  std::memset(p, 0, static_cast<size_t>(size));
  auto addr = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  registry()[addr] = size;
  return addr;
}

void host_free(uintptr_t addr) {
  {
    std::lock_guard<std::mutex> lock(g_alloc_mu);
    auto it = registry().find(addr);
    if (it == registry().end()) {
      throw std::invalid_argument("address " + std::to_string(addr) +
                                  " was not allocated by host_alloc or is already freed");
    }
    registry().erase(it);
  }
  std::free(reinterpret_cast<void*>(addr));
}

int64_t host_allocation_size(uintptr_t addr) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  auto it = registry().find(addr);
  return it == registry().end() ? -1 : it->second;
}

int64_t host_live_allocations() {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  return static_cast<int64_t>(registry().size());
}

namespace {

// True when some destination range intersects any other range (a source, or
// another destination). Then the entries must run one after another, in
// order, with memmove: that is what the upstream host loop does.
bool any_overlap(const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst,
                 const std::vector<int64_t>& sizes) {
  struct Range {
    uintptr_t begin, end;
    bool is_dst;
  };
  std::vector<Range> ranges;
  ranges.reserve(2 * sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] <= 0) continue;
    const auto n = static_cast<uintptr_t>(sizes[i]);
    ranges.push_back({src[i], src[i] + n, false});
    ranges.push_back({dst[i], dst[i] + n, true});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  // Sweep: a range that starts before the furthest end seen so far overlaps.
  uintptr_t reach = 0;
  bool reach_is_dst = false;
  for (const Range& r : ranges) {
    if (r.begin < reach && (r.is_dst || reach_is_dst)) return true;
    if (r.end > reach) {
      reach = r.end;
      reach_is_dst = r.is_dst;
    } else {
      reach_is_dst = reach_is_dst || r.is_dst;
    }
  }
  return false;
}

}  // namespace

void batched_copy(const std::vector<uintptr_t>& src,
                  const std::vector<uintptr_t>& dst,
                  const std::vector<int64_t>& sizes, int num_threads) {
  if (src.size() != dst.size() || src.size() != sizes.size()) {
    throw std::invalid_argument("src, dst and sizes must have the same length");
  }
  if (any_overlap(src, dst, sizes)) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] < 0) throw std::invalid_argument("sizes must be >= 0");
      if (sizes[i] == 0) continue;
      std::memmove(reinterpret_cast<void*>(dst[i]), reinterpret_cast<const void*>(src[i]),
                   static_cast<size_t>(sizes[i]));
    }
    return;
  }
  // Slice large copies so one big entry does not serialize on one thread.
  struct Slice {
    size_t entry;
    int64_t offset;
    int64_t bytes;
  };
  std::vector<Slice> slices;
  int64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] < 0) throw std::invalid_argument("sizes must be >= 0");
    if (sizes[i] > 0 && (src[i] == 0 || dst[i] == 0)) {
      throw std::invalid_argument("null address at entry " + std::to_string(i));
    }
    for (int64_t off = 0; off < sizes[i]; off += kCopySliceBytes) {
      slices.push_back({i, off, std::min(kCopySliceBytes, sizes[i] - off)});
    }
    total += sizes[i];
  }
  const int threads = total < (256 << 10) ? 1 : num_threads;
  parallel_for(static_cast<int64_t>(slices.size()), threads, [&](int64_t k) {
    const Slice& s = slices[static_cast<size_t>(k)];
    std::memcpy(reinterpret_cast<char*>(dst[s.entry]) + s.offset,
                reinterpret_cast<const char*>(src[s.entry]) + s.offset,
                static_cast<size_t>(s.bytes));
  });
}

}  // namespace lmcache_ascend
