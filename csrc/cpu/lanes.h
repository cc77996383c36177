// Float and uint32 lanes in vector registers, as number types that the element
// update (adam_math.h) and the rounding noise (adam_element_op.h) can be
// instantiated with, plus loads and stores that widen and round 16-bit storage
// in registers.
//
// Included only by the per-instruction-set loops (cpu/isa/*.cpp through
// adam_loops.h), so the width follows the flags setup.py compiles each with:
// 16 lanes with AVX-512 (one register) or AVX2+FMA+F16C (two), 1 otherwise.
// Everything lives in that set's namespace and is always inlined: no symbol compiled for one set
// can be the copy the linker keeps for code that runs on a CPU without it.
//
// Every operation is the IEEE operation the scalar code performs and every
// conversion rounds as Bf16Bits, HalfBits and stochastic_bf16_bits do, so
// results are bit for bit those of AdamElementOp on one element. The
// AVX-512 level does not use the AVX512-BF16 conversion: it flushes subnormals
// and keeps NaN payloads, where torch's rounding keeps the one and not the other.
#pragma once

#ifndef FUSED_ACCUM_CPU_ISA
#error "include through cpu/isa/*.cpp, which names the instruction set"
#endif

#include <cstdint>

#include "../adam_element_op.h"
#include "vectorizable_storage.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__)
#define FUSED_ACCUM_LANES_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FUSED_ACCUM_LANES_AVX2 1
#endif

#if defined(FUSED_ACCUM_LANES_AVX512) || defined(FUSED_ACCUM_LANES_AVX2)
#include <immintrin.h>
#endif

#define FA_LANES inline __attribute__((always_inline))

namespace fused_accum {
namespace cpu {
namespace FUSED_ACCUM_CPU_ISA {

// Which element of a group each lane holds, the same for every load, store and
// index of one loop. kInOrder: lane k holds element k. kEvenOdd: the AVX2 lanes
// 0-7 hold the group's even elements and lanes 8-15 its odd ones, the order in
// which a bfloat16 stream widens and narrows with the fewest instructions (see
// load_lanes); other streams pay a reordering. The other levels, one register
// wide, keep every order in order.
enum class LaneOrder { kInOrder, kEvenOdd };

#if defined(FUSED_ACCUM_LANES_AVX512)

// The masked forms with every lane set, used below where GCC 12's plain forms
// warn that they read an uninitialised value (-Wall), compile to the same
// instructions.
constexpr __mmask16 kEveryLane = 0xFFFF;

struct FloatLanes {
  static constexpr int64_t kWidth = 16;
  __m512 v;

  FloatLanes() = default;
  FA_LANES explicit FloatLanes(__m512 lanes) : v(lanes) {}
  FA_LANES explicit FloatLanes(float broadcast) : v(_mm512_set1_ps(broadcast)) {}
};

struct UintLanes {
  static constexpr int64_t kWidth = 16;
  __m512i v;

  UintLanes() = default;
  FA_LANES explicit UintLanes(__m512i lanes) : v(lanes) {}
  FA_LANES explicit UintLanes(uint32_t broadcast)
      : v(_mm512_set1_epi32(static_cast<int>(broadcast))) {}
};

FA_LANES FloatLanes operator+(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_add_ps(a.v, b.v));
}
FA_LANES FloatLanes operator-(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_sub_ps(a.v, b.v));
}
FA_LANES FloatLanes operator*(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_mul_ps(a.v, b.v));
}
FA_LANES FloatLanes operator/(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_div_ps(a.v, b.v));
}
// A sign flip, as scalar negation is (0 - x would turn -0 into +0).
FA_LANES FloatLanes operator-(FloatLanes a) {
  return FloatLanes(_mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN))));
}

FA_LANES FloatLanes fa_fma(FloatLanes a, FloatLanes b, FloatLanes c) {
  return FloatLanes(_mm512_fmadd_ps(a.v, b.v, c.v));
}
FA_LANES FloatLanes fa_sqrt(FloatLanes a) {
  return FloatLanes(_mm512_mask_sqrt_ps(a.v, kEveryLane, a.v));
}
// vmaxps returns its second operand when the first is not greater, NaN and
// equal zeros included: the scalar `a > b ? a : b`.
FA_LANES FloatLanes fa_max(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm512_mask_max_ps(b.v, kEveryLane, a.v, b.v));
}

