// Float and uint32 lanes in one vector register, as number types that the
// element update (adam_math.h) and the rounding noise (adam_element_op.h) can
// be instantiated with, plus loads and stores that widen and round 16-bit
// storage in registers.
//
// Included only by the per-instruction-set loops (cpu/isa/*.cpp through
// adam_loops.h), so the width follows the flags setup.py compiles each with:
// 16 lanes with AVX-512, 8 with AVX2+FMA+F16C, 1 otherwise. Everything lives in
// that set's namespace and is always inlined: no symbol compiled for one set
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
FA_LANES UintLanes iota_lanes(uint32_t first) {
  return UintLanes(_mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int>(first)),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
}

FA_LANES FloatLanes load_lanes(const float* from) { return FloatLanes(_mm512_loadu_ps(from)); }
// A bfloat16 value is the top half of the float with the same bits.
FA_LANES FloatLanes load_lanes(const Bf16Bits* from) {
  const __m512i bits = _mm512_maskz_cvtepu16_epi32(
      kEveryLane, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from)));
  return FloatLanes(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(kEveryLane, bits, 16)));
}
FA_LANES FloatLanes load_lanes(const HalfBits* from) {
  return FloatLanes(_mm512_maskz_cvtph_ps(
      kEveryLane, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from))));
}

// Bf16Bits(x) of each lane, in the low half of a 32-bit lane: round to nearest
// even in integer arithmetic, NaN to 0x7FC0.
FA_LANES __m512i bf16_bits_of(FloatLanes x) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i odd =
      _mm512_and_si512(_mm512_maskz_srli_epi32(kEveryLane, u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kEveryLane, _mm512_add_epi32(_mm512_add_epi32(u, odd), _mm512_set1_epi32(0x7FFF)), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
}
FA_LANES void store_bf16_bits(__m512i bits, Bf16Bits* to) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(to),
                      _mm512_maskz_cvtepi32_epi16(kEveryLane, bits));
}

FA_LANES void store_lanes(FloatLanes x, float* to) { _mm512_storeu_ps(to, x.v); }
FA_LANES void store_lanes(FloatLanes x, Bf16Bits* to) { store_bf16_bits(bf16_bits_of(x), to); }
FA_LANES void store_lanes(FloatLanes x, HalfBits* to) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(to),
                      _mm512_maskz_cvtps_ph(kEveryLane, x.v, _MM_FROUND_TO_NEAREST_INT));
}

FA_LANES FloatLanes rounded_as(FloatLanes x, const Bf16Bits*) {
  return FloatLanes(
      _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kEveryLane, bf16_bits_of(x), 16)));
}
FA_LANES FloatLanes rounded_as(FloatLanes x, const HalfBits*) {
  return FloatLanes(_mm512_maskz_cvtph_ps(
      kEveryLane, _mm512_maskz_cvtps_ph(kEveryLane, x.v, _MM_FROUND_TO_NEAREST_INT)));
}

// stochastic_bf16_bits of each lane.
FA_LANES void store_lanes_stochastic(FloatLanes x, UintLanes noise, Bf16Bits* to) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kEveryLane, _mm512_add_epi32(u, _mm512_maskz_srli_epi32(kEveryLane, noise.v, 16)), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  store_bf16_bits(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0)), to);
}

#elif defined(FUSED_ACCUM_LANES_AVX2)

struct FloatLanes {
  static constexpr int64_t kWidth = 8;
  __m256 v;

  FloatLanes() = default;
  FA_LANES explicit FloatLanes(__m256 lanes) : v(lanes) {}
  FA_LANES explicit FloatLanes(float broadcast) : v(_mm256_set1_ps(broadcast)) {}
};

struct UintLanes {
  static constexpr int64_t kWidth = 8;
  __m256i v;

  UintLanes() = default;
  FA_LANES explicit UintLanes(__m256i lanes) : v(lanes) {}
  FA_LANES explicit UintLanes(uint32_t broadcast)
      : v(_mm256_set1_epi32(static_cast<int>(broadcast))) {}
};

FA_LANES FloatLanes operator+(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm256_add_ps(a.v, b.v));
}
FA_LANES FloatLanes operator-(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm256_sub_ps(a.v, b.v));
}
FA_LANES FloatLanes operator*(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm256_mul_ps(a.v, b.v));
}
FA_LANES FloatLanes operator/(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm256_div_ps(a.v, b.v));
}
// A sign flip, as scalar negation is (0 - x would turn -0 into +0).
FA_LANES FloatLanes operator-(FloatLanes a) {
  return FloatLanes(_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)));
}

