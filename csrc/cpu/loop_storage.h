// The type an ATen-side CPU loop walks for storage of a c10 element type: the
// same bits and layout, in a type the compiler vectorises (vectorizable_storage.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {

// Loops, the per-instruction-set ones included, reinterpret tensors of the c10
// types as the plain-bits types.
static_assert(sizeof(Bf16Bits) == sizeof(c10::BFloat16) &&
                  alignof(Bf16Bits) == alignof(c10::BFloat16),
              "Bf16Bits must lay out like c10::BFloat16");
static_assert(sizeof(HalfBits) == sizeof(c10::Half) && alignof(HalfBits) == alignof(c10::Half),
              "HalfBits must lay out like c10::Half");

// c10::Half stays itself: without F16C, HalfBits converts through libgcc calls,
// slower than c10's inline bit manipulation.
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
