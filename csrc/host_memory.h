// Host memory helpers: page-aligned allocations with a registry (so a bad or
// double free is an error, not heap corruption) and multi-threaded memcpy.
#pragma once

#include <cstdint>
#include <vector>

namespace lmcache_ascend {

// Allocates `size` bytes aligned to `alignment` (a power of two >= the page
// size), zero-filled so every page is touched by the allocating thread.
// `huge_pages` asks the kernel for transparent huge pages (advisory).
uintptr_t host_alloc(int64_t size, int64_t alignment, bool huge_pages);

// Frees an address returned by host_alloc. Throws std::invalid_argument for
// an address this registry did not hand out (or already freed).
void host_free(uintptr_t addr);

// Size of a live allocation, or -1 when `addr` is not one.
int64_t host_allocation_size(uintptr_t addr);
int64_t host_live_allocations();

// dst[i] <- src[i] for sizes[i] bytes, split across threads by bytes.
void batched_copy(const std::vector<uintptr_t>& src,
                  const std::vector<uintptr_t>& dst,
                  const std::vector<int64_t>& sizes, int num_threads);

int64_t page_size();

}  // namespace lmcache_ascend
