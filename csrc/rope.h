// K re-rotation on host memory: rotary_embedding_k_fused semantics.
//
// For every token t and head h of a key tensor, the first `rot_dim` elements of
// the head are taken as rot_dim/2 pairs (x, y): NeoX style pairs element i with
// i + rot_dim/2, GPT-J style pairs 2i with 2i+1. The rotation at the old
// position is undone and the one at the new position applied:
//
//   x' = x*cos_o + y*sin_o      y' = y*cos_o - x*sin_o
//   x  = x'*cos_n - y'*sin_n    y  = y'*cos_n + x'*sin_n
//
// cos/sin come from a table whose row p holds rot_dim/2 cosines followed by
// rot_dim/2 sines for position p. Elements past rot_dim are left alone.
//
// Arithmetic runs in `compute` precision, which the caller sets to the dtype
// torch would promote the key and table dtypes to: f32 math is done in float
// with one rounding when the key is stored; f16/bf16 math rounds every
// multiply and add to that type, exactly as torch evaluates the same formula.
//
// Addresses are host memory; strides are in elements; the last dim of a head
// is contiguous. Throws std::invalid_argument / std::out_of_range before
// writing anything when a geometry value or a position is out of range.
#pragma once

#include <cstdint>

namespace lmcache_ascend {

enum class FloatKind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct RopeKey {
  uintptr_t base;
  FloatKind kind;
  int64_t num_tokens;
  int64_t num_heads;
  int64_t token_stride;  // elements between tokens
  int64_t head_stride;   // elements between heads
};

struct RopeTable {
  uintptr_t base;
  FloatKind kind;
  int64_t rows;        // positions covered
  int64_t rot_dim;     // even, <= head extent the caller validated
  int64_t row_stride;  // elements between rows
};

struct RopePositions {
  uintptr_t old_base;
  uintptr_t new_base;
  int itemsize;  // 4 (int32) or 8 (int64)
};

void rotate_keys(const RopeKey& key, const RopeTable& table, const RopePositions& positions,
                 bool is_neox, FloatKind compute, int num_threads);

// Flat-argument form bound by pybind11 (csrc/bindings.cpp).
void rope_k_fused(uintptr_t key_addr, int key_kind, int64_t num_tokens, int64_t num_heads,
                  int64_t token_stride, int64_t head_stride, uintptr_t table_addr,
                  int table_kind, int64_t table_rows, int64_t rot_dim, int64_t row_stride,
                  uintptr_t old_positions_addr, uintptr_t new_positions_addr,
                  int positions_itemsize, bool is_neox, int compute_kind, int num_threads);

}  // namespace lmcache_ascend
