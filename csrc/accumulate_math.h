// Element operations of gradient accumulation. Shared by CPU and CUDA.
#pragma once

#include "adam_math.h"

namespace fused_accum {

// buffer += scale * grad, in float whatever the storage types, so low-precision
// gradients are summed without low-precision rounding at every micro-batch.
template <typename B, typename G>
FA_HOST_DEVICE void accumulate_element(B& buffer, G grad, float scale) {
  buffer = static_cast<B>(static_cast<float>(buffer) + scale * static_cast<float>(grad));
}

// The square of a stored element, in double: exact for float, half and bfloat16
// (through float, which holds them exactly), rounded once for double.
template <typename X>
FA_HOST_DEVICE double stored_square(X x) {
  const double d = static_cast<double>(static_cast<float>(x));
  return d * d;
}
FA_HOST_DEVICE double stored_square(double x) { return x * x; }

}  // namespace fused_accum
