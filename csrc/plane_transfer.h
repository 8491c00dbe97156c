// Paged KV <-> contiguous memory-object transfer on host memory.
//
// Every supported KV layout is lowered (in Python, lmcache_ascend/core/planes.py)
// to a table of "planes". A plane is one 2-D view: for every token slot of a
// paged buffer it names `num_heads` runs of `head_bytes` bytes, and for every
// token of the memory object it names one contiguous row of
// `num_heads * head_bytes` bytes. One plane is e.g. "the K half of layer 3".
//
//   paged address of (slot, head) = paged_base + (slot / block_size) * block_stride
//                                  + (slot % block_size) * token_stride
//                                  + head * head_stride
//   object address of (token, head) = obj_base + token * obj_token_stride
//                                    + head * head_bytes
//
// With `parts` > 1 each head run is cut into `parts` equal pieces and piece k
// lives at obj_base + k * obj_part_stride + token * obj_token_stride
// + head * (head_bytes / parts). This moves packed [K | V] heads (vLLM CPU)
// into separate K and V rows in one pass, writing and reading both sides in
// address order.
//
// Direction follows lmcache.lmcache_native.TransferDirection:
//   0 (H2D) memory object -> paged buffer (load), 1 (D2H) paged -> object (store).
// Tokens with slot < 0 and the first `skip_prefix` tokens are left untouched.
// A slot >= num_slots is reported as std::out_of_range before any byte moves.
#pragma once

#include <cstdint>

namespace lmcache_ascend {

struct PlaneSpec {
  int64_t paged_base;
  int64_t block_stride;
  int64_t token_stride;
  int64_t head_stride;
  int64_t num_heads;
  int64_t head_bytes;
  int64_t block_size;
  int64_t num_slots;
  int64_t obj_base;
  int64_t obj_token_stride;
  int64_t parts;
  int64_t obj_part_stride;
};
static_assert(sizeof(PlaneSpec) == 12 * sizeof(int64_t),
              "PlaneSpec must stay a flat row of twelve int64 fields");

enum class Direction : int { kToPaged = 0, kToObject = 1 };

struct SlotList {
  const void* data;  // int32 or int64 slot ids
  int itemsize;      // 4 or 8
  int64_t count;
  int64_t at(int64_t i) const {
    return itemsize == 4 ? static_cast<const int32_t*>(data)[i]
                         : static_cast<const int64_t*>(data)[i];
  }
};

// Validates plane geometry and slot ranges, then copies. Throws
// std::invalid_argument / std::out_of_range without copying on bad input.
// `streaming` writes the destination with non-temporal stores (stream_copy.h).
void transfer_planes(const PlaneSpec* planes, int64_t num_planes,
                     const SlotList& slots, int64_t skip_prefix,
                     Direction direction, int num_threads, bool streaming);

// Block-granular form (LMCache's multi_layer_block_kv_transfer), one call for
// every object of a request. `planes` is the call's table with paged_base
// relative to buffer `buffer_index[p]` of `buffer_ptrs` and obj_base relative
// to the object; object i holds blocks [i * blocks_per_object, (i + 1) *
// blocks_per_object) of `block_ids` (the last one may be partly filled), token
// u of a block at slot block * block_size + u. The first `skip_blocks` block
// ids are left untouched. Every block id is checked against [0, num_blocks)
// before any byte moves (std::out_of_range naming the first bad one). Objects
// of at least `streaming_min_bytes` are written with non-temporal stores.
struct BlockCall {
  const int64_t* buffer_index;
  const int64_t* buffer_ptrs;
  int64_t num_buffers;
  const uintptr_t* objects;
  int64_t num_objects;
  SlotList block_ids;
  int64_t block_size;
  int64_t blocks_per_object;
  int64_t num_blocks;
  int64_t skip_blocks;
};

void transfer_blocks(const PlaneSpec* planes, int64_t num_planes, const BlockCall& call,
                     Direction direction, int num_threads, int64_t streaming_min_bytes);

}  // namespace lmcache_ascend
