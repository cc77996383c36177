// Element operations of gradient accumulation. Shared by CPU and CUDA.
#pragma once

#include "adam_math.h"

namespace fused_accum {

// buffer += scale * grad, in float whatever the storage types, so low-precision
// gradients are summed without low-precision rounding at every micro-batch.
// Returns the updated value for callers that gather its square.
template <typename B, typename G>
FA_HOST_DEVICE float accumulate_element(B& buffer, G grad, float scale) {
  const float updated = static_cast<float>(buffer) + scale * static_cast<float>(grad);
  buffer = static_cast<B>(updated);
  return updated;
}

FA_HOST_DEVICE double square_as_double(float x) {
  const double d = static_cast<double>(x);
  return d * d;
}

// The square of a stored element, in double: exact for float, half and bfloat16
// (through float, which holds them exactly), rounded once for double.
template <typename X>
FA_HOST_DEVICE double stored_square(X x) {
  return square_as_double(static_cast<float>(x));
}
FA_HOST_DEVICE double stored_square(double x) { return x * x; }

}  // namespace fused_accum
