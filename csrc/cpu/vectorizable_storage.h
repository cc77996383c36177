// Storage types for the CPU loops that the compiler can vectorise.
//
// GCC leaves loops over c10::BFloat16 scalar, which made bfloat16 steps several
// times slower than float32 ones. Bf16Bits holds the same 16 bits and converts
// with the same rounding (to nearest even, NaN to 0x7FC0) in plain integer
// arithmetic, which vectorises. (c10::Half converts through scalar F16C
// intrinsics and _Float16 does not vectorise with GCC 12: float16 stays scalar.)
#pragma once

#include <c10/util/BFloat16.h>

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