FA_LANES FloatLanes fa_fma(FloatLanes a, FloatLanes b, FloatLanes c) {
  return FloatLanes(_mm256_fmadd_ps(a.v, b.v, c.v));
}
FA_LANES FloatLanes fa_sqrt(FloatLanes a) { return FloatLanes(_mm256_sqrt_ps(a.v)); }
// vmaxps returns its second operand when the first is not greater, NaN and
// equal zeros included: the scalar `a > b ? a : b`.
FA_LANES FloatLanes fa_max(FloatLanes a, FloatLanes b) {
  return FloatLanes(_mm256_max_ps(a.v, b.v));
}

FA_LANES UintLanes operator^(UintLanes a, UintLanes b) {
  return UintLanes(_mm256_xor_si256(a.v, b.v));
}
FA_LANES UintLanes operator+(UintLanes a, UintLanes b) {
  return UintLanes(_mm256_add_epi32(a.v, b.v));
}
FA_LANES UintLanes operator*(UintLanes a, UintLanes b) {
  return UintLanes(_mm256_mullo_epi32(a.v, b.v));
}
FA_LANES UintLanes operator>>(UintLanes a, int shift) {
  return UintLanes(_mm256_srli_epi32(a.v, shift));
}
FA_LANES UintLanes iota_lanes(uint32_t first) {
  return UintLanes(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first)),
                                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

FA_LANES FloatLanes load_lanes(const float* from) { return FloatLanes(_mm256_loadu_ps(from)); }
// A bfloat16 value is the top half of the float with the same bits.
FA_LANES FloatLanes load_lanes(const Bf16Bits* from) {
  const __m256i bits =
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from)));
  return FloatLanes(_mm256_castsi256_ps(_mm256_slli_epi32(bits, 16)));
}
FA_LANES FloatLanes load_lanes(const HalfBits* from) {
  return FloatLanes(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from))));
}

// Bf16Bits(x) of each lane, in the low half of a 32-bit lane: round to nearest
// even in integer arithmetic, NaN to 0x7FC0.
FA_LANES __m256i bf16_bits_of(FloatLanes x) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(u, odd), _mm256_set1_epi32(0x7FFF)), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}
// Every lane is at most 0xFFFF, so the saturating pack is a plain narrowing;
// packing the two 128-bit halves together keeps the elements in order.
FA_LANES void store_bf16_bits(__m256i bits, Bf16Bits* to) {
  const __m128i packed =
      _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(to), packed);
}

FA_LANES void store_lanes(FloatLanes x, float* to) { _mm256_storeu_ps(to, x.v); }
FA_LANES void store_lanes(FloatLanes x, Bf16Bits* to) { store_bf16_bits(bf16_bits_of(x), to); }
FA_LANES void store_lanes(FloatLanes x, HalfBits* to) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(to),
                   _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
}

FA_LANES FloatLanes rounded_as(FloatLanes x, const Bf16Bits*) {
  return FloatLanes(_mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits_of(x), 16)));
}
FA_LANES FloatLanes rounded_as(FloatLanes x, const HalfBits*) {
  return FloatLanes(_mm256_cvtph_ps(_mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT)));
}

// stochastic_bf16_bits of each lane.
FA_LANES void store_lanes_stochastic(FloatLanes x, UintLanes noise, Bf16Bits* to) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_srli_epi32(noise.v, 16)), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  store_bf16_bits(_mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan), to);
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
FA_LANES UintLanes iota_lanes(uint32_t first) { return UintLanes(first); }

FA_LANES FloatLanes load_lanes(const float* from) { return FloatLanes(*from); }
FA_LANES FloatLanes load_lanes(const Bf16Bits* from) {
  return FloatLanes(static_cast<float>(*from));
}
FA_LANES FloatLanes load_lanes(const HalfBits* from) {
  return FloatLanes(static_cast<float>(*from));
}

FA_LANES void store_lanes(FloatLanes x, float* to) { *to = x.v; }
FA_LANES void store_lanes(FloatLanes x, Bf16Bits* to) { *to = Bf16Bits(x.v); }
FA_LANES void store_lanes(FloatLanes x, HalfBits* to) { *to = HalfBits(x.v); }

FA_LANES FloatLanes rounded_as(FloatLanes x, const Bf16Bits*) {
  return FloatLanes(static_cast<float>(Bf16Bits(x.v)));
}
FA_LANES FloatLanes rounded_as(FloatLanes x, const HalfBits*) {
  return FloatLanes(static_cast<float>(HalfBits(x.v)));
}

FA_LANES void store_lanes_stochastic(FloatLanes x, UintLanes noise, Bf16Bits* to) {
  to->bits = stochastic_bf16_bits(bits_of_float(x.v), noise.v);
}

#endif

FA_LANES FloatLanes rounded_as(FloatLanes x, const float*) { return x; }

}  // namespace FUSED_ACCUM_CPU_ISA
}  // namespace cpu

template <>
struct MathType<cpu::FUSED_ACCUM_CPU_ISA::FloatLanes> {
  using type = cpu::FUSED_ACCUM_CPU_ISA::FloatLanes;
};

}  // namespace fused_accum

#undef FA_LANES
