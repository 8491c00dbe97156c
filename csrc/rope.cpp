// K re-rotation on host memory (see rope.h for the contract).
#include "rope.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "thread_pool.h"

// The products and sums below must be rounded one by one, as torch rounds
// them: never let the compiler fuse them into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#define LA_NO_CONTRACT
#elif defined(__GNUC__)
#define LA_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define LA_NO_CONTRACT
#endif

namespace lmcache_ascend {
namespace {

constexpr int64_t kTokensPerTask = 32;

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN becomes the canonical quiet NaN (as c10::BFloat16).
inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  const uint32_t bits = float_to_bits(f);
  const uint32_t bias = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + bias) >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Round to nearest even, overflow to infinity, NaN to a quiet NaN.
inline uint16_t float_to_f16(float f) {
  uint32_t bits = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  bits &= 0x7FFFFFFFu;
  if (bits >= 0x7F800000u) return sign | 0x7C00u | (bits > 0x7F800000u ? 0x0200u : 0u);
  if (bits >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to infinity
  if (bits < 0x38800000u) {
    // Below the smallest normal half: adding 0.5f puts the half subnormal unit
    // (2^-24) at the float's last mantissa bit, so the float adder rounds for us.
    const float shifted = bits_to_float(bits) + 0.5f;
    return sign | static_cast<uint16_t>(float_to_bits(shifted) - float_to_bits(0.5f));
  }
  const uint32_t odd = (bits >> 13) & 1u;
  bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + odd;
  return sign | static_cast<uint16_t>(bits >> 13);
}

template <FloatKind K>
inline float load(const void* base, int64_t index) {
  if constexpr (K == FloatKind::kF32) {
    return static_cast<const float*>(base)[index];
  } else if constexpr (K == FloatKind::kF16) {
    return f16_to_float(static_cast<const uint16_t*>(base)[index]);
  } else {
    return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
  }
}

template <FloatKind K>
inline void store(void* base, int64_t index, float value) {
  if constexpr (K == FloatKind::kF32) {
    static_cast<float*>(base)[index] = value;
  } else if constexpr (K == FloatKind::kF16) {
    static_cast<uint16_t*>(base)[index] = float_to_f16(value);
  } else {
    static_cast<uint16_t*>(base)[index] = float_to_bf16(value);
  }
}

template <FloatKind C>
inline float round_to(float value) {
  if constexpr (C == FloatKind::kF32) {
    return value;
  } else if constexpr (C == FloatKind::kF16) {
    return f16_to_float(float_to_f16(value));
  } else {
    return bf16_to_float(float_to_bf16(value));
  }
}

float load_any(FloatKind kind, const void* base, int64_t index) {
  switch (kind) {
    case FloatKind::kF32: return load<FloatKind::kF32>(base, index);
    case FloatKind::kF16: return load<FloatKind::kF16>(base, index);
    case FloatKind::kBF16: return load<FloatKind::kBF16>(base, index);
  }
  throw std::invalid_argument("unknown float kind");
}

int64_t position_at(const RopePositions& p, uintptr_t base, int64_t i) {
  const void* data = reinterpret_cast<const void*>(base);
  return p.itemsize == 4 ? static_cast<const int32_t*>(data)[i] : static_cast<const int64_t*>(data)[i];
}

// cos_o, sin_o, cos_n, sin_n of one token, as floats (exact: every table dtype
// converts to float without rounding).
struct TokenAngles {
  std::vector<float> cos_old, sin_old, cos_new, sin_new;
  explicit TokenAngles(int64_t half) : cos_old(half), sin_old(half), cos_new(half), sin_new(half) {}

  void fill(const RopeTable& table, int64_t old_pos, int64_t new_pos) {
    const void* base = reinterpret_cast<const void*>(table.base);
    const int64_t half = table.rot_dim / 2;
    const int64_t o = old_pos * table.row_stride;
    const int64_t n = new_pos * table.row_stride;
    for (int64_t i = 0; i < half; ++i) {
      cos_old[i] = load_any(table.kind, base, o + i);
      sin_old[i] = load_any(table.kind, base, o + half + i);
      cos_new[i] = load_any(table.kind, base, n + i);
      sin_new[i] = load_any(table.kind, base, n + half + i);
    }
  }
};

template <FloatKind K, FloatKind C>
LA_NO_CONTRACT void rotate_tokens(const RopeKey& key, const RopeTable& table,
                                  const RopePositions& positions, bool is_neox,
                                  int64_t first, int64_t last) {
  const int64_t half = table.rot_dim / 2;
  TokenAngles a(half);
  void* base = reinterpret_cast<void*>(key.base);
  for (int64_t t = first; t < last; ++t) {
    a.fill(table, position_at(positions, positions.old_base, t),
           position_at(positions, positions.new_base, t));
    for (int64_t h = 0; h < key.num_heads; ++h) {
      const int64_t head = t * key.token_stride + h * key.head_stride;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t xi = head + (is_neox ? i : 2 * i);
        const int64_t yi = head + (is_neox ? i + half : 2 * i + 1);
        const float x = load<K>(base, xi);
        const float y = load<K>(base, yi);
        const float xr = round_to<C>(round_to<C>(x * a.cos_old[i]) + round_to<C>(y * a.sin_old[i]));
        const float yr = round_to<C>(round_to<C>(y * a.cos_old[i]) - round_to<C>(x * a.sin_old[i]));
        const float xo = round_to<C>(round_to<C>(xr * a.cos_new[i]) - round_to<C>(yr * a.sin_new[i]));
        const float yo = round_to<C>(round_to<C>(yr * a.cos_new[i]) + round_to<C>(xr * a.sin_new[i]));
        store<K>(base, xi, xo);
        store<K>(base, yi, yo);
      }
    }
  }
}

using RotateFn = void (*)(const RopeKey&, const RopeTable&, const RopePositions&, bool, int64_t,
                          int64_t);

template <FloatKind K>
RotateFn pick_compute(FloatKind compute) {
  switch (compute) {
    case FloatKind::kF32: return &rotate_tokens<K, FloatKind::kF32>;
    case FloatKind::kF16: return &rotate_tokens<K, FloatKind::kF16>;
    case FloatKind::kBF16: return &rotate_tokens<K, FloatKind::kBF16>;
  }
  throw std::invalid_argument("compute: unknown float kind");
}

RotateFn pick(FloatKind key, FloatKind compute) {
  switch (key) {
    case FloatKind::kF32: return pick_compute<FloatKind::kF32>(compute);
    case FloatKind::kF16: return pick_compute<FloatKind::kF16>(compute);
    case FloatKind::kBF16: return pick_compute<FloatKind::kBF16>(compute);
  }
  throw std::invalid_argument("key: unknown float kind");
}

FloatKind to_kind(int value, const char* name) {
  if (value < 0 || value > 2) throw std::invalid_argument(std::string(name) + ": unknown float kind");
  return static_cast<FloatKind>(value);
}

void check(const RopeKey& key, const RopeTable& table, const RopePositions& positions) {
  if (key.num_tokens < 0 || key.num_heads < 1) throw std::invalid_argument("key: bad token/head count");
  if (key.token_stride < 0 || key.head_stride < 0) throw std::invalid_argument("key: negative stride");
  if (table.rot_dim < 2 || table.rot_dim % 2) throw std::invalid_argument("cos_sin_cache: rot_dim must be even and >= 2");
  if (table.rows < 1 || table.row_stride < table.rot_dim) throw std::invalid_argument("cos_sin_cache: bad geometry");
  if (positions.itemsize != 4 && positions.itemsize != 8) throw std::invalid_argument("positions: itemsize must be 4 or 8");
  if (key.num_tokens == 0) return;
  if (!key.base || !table.base || !positions.old_base || !positions.new_base) {
    throw std::invalid_argument("null address");
  }
  for (int64_t t = 0; t < key.num_tokens; ++t) {
    for (uintptr_t base : {positions.old_base, positions.new_base}) {
      const int64_t p = position_at(positions, base, t);
      if (p < 0 || p >= table.rows) {
        throw std::out_of_range("position " + std::to_string(p) + " outside cos_sin_cache rows [0, " +
                                std::to_string(table.rows) + ")");
      }
    }
  }
}

}  // namespace

