// One Adam element as a kernel sees it in storage: convert to the math type,
// take the gradient, update (adam_math.h), store. The CUDA kernel
// calls this functor for each element; the CPU build runs the same functor on
// the host (torch.ops.fused_accum_testing.adam_step_*) so a test can show, bit
// for bit, that it computes what the CPU kernel computes. Without that test the
// GPU path could drift from the CPU path unnoticed on machines without a GPU.
#pragma once

#include <cfloat>

#include "adam_math.h"

namespace fused_accum {

// How a step reads the gradient of one element.
enum class GradSource : int {
  kPlain = 0,         // g = grad
  kUnscale = 1,       // g = grad / grad_scale, written back (GradScaler's contract)
  kWindowBuffer = 2,  // g = buffer * multiplier, buffer zeroed (end of an accumulation window)
};

// `factor` is grad_scale for kUnscale and the multiplier for kWindowBuffer.
template <GradSource MODE, typename T, typename G>
FA_HOST_DEVICE T take_grad(G& grad, T factor) {
  T g = static_cast<T>(grad);
  if (MODE == GradSource::kUnscale) {
    g = g / factor;
    grad = static_cast<G>(g);
  } else if (MODE == GradSource::kWindowBuffer) {
    g = g * factor;
    grad = static_cast<G>(0);
  }
  return g;
}

// The math type of a storage type: float for float, half and bfloat16; double
// for double (at::opmath_type, without pulling ATen into device code).
template <typename P>
struct MathType {
  using type = float;
};
template <>
struct MathType<double> {
  using type = double;
};

// Storage narrower than float32 (bfloat16, float16) takes the bias correction
// as a multiplication (adam_math.h, ConstantDivision).
template <typename P>
constexpr ConstantDivision kDivisionFor =
    sizeof(P) < sizeof(float) ? ConstantDivision::kByReciprocal : ConstantDivision::kExact;

// DIVISION follows the storage type; the CPU kernel, which steps low-precision
// storage through float scratch, passes the storage's.
template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradSource GRAD_SOURCE, ConstantDivision DIVISION = kDivisionFor<P>>
struct AdamElementOp {
  using T = typename MathType<P>::type;
  AdamScalars<T> scalars;
  T grad_factor;  // grad_scale or the window multiplier; unused for kPlain

  FA_HOST_DEVICE void operator()(P& param, G& grad, P& exp_avg, P& exp_avg_sq,
                                 P& max_exp_avg_sq) const {
    T p = static_cast<T>(param);
    T m = static_cast<T>(exp_avg);
    T v = static_cast<T>(exp_avg_sq);
    T max_v = AMSGRAD ? static_cast<T>(max_exp_avg_sq) : T(0);
    const T g = take_grad<GRAD_SOURCE, T>(grad, grad_factor);
    adam_update<MODE, AMSGRAD, MAXIMIZE, DIVISION>(p, g, m, v, max_v, scalars);
    param = static_cast<P>(p);
    exp_avg = static_cast<P>(m);
    exp_avg_sq = static_cast<P>(v);
    if (AMSGRAD) max_exp_avg_sq = static_cast<P>(max_v);
  }

  // Without amsgrad there is no fifth tensor.
  FA_HOST_DEVICE void operator()(P& param, G& grad, P& exp_avg, P& exp_avg_sq) const {
    P unused = param;
    (*this)(param, grad, exp_avg, exp_avg_sq, unused);
  }
};

// The grad factor in the math type. GradScaler's scale is read as float, as
// torch's fused kernels read it, float64 params included; a window multiplier is
// computed in the params' precision (float64 for a float64 model, as
// clip_grad_norm_ computes its coefficient) and is taken as it is.
template <typename T>
FA_HOST_DEVICE T grad_factor_as(double factor, GradSource source) {
  return source == GradSource::kUnscale ? static_cast<T>(static_cast<float>(factor))
                                        : static_cast<T>(factor);
}

FA_HOST_DEVICE bool is_finite_double(double x) { return fabs(x) <= DBL_MAX; }  // false for nan

// Whether a step leaves params, moments and step counts unchanged: GradScaler
// found an inf or nan, or (window step only, pass the multiplier) the window's
// multiplier is not finite. Pointers may be null: absent.
FA_HOST_DEVICE bool adam_step_skipped(const double* found_inf,
                                      const double* window_multiplier) {
  if (found_inf != nullptr && *found_inf != 0.0) return true;
  return window_multiplier != nullptr && !is_finite_double(*window_multiplier);
}

}  // namespace fused_accum
