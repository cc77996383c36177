// 16-bit storage types for the CPU loops, as plain bits with inline conversions.
//
// GCC leaves loops over c10::BFloat16 scalar, which made bfloat16 steps several
// times slower than float32 ones. Bf16Bits holds the same 16 bits and converts
// with the same rounding (to nearest even, NaN to 0x7FC0) in plain integer
// arithmetic, which vectorises. HalfBits is the float16 counterpart, converting
// through _Float16: vcvtps2ph/vcvtph2ps where the file is compiled with F16C,
// libgcc otherwise. Neither needs ATen, so the per-instruction-set loops
// (cpu/isa/) can use them; loop_storage.h maps the c10 types onto them.
//
// The members are always inlined: an out-of-line copy compiled for AVX2 could
// otherwise be the one the linker keeps for baseline code.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

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

// Rounds to nearest even, as c10::Half does. With F16C the rounding is named
// in the instruction, as c10::Half and the vector stores (lanes.h) name it, so
// a changed MXCSR rounding mode cannot make the scalar tail of a loop round
// unlike its vector body. NaN stays NaN with its sign and the top of its
// payload, quietened, as the instructions do it.
struct HalfBits {
  uint16_t bits;

  HalfBits() = default;
  inline __attribute__((always_inline)) HalfBits(float value) {
#if defined(__F16C__)
    bits = static_cast<uint16_t>(_cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT));
#elif defined(__FLT16_MANT_DIG__) && !defined(FUSED_ACCUM_SOFTWARE_HALF)
    const _Float16 half = static_cast<_Float16>(value);
    std::memcpy(&bits, &half, sizeof(bits));
#else
    bits = from_float_bits(value);
#endif
  }
  inline __attribute__((always_inline)) operator float() const {
#if defined(__F16C__)
    return _cvtsh_ss(bits);
#elif defined(__FLT16_MANT_DIG__) && !defined(FUSED_ACCUM_SOFTWARE_HALF)
    _Float16 half;
    std::memcpy(&half, &bits, sizeof(half));
    return static_cast<float>(half);
#else
    return to_float_bits(bits);
#endif
  }

  // For compilers without _Float16: the same results in integer arithmetic.
  static inline __attribute__((always_inline)) uint16_t from_float_bits(float value) {
    uint32_t u;
    std::memcpy(&u, &value, sizeof(u));
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7C00u);  // 65536 and up
    if (a >= 0x38800000u) {  // a normal half: rebias the exponent, round at bit 13
      return static_cast<uint16_t>(sign | ((a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13));
    }
    // A subnormal half, a multiple of 2^-24 (a carry into the exponent field
    // makes the smallest normal, as it should).
    const uint32_t shift = 126u - (a >> 23);
    if (shift > 24u) return static_cast<uint16_t>(sign);
    const uint32_t mantissa = (a & 0x7FFFFFu) | 0x800000u;
    const uint32_t kept = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t half_way = 1u << (shift - 1u);
    const uint32_t up = rest > half_way || (rest == half_way && (kept & 1u)) ? 1u : 0u;
    return static_cast<uint16_t>(sign | (kept + up));
  }
  static inline __attribute__((always_inline)) float to_float_bits(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu;
    const uint32_t mantissa = h & 0x3FFu;
    uint32_t u;
    if (exponent == 0x1Fu) {
      u = sign | 0x7F800000u | (mantissa << 13) | (mantissa != 0 ? 0x400000u : 0u);
    } else if (exponent != 0) {
      u = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else {
      const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;  // exact
      std::memcpy(&u, &magnitude, sizeof(u));
      u |= sign;
    }
    float value;
    std::memcpy(&value, &u, sizeof(value));
    return value;
  }
};

}  // namespace cpu
}  // namespace fused_accum