void rotate_keys(const RopeKey& key, const RopeTable& table, const RopePositions& positions,
                 bool is_neox, FloatKind compute, int num_threads) {
  check(key, table, positions);
  if (key.num_tokens == 0) return;
  const RotateFn fn = pick(key.kind, compute);
  const int64_t tasks = (key.num_tokens + kTokensPerTask - 1) / kTokensPerTask;
  parallel_for(tasks, num_threads, [&](int64_t task) {
    const int64_t first = task * kTokensPerTask;
    const int64_t last = first + kTokensPerTask < key.num_tokens ? first + kTokensPerTask : key.num_tokens;
    fn(key, table, positions, is_neox, first, last);
  });
}

void rope_k_fused(uintptr_t key_addr, int key_kind, int64_t num_tokens, int64_t num_heads,
                  int64_t token_stride, int64_t head_stride, uintptr_t table_addr,
                  int table_kind, int64_t table_rows, int64_t rot_dim, int64_t row_stride,
                  uintptr_t old_positions_addr, uintptr_t new_positions_addr,
                  int positions_itemsize, bool is_neox, int compute_kind, int num_threads) {
  const RopeKey key{key_addr, to_kind(key_kind, "key"), num_tokens, num_heads, token_stride, head_stride};
  const RopeTable table{table_addr, to_kind(table_kind, "cos_sin_cache"), table_rows, rot_dim, row_stride};
  const RopePositions positions{old_positions_addr, new_positions_addr, positions_itemsize};
  rotate_keys(key, table, positions, is_neox, to_kind(compute_kind, "compute"), num_threads);
}

}  // namespace lmcache_ascend