FA_LANES UintLanes operator^(UintLanes a, UintLanes b) {
  return UintLanes(_mm512_xor_si512(a.v, b.v));
}
FA_LANES UintLanes operator+(UintLanes a, UintLanes b) {
  return UintLanes(_mm512_add_epi32(a.v, b.v));
}
FA_LANES UintLanes operator*(UintLanes a, UintLanes b) {
  return UintLanes(_mm512_mullo_epi32(a.v, b.v));
}
FA_LANES UintLanes operator>>(UintLanes a, int shift) {
  return UintLanes(_mm512_maskz_srli_epi32(kEveryLane, a.v, static_cast<unsigned>(shift)));
}
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES UintLanes iota_lanes(uint32_t first) {
  return UintLanes(_mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int>(first)),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
}

template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const float* from) { return FloatLanes(_mm512_loadu_ps(from)); }
// A bfloat16 value is the top half of the float with the same bits.
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const Bf16Bits* from) {
  const __m512i bits = _mm512_maskz_cvtepu16_epi32(
      kEveryLane, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from)));
  return FloatLanes(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(kEveryLane, bits, 16)));
}
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const HalfBits* from) {
  return FloatLanes(_mm512_maskz_cvtph_ps(
      kEveryLane, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from))));
}

FA_LANES bool any_nan(FloatLanes x) { return _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q) != 0; }

// Bf16Bits(x) of each lane, in the low half of a 32-bit lane: round to nearest
// even in integer arithmetic, NaN to 0x7FC0 (MAY_BE_NAN false: the caller knows
// no lane is NaN).
template <bool MAY_BE_NAN>
FA_LANES __m512i bf16_bits_of(FloatLanes x) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i odd =
      _mm512_and_si512(_mm512_maskz_srli_epi32(kEveryLane, u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kEveryLane, _mm512_add_epi32(_mm512_add_epi32(u, odd), _mm512_set1_epi32(0x7FFF)), 16);
  if constexpr (!MAY_BE_NAN) return rounded;
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
}
FA_LANES void store_bf16_bits(__m512i bits, Bf16Bits* to) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(to),
                      _mm512_maskz_cvtepi32_epi16(kEveryLane, bits));
}

template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, float* to) { _mm512_storeu_ps(to, x.v); }
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, Bf16Bits* to) {
  store_bf16_bits(bf16_bits_of<MAY_BE_NAN>(x), to);
}
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, HalfBits* to) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(to),
                      _mm512_maskz_cvtps_ph(kEveryLane, x.v, _MM_FROUND_TO_NEAREST_INT));
}

template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const Bf16Bits*) {
  return FloatLanes(_mm512_castsi512_ps(
      _mm512_maskz_slli_epi32(kEveryLane, bf16_bits_of<MAY_BE_NAN>(x), 16)));
}
template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const HalfBits*) {
  return FloatLanes(_mm512_maskz_cvtph_ps(
      kEveryLane, _mm512_maskz_cvtps_ph(kEveryLane, x.v, _MM_FROUND_TO_NEAREST_INT)));
}

// stochastic_bf16_bits of each lane.
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes_stochastic(FloatLanes x, UintLanes noise, Bf16Bits* to) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kEveryLane, _mm512_add_epi32(u, _mm512_maskz_srli_epi32(kEveryLane, noise.v, 16)), 16);
  if constexpr (!MAY_BE_NAN) return store_bf16_bits(rounded, to);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  store_bf16_bits(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0)), to);
}

#elif defined(FUSED_ACCUM_LANES_AVX2)

// 16 lanes in two registers: 16 bfloat16 elements are one 256-bit load or store,
// and the core gets two independent chains to interleave.
struct FloatLanes {
  static constexpr int64_t kWidth = 16;
  __m256 lo, hi;  // lanes 0-7, 8-15

  FloatLanes() = default;
  FA_LANES FloatLanes(__m256 low, __m256 high) : lo(low), hi(high) {}
  FA_LANES explicit FloatLanes(float broadcast)
      : lo(_mm256_set1_ps(broadcast)), hi(_mm256_set1_ps(broadcast)) {}
};

struct UintLanes {
  static constexpr int64_t kWidth = 16;
  __m256i lo, hi;

