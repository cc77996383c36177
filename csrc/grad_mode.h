// How a step kernel reads the gradient of one element. Shared by CPU and CUDA.
#pragma once

#include "adam_math.h"

namespace fused_accum {

enum class GradMode : int {
  kPlain = 0,         // g = grad
  kUnscale = 1,       // g = grad / grad_scale, written back (GradScaler's contract)
  kScaleAndZero = 2,  // g = buffer * multiplier, buffer zeroed (end of an accumulation window)
};

// `factor` is grad_scale for kUnscale and the multiplier for kScaleAndZero.
template <GradMode MODE, typename T, typename G>
FA_HOST_DEVICE T take_grad(G& grad, T factor) {
  T g = static_cast<T>(grad);
  if (MODE == GradMode::kUnscale) {
    g = g / factor;
    grad = static_cast<G>(g);
  } else if (MODE == GradMode::kScaleAndZero) {
    g = g * factor;
    grad = static_cast<G>(0);
  }
  return g;
}

}  // namespace fused_accum
