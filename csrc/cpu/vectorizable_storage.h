// Storage types for the CPU loops that the compiler can vectorise.
//
// GCC leaves loops over c10::BFloat16 scalar, which made bfloat16 steps several
// times slower than float32 ones. Bf16Bits holds the same 16 bits and converts
// with the same rounding (to nearest even, NaN to 0x7FC0) in plain integer
// arithmetic, which vectorises. (c10::Half converts through scalar F16C
// intrinsics and _Float16 does not vectorise with GCC 12: float16 stays scalar.)
#pragma once

#include <c10/util/BFloat16.h>

#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace fused_accum {
namespace cpu {

struct Bf16Bits {
  uint16_t bits;

  Bf16Bits() = default;
  inline __attribute__((always_inline)) Bf16Bits(float value) {
    uint32_t u;
    std::memcpy(&u, &value, sizeof(u));
    const uint32_t rounded = (u + ((u >> 16) & 1u) + 0x7FFFu) >> 16;
    bits = static_cast<uint16_t>(value != value ? 0x7FC0u : rounded);
  }
  inline __attribute__((always_inline)) operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &u, sizeof(value));
    return value;
  }
};

static_assert(sizeof(Bf16Bits) == sizeof(c10::BFloat16) &&
                  alignof(Bf16Bits) == alignof(c10::BFloat16),
              "Bf16Bits must lay out like c10::BFloat16");

// Rounds n floats to bfloat16 exactly as Bf16Bits(float) rounds each one.
//
// The rounding was about half the work of a bfloat16 step: some ten integer
// instructions per 16 values, on the two ports that also do the Adam math.
// With AVX512-BF16 one instruction rounds 32 values to nearest even. It
// differs from torch's rounding in two cases only: it flushes subnormal inputs
// to zero and it keeps NaN payloads (torch makes every NaN 0x7FC0), so a group
// of 32 holding either takes the integer rounding.
inline void round_to_bf16(const float* __restrict__ from, Bf16Bits* __restrict__ to,
                          int64_t n) {
  int64_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  constexpr int kQuietNan = 0x01, kSubnormal = 0x20, kSignalingNan = 0x80;
  constexpr int kRoundedOtherwise = kQuietNan | kSubnormal | kSignalingNan;
  for (; i + 32 <= n; i += 32) {
    const __m512 low = _mm512_loadu_ps(from + i);
    const __m512 high = _mm512_loadu_ps(from + i + 16);
    if (_mm512_fpclass_ps_mask(low, kRoundedOtherwise) |
        _mm512_fpclass_ps_mask(high, kRoundedOtherwise)) {
      for (int64_t j = i; j < i + 32; ++j) to[j] = Bf16Bits(from[j]);
      continue;
    }
    const __m512bh rounded = _mm512_cvtne2ps_pbh(high, low);
    _mm512_storeu_si512(static_cast<void*>(to + i), reinterpret_cast<const __m512i&>(rounded));
  }
#endif
  for (; i < n; ++i) to[i] = Bf16Bits(from[i]);
}

// The type a CPU loop walks for storage of type T (same bits, same layout).
template <typename T>
struct LoopStorage {
  using type = T;
};
template <>
struct LoopStorage<c10::BFloat16> {
  using type = Bf16Bits;
};

template <typename T>
using loop_storage_t = typename LoopStorage<T>::type;

template <typename T>
loop_storage_t<T>* loop_pointer(T* p) {
  return reinterpret_cast<loop_storage_t<T>*>(p);
}

}  // namespace cpu
}  // namespace fused_accum