  UintLanes() = default;
  FA_LANES UintLanes(__m256i low, __m256i high) : lo(low), hi(high) {}
  FA_LANES explicit UintLanes(uint32_t broadcast)
      : lo(_mm256_set1_epi32(static_cast<int>(broadcast))),
        hi(_mm256_set1_epi32(static_cast<int>(broadcast))) {}
};

FA_LANES FloatLanes operator+(FloatLanes a, FloatLanes b) {
  return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
FA_LANES FloatLanes operator-(FloatLanes a, FloatLanes b) {
  return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)};
}
FA_LANES FloatLanes operator*(FloatLanes a, FloatLanes b) {
  return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
}
FA_LANES FloatLanes operator/(FloatLanes a, FloatLanes b) {
  return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)};
}
// A sign flip, as scalar negation is (0 - x would turn -0 into +0).
FA_LANES FloatLanes operator-(FloatLanes a) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return {_mm256_xor_ps(a.lo, sign), _mm256_xor_ps(a.hi, sign)};
}

FA_LANES FloatLanes fa_fma(FloatLanes a, FloatLanes b, FloatLanes c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
FA_LANES FloatLanes fa_sqrt(FloatLanes a) { return {_mm256_sqrt_ps(a.lo), _mm256_sqrt_ps(a.hi)}; }
// vmaxps returns its second operand when the first is not greater, NaN and
// equal zeros included: the scalar `a > b ? a : b`.
FA_LANES FloatLanes fa_max(FloatLanes a, FloatLanes b) {
  return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)};
}

FA_LANES UintLanes operator^(UintLanes a, UintLanes b) {
  return {_mm256_xor_si256(a.lo, b.lo), _mm256_xor_si256(a.hi, b.hi)};
}
FA_LANES UintLanes operator+(UintLanes a, UintLanes b) {
  return {_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)};
}
FA_LANES UintLanes operator*(UintLanes a, UintLanes b) {
  return {_mm256_mullo_epi32(a.lo, b.lo), _mm256_mullo_epi32(a.hi, b.hi)};
}
FA_LANES UintLanes operator>>(UintLanes a, int shift) {
  return {_mm256_srli_epi32(a.lo, shift), _mm256_srli_epi32(a.hi, shift)};
}
// The index of each lane's element, `first` being the group's first.
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES UintLanes iota_lanes(uint32_t first) {
  const __m256i base = _mm256_set1_epi32(static_cast<int>(first));
  if constexpr (ORDER == LaneOrder::kEvenOdd) {
    return {_mm256_add_epi32(base, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
            _mm256_add_epi32(base, _mm256_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15))};
  }
  return {_mm256_add_epi32(base, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
          _mm256_add_epi32(base, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15))};
}

// Lanes in order to even/odd order and back, for the streams whose even/odd
// load or store has no shortcut. The in-lane shuffles leave the 64-bit
// quarters in the order 0, 2, 1, 3, which one cross-lane permute undoes.
FA_LANES __m256 quarters_0213(__m256 x) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(x), 0xD8));
}
FA_LANES FloatLanes even_odd_from_in_order(FloatLanes x) {
  return {quarters_0213(_mm256_shuffle_ps(x.lo, x.hi, _MM_SHUFFLE(2, 0, 2, 0))),
          quarters_0213(_mm256_shuffle_ps(x.lo, x.hi, _MM_SHUFFLE(3, 1, 3, 1)))};
}
FA_LANES FloatLanes in_order_from_even_odd(FloatLanes x) {
  const __m256 even = quarters_0213(x.lo), odd = quarters_0213(x.hi);
  return {_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd)};
}

template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const float* from) {
  const FloatLanes x{_mm256_loadu_ps(from), _mm256_loadu_ps(from + 8)};
  return ORDER == LaneOrder::kEvenOdd ? even_odd_from_in_order(x) : x;
}
// A bfloat16 value is the top half of the float with the same bits. Read as 32
// bits, the even elements are low halves and the odd ones high halves: even/odd
// order takes one shift and one mask where in-order takes two widenings and two
// shifts.
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const Bf16Bits* from) {
  if constexpr (ORDER == LaneOrder::kEvenOdd) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16)),
            _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(~0xFFFF)))};
  }
  const __m128i* halves = reinterpret_cast<const __m128i*>(from);
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(halves)), 16)),
          _mm256_castsi256_ps(
              _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(halves + 1)), 16))};
}
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const HalfBits* from) {
  const __m128i* halves = reinterpret_cast<const __m128i*>(from);
  const FloatLanes x{_mm256_cvtph_ps(_mm_loadu_si128(halves)),
                     _mm256_cvtph_ps(_mm_loadu_si128(halves + 1))};
  return ORDER == LaneOrder::kEvenOdd ? even_odd_from_in_order(x) : x;
}

