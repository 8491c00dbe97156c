// Block-granular transfer (plane_transfer.h, BlockCall): one request's objects
// in one native call. The Python front end checks the arguments' kinds once;
// binding the table to the buffers and objects and turning block ids into slot
// ids happen here, per object, where they cost nanoseconds instead of the
// microseconds of numpy calls (a 16-layer DSA-C8 chunk's whole front end
// was ~50 us against ~270 us of copy).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "plane_transfer.h"

namespace lmcache_ascend {
namespace {

void check_call(const BlockCall& call, int64_t num_planes) {
  if (call.block_size <= 0 || call.blocks_per_object <= 0) {
    throw std::invalid_argument("block_size and blocks_per_object must be > 0");
  }
  if (call.skip_blocks < 0) throw std::invalid_argument("skip_blocks must be >= 0");
  if (call.block_ids.itemsize != 4 && call.block_ids.itemsize != 8) {
    throw std::invalid_argument("block_ids must hold int32 or int64");
  }
  const int64_t count = call.block_ids.count;
  if (count < 0) throw std::invalid_argument("block id count must be >= 0");
  if (count > 0 && call.block_ids.data == nullptr) throw std::invalid_argument("block_ids is null");
  const int64_t needed = (count + call.blocks_per_object - 1) / call.blocks_per_object;
  if (call.num_objects != needed) {
    throw std::invalid_argument(std::to_string(count) + " block ids need " + std::to_string(needed) +
                                " objects, got " + std::to_string(call.num_objects));
  }
  for (int64_t i = 0; i < call.num_objects; ++i) {
    if (call.objects[i] == 0) throw std::invalid_argument("object " + std::to_string(i) + " is null");
  }
  for (int64_t p = 0; p < num_planes; ++p) {
    const int64_t b = call.buffer_index[p];
    if (b < 0 || b >= call.num_buffers) {
      throw std::invalid_argument("plane " + std::to_string(p) + " names buffer " + std::to_string(b) +
                                  " of " + std::to_string(call.num_buffers));
    }
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t id = call.block_ids.at(i);
    if (id < 0 || id >= call.num_blocks) {
      throw std::out_of_range("block_ids [" + std::to_string(i) + "] = " + std::to_string(id) +
                              " is outside [0, " + std::to_string(call.num_blocks) + ")");
    }
  }
}

}  // namespace

void transfer_blocks(const PlaneSpec* planes, int64_t num_planes, const BlockCall& call,
                     Direction direction, int num_threads, int64_t streaming_min_bytes) {
  if (num_planes < 0) throw std::invalid_argument("num_planes must be >= 0");
  check_call(call, num_planes);
  if (num_planes == 0) return;
  int64_t token_bytes = 0;
  for (int64_t p = 0; p < num_planes; ++p) token_bytes += planes[p].num_heads * planes[p].head_bytes;

  std::vector<PlaneSpec> bound(planes, planes + num_planes);
  for (int64_t p = 0; p < num_planes; ++p) bound[p].paged_base += call.buffer_ptrs[call.buffer_index[p]];
  const int64_t bs = call.block_size;
  // Sized by the blocks an object really gets: a caller's chunk size is not bounded here.
  std::vector<int64_t> slots(static_cast<size_t>(std::min(call.blocks_per_object, call.block_ids.count) * bs));
  for (int64_t i = 0; i < call.num_objects; ++i) {
    const int64_t first = i * call.blocks_per_object;
    const int64_t blocks = std::min(call.blocks_per_object, call.block_ids.count - first);
    const int64_t skip = std::clamp<int64_t>(call.skip_blocks - first, 0, blocks) * bs;
    if (skip == blocks * bs) continue;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t base = call.block_ids.at(first + b) * bs;
      for (int64_t u = 0; u < bs; ++u) slots[static_cast<size_t>(b * bs + u)] = base + u;
    }
    for (int64_t p = 0; p < num_planes; ++p) {
      bound[p].obj_base = planes[p].obj_base + static_cast<int64_t>(call.objects[i]);
    }
    const int64_t tokens = blocks * bs;
    const bool streaming = token_bytes * (tokens - skip) >= streaming_min_bytes;
    transfer_planes(bound.data(), num_planes, SlotList{slots.data(), 8, tokens}, skip, direction,
                    num_threads, streaming);
  }
}

}  // namespace lmcache_ascend
