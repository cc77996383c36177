// Sixteen floats in one AVX-512 register, as a number type that the element
// update in adam_math.h can be instantiated with.
//
// A bfloat16 step is bound by arithmetic as much as by memory. Converting each
// block to float scratch in L1, stepping the scratch and converting it back
// cost about as much again as the update itself: three extra loads and stores
// per value. With FloatLanes the CPU kernel loads 16 bfloat16 values, widens
// them in a register, runs AdamElementOp on the register and rounds on the way
// out; float32 storage takes the same loop (adam_piece_in_lanes.h). Every
// operation below is the IEEE float operation the scalar code performs, so the
// results are bit for bit those of the element functor (tests/test_cuda_element_op.py).
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512BF16__)
#define FUSED_ACCUM_FLOAT_LANES 1

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "../adam_element_op.h"
#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {

struct FloatLanes {
  static constexpr int64_t kWidth = 16;
  __m512 v;

  FloatLanes() = default;
  explicit FloatLanes(__m512 lanes) : v(lanes) {}
  explicit FloatLanes(float value) : v(_mm512_set1_ps(value)) {}
};

inline FloatLanes operator+(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_add_ps(a.v, b.v));
}
inline FloatLanes operator-(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_sub_ps(a.v, b.v));
}
inline FloatLanes operator*(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_mul_ps(a.v, b.v));
}
inline FloatLanes operator/(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_div_ps(a.v, b.v));
}

// A sign flip, as scalar negation is (0 - x would turn -0 into +0).
inline FloatLanes operator-(FloatLanes a) {
  return FloatLanes(_mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN))));
}

// Found by argument-dependent lookup from adam_update. The sqrt and max take
// their masked forms with every lane set, which compile to the same
// instructions: GCC 12 warns that the plain forms read an uninitialised value.
constexpr __mmask16 kEveryLane = 0xFFFF;
inline FloatLanes fa_fma(FloatLanes a, FloatLanes b, FloatLanes c) {
  return FloatLanes(_mm512_fmadd_ps(a.v, b.v, c.v));
}
inline FloatLanes fa_sqrt(FloatLanes a) {
  return FloatLanes(_mm512_mask_sqrt_ps(a.v, kEveryLane, a.v));
}
// vmaxps returns its second operand when the first is not greater, NaN and
// equal zeros included: the scalar `a > b ? a : b`.
inline FloatLanes fa_max(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_mask_max_ps(b.v, kEveryLane, a.v, b.v));
}

// Which of the 16 lanes at a position are elements: all of them, or the
// leading ones of a tensor's last partial group (masked, so nothing past the
// end is read or written).
struct AllLanes {};
struct LeadingLanes {
  __mmask16 live;
  explicit LeadingLanes(int64_t count) : live(static_cast<__mmask16>((1u << count) - 1u)) {}
};

// Calls fn(i, lanes) for each group of 16 elements of [begin, end), the last
// partial group through masks.
template <typename Fn>
inline void for_each_lanes(int64_t begin, int64_t end, const Fn& fn) {
  int64_t i = begin;
  for (; i + FloatLanes::kWidth <= end; i += FloatLanes::kWidth) fn(i, AllLanes{});
  if (i < end) fn(i, LeadingLanes(end - i));
}

inline FloatLanes load_lanes(const float* from, AllLanes) {
  return FloatLanes(_mm512_loadu_ps(from));
}
inline FloatLanes load_lanes(const float* from, LeadingLanes lanes) {
  return FloatLanes(_mm512_maskz_loadu_ps(lanes.live, from));
}

// A bfloat16 value is the top half of the float with the same bits: one word
// permute puts word j in the top half of lane j and zeroes the bottom halves.
inline FloatLanes widen_bf16(__m256i bits) {
  const __m512i to_top_halves = _mm512_set_epi16(
      15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
      7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  constexpr __mmask32 kTopHalves = 0xAAAAAAAAu;
  return FloatLanes(_mm512_castsi512_ps(
      _mm512_maskz_permutexvar_epi16(kTopHalves, to_top_halves, _mm512_castsi256_si512(bits))));
}
inline FloatLanes load_lanes(const Bf16Bits* from, AllLanes) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(from)));
}
inline FloatLanes load_lanes(const Bf16Bits* from, LeadingLanes lanes) {
  return widen_bf16(_mm256_maskz_loadu_epi16(lanes.live, from));
}

inline __mmask16 live_mask(AllLanes) { return kEveryLane; }
inline __mmask16 live_mask(LeadingLanes lanes) { return lanes.live; }

inline void store_lanes(FloatLanes x, float* to, AllLanes) { _mm512_storeu_ps(to, x.v); }
inline void store_lanes(FloatLanes x, float* to, LeadingLanes lanes) {
  _mm512_mask_storeu_ps(to, lanes.live, x.v);
}

// vcvtneps2bf16 rounds to nearest even in one instruction, where the integer
// rounding takes some ten on the ports the update also needs. It differs from
// torch's rounding (Bf16Bits) in two cases only: it flushes subnormal inputs to
// zero and keeps NaN payloads (torch makes every NaN 0x7FC0). A group of 16
// holding either is rounded the integer way (tests/test_bf16_rounding.py).
template <typename Lanes>
inline void store_lanes(FloatLanes x, Bf16Bits* to, Lanes lanes) {
  constexpr int kQuietNan = 0x01, kSubnormal = 0x20, kSignalingNan = 0x80;
  constexpr bool kAll = std::is_same_v<Lanes, AllLanes>;
  const __mmask16 live = live_mask(lanes);
  if (_mm512_mask_fpclass_ps_mask(live, x.v, kQuietNan | kSubnormal | kSignalingNan)) {
    alignas(64) float values[FloatLanes::kWidth];
    _mm512_store_ps(values, x.v);
    for (int64_t j = 0; j < FloatLanes::kWidth; ++j) {
      if ((live >> j) & 1u) to[j] = Bf16Bits(values[j]);
    }
    return;
  }
  const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(x.v);
  if constexpr (kAll) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), rounded);
  } else {
    _mm256_mask_storeu_epi16(to, live, rounded);
  }
}

}  // namespace cpu

template <>
struct MathType<cpu::FloatLanes> {
  using type = cpu::FloatLanes;
};

}  // namespace fused_accum

#endif

#include <type_traits>

#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {

// Whether a loop over storage types P (params) and G (grads) runs on FloatLanes.
#ifdef FUSED_ACCUM_FLOAT_LANES
template <typename T>
constexpr bool kLanesStorage = std::is_same_v<T, float> || std::is_same_v<T, Bf16Bits>;
template <typename P, typename G>
constexpr bool kSteppedInLanes = kLanesStorage<P> && kLanesStorage<G>;
#else
template <typename P, typename G>
constexpr bool kSteppedInLanes = false;
#endif

}  // namespace cpu
}  // namespace fused_accum