FA_LANES bool any_nan(FloatLanes x) {
  const __m256 unordered = _mm256_cmp_ps(x.lo, x.hi, _CMP_UNORD_Q);  // a NaN in either half
  return !_mm256_testz_ps(unordered, unordered);
}

// The bfloat16 bits of each lane in the high half of a 32-bit lane (the low half
// is rounding residue): round to nearest even in integer arithmetic, NaN to
// 0x7FC0 (MAY_BE_NAN false: the caller knows no lane is NaN).
template <bool MAY_BE_NAN>
FA_LANES __m256i bf16_in_high_half(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, odd), _mm256_set1_epi32(0x7FFF));
  if constexpr (!MAY_BE_NAN) return rounded;
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC00000), nan);
}
// stochastic_bf16_bits of each lane, in the high half.
template <bool MAY_BE_NAN>
FA_LANES __m256i stochastic_bf16_in_high_half(__m256 x, __m256i noise) {
  const __m256i rounded = _mm256_add_epi32(_mm256_castps_si256(x), _mm256_srli_epi32(noise, 16));
  if constexpr (!MAY_BE_NAN) return rounded;
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC00000), nan);
}
// Stores the high halves of 16 lanes. Even/odd order puts them back in place
// with one shift, one mask and one or. In order, the saturating pack (a plain
// narrowing: each value is at most 0xFFFF) packs within 128-bit halves, so the
// lanes come out as 0-3, 8-11, 4-7, 12-15 and the quarters are put back.
template <LaneOrder ORDER>
FA_LANES void store_high_halves(__m256i low, __m256i high, Bf16Bits* to) {
  __m256i* out = reinterpret_cast<__m256i*>(to);
  if constexpr (ORDER == LaneOrder::kEvenOdd) {
    _mm256_storeu_si256(out, _mm256_or_si256(_mm256_srli_epi32(low, 16),
                                             _mm256_and_si256(high, _mm256_set1_epi32(~0xFFFF))));
  } else {
    const __m256i packed =
        _mm256_packus_epi32(_mm256_srli_epi32(low, 16), _mm256_srli_epi32(high, 16));
    _mm256_storeu_si256(out, _mm256_permute4x64_epi64(packed, 0xD8));
  }
}

template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, float* to) {
  if constexpr (ORDER == LaneOrder::kEvenOdd) x = in_order_from_even_odd(x);
  _mm256_storeu_ps(to, x.lo);
  _mm256_storeu_ps(to + 8, x.hi);
}
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, Bf16Bits* to) {
  store_high_halves<ORDER>(bf16_in_high_half<MAY_BE_NAN>(x.lo),
                           bf16_in_high_half<MAY_BE_NAN>(x.hi), to);
}
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, HalfBits* to) {
  if constexpr (ORDER == LaneOrder::kEvenOdd) x = in_order_from_even_odd(x);
  __m128i* halves = reinterpret_cast<__m128i*>(to);
  _mm_storeu_si128(halves, _mm256_cvtps_ph(x.lo, _MM_FROUND_TO_NEAREST_INT));
  _mm_storeu_si128(halves + 1, _mm256_cvtps_ph(x.hi, _MM_FROUND_TO_NEAREST_INT));
}

template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const Bf16Bits*) {
  const __m256i mask = _mm256_set1_epi32(~0xFFFF);
  return {_mm256_castsi256_ps(_mm256_and_si256(bf16_in_high_half<MAY_BE_NAN>(x.lo), mask)),
          _mm256_castsi256_ps(_mm256_and_si256(bf16_in_high_half<MAY_BE_NAN>(x.hi), mask))};
}
template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const HalfBits*) {
  return {_mm256_cvtph_ps(_mm256_cvtps_ph(x.lo, _MM_FROUND_TO_NEAREST_INT)),
          _mm256_cvtph_ps(_mm256_cvtps_ph(x.hi, _MM_FROUND_TO_NEAREST_INT))};
}

