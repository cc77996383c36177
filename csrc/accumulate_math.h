// Element operations of gradient accumulation. Shared by CPU and CUDA.
#pragma once

#include <type_traits>

#include "adam_math.h"

namespace fused_accum {

// The type a buffer of storage type B accumulates in: double for float64
// buffers, whose precision float would throw away; float for the others, so
// low-precision gradients are summed without low-precision rounding at every
// micro-batch.
template <typename B>
using AccumulateMath = std::conditional_t<std::is_same_v<B, double>, double, float>;

// buffer += scale * grad, in AccumulateMath<B>.
template <typename B, typename G>
FA_HOST_DEVICE void accumulate_element(B& buffer, G grad, AccumulateMath<B> scale) {
  using M = AccumulateMath<B>;
  buffer = static_cast<B>(static_cast<M>(buffer) + scale * static_cast<M>(grad));
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