template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes_stochastic(FloatLanes x, UintLanes noise, Bf16Bits* to) {
  store_high_halves<ORDER>(stochastic_bf16_in_high_half<MAY_BE_NAN>(x.lo, noise.lo),
                           stochastic_bf16_in_high_half<MAY_BE_NAN>(x.hi, noise.hi), to);
}

#else  // one lane: the baseline build, and any CPU without the sets above

struct FloatLanes {
  static constexpr int64_t kWidth = 1;
  float v;

  FloatLanes() = default;
  FA_LANES explicit FloatLanes(float broadcast) : v(broadcast) {}
};

struct UintLanes {
  static constexpr int64_t kWidth = 1;
  uint32_t v;

  UintLanes() = default;
  FA_LANES explicit UintLanes(uint32_t broadcast) : v(broadcast) {}
};

FA_LANES FloatLanes operator+(FloatLanes a, FloatLanes b) { return FloatLanes(a.v + b.v); }
FA_LANES FloatLanes operator-(FloatLanes a, FloatLanes b) { return FloatLanes(a.v - b.v); }
FA_LANES FloatLanes operator*(FloatLanes a, FloatLanes b) { return FloatLanes(a.v * b.v); }
FA_LANES FloatLanes operator/(FloatLanes a, FloatLanes b) { return FloatLanes(a.v / b.v); }
FA_LANES FloatLanes operator-(FloatLanes a) { return FloatLanes(-a.v); }

FA_LANES FloatLanes fa_fma(FloatLanes a, FloatLanes b, FloatLanes c) {
  return FloatLanes(fused_accum::fa_fma(a.v, b.v, c.v));
}
FA_LANES FloatLanes fa_sqrt(FloatLanes a) { return FloatLanes(fused_accum::fa_sqrt(a.v)); }
FA_LANES FloatLanes fa_max(FloatLanes a, FloatLanes b) {
  return FloatLanes(fused_accum::fa_max(a.v, b.v));
}

FA_LANES UintLanes operator^(UintLanes a, UintLanes b) { return UintLanes(a.v ^ b.v); }
FA_LANES UintLanes operator+(UintLanes a, UintLanes b) { return UintLanes(a.v + b.v); }
FA_LANES UintLanes operator*(UintLanes a, UintLanes b) { return UintLanes(a.v * b.v); }
FA_LANES UintLanes operator>>(UintLanes a, int shift) { return UintLanes(a.v >> shift); }
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES UintLanes iota_lanes(uint32_t first) { return UintLanes(first); }

template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const float* from) { return FloatLanes(*from); }
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const Bf16Bits* from) {
  return FloatLanes(static_cast<float>(*from));
}
template <LaneOrder ORDER = LaneOrder::kInOrder>
FA_LANES FloatLanes load_lanes(const HalfBits* from) {
  return FloatLanes(static_cast<float>(*from));
}

// The scalar conversions check for NaN themselves: MAY_BE_NAN changes nothing.
FA_LANES bool any_nan(FloatLanes x) { return x.v != x.v; }

template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, float* to) { *to = x.v; }
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, Bf16Bits* to) { *to = Bf16Bits(x.v); }
template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes(FloatLanes x, HalfBits* to) { *to = HalfBits(x.v); }

template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const Bf16Bits*) {
  return FloatLanes(static_cast<float>(Bf16Bits(x.v)));
}
template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const HalfBits*) {
  return FloatLanes(static_cast<float>(HalfBits(x.v)));
}

template <LaneOrder ORDER = LaneOrder::kInOrder, bool MAY_BE_NAN = true>
FA_LANES void store_lanes_stochastic(FloatLanes x, UintLanes noise, Bf16Bits* to) {
  to->bits = stochastic_bf16_bits(bits_of_float(x.v), noise.v);
}

#endif

template <bool MAY_BE_NAN = true>
FA_LANES FloatLanes rounded_as(FloatLanes x, const float*) { return x; }

}  // namespace FUSED_ACCUM_CPU_ISA
}  // namespace cpu

template <>
struct MathType<cpu::FUSED_ACCUM_CPU_ISA::FloatLanes> {
  using type = cpu::FUSED_ACCUM_CPU_ISA::FloatLanes;
};

}  // namespace fused_accum

#undef FA_LANES
