// The Adam/AdamW element update: the only place the formula lives.
// Included by the CPU kernels (compiled as host code) and by the CUDA kernels
// (compiled as device code), so a change here reaches both backends at once.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FA_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fused_accum {

enum class DecayMode : int {
  kL2 = 0,         // classic Adam: g += wd * p, so decay flows into both moments
  kDecoupled = 1,  // AdamW: p *= 1 - lr * wd, the moments never see the decay
};

// Per-tensor constants of one step, in the math type T (float, or double for
// float64 params). They are derived in double from the step count, as torch
// does, and rounded to T once, so every element sees the same values.
template <typename T>
struct AdamScalars {
  T weight_decay;
  T decay_factor;    // 1 - lr * wd, for the decoupled mode
  T lerp_weight;     // exp_avg.lerp_(g, 1 - beta1), written as fma(w, g - m, base)
  bool lerp_from_grad;  // torch's lerp takes the base from g when |1 - beta1| >= 0.5
  T beta2;
  T one_minus_beta2;
  T bias_correction2_sqrt;
  T inv_bias_correction2_sqrt;  // 1 / sqrt(1 - beta2^step), for ConstantDivision::kByReciprocal
  T eps;
  T neg_step_size;   // -lr / (1 - beta1^step)
};

// Host and device: the CUDA kernels derive these on the GPU from a step count
// and lr that live there, so a captured graph needs no host round trip.
template <typename T>
FA_HOST_DEVICE AdamScalars<T> make_adam_scalars(double lr, double beta1,
                                                double beta2, double weight_decay,
                                                double eps, double step) {
  const double bias_correction1 = 1.0 - pow(beta1, step);
  const double bias_correction2 = 1.0 - pow(beta2, step);
  const double lerp_weight = 1.0 - beta1;
  AdamScalars<T> s;
  s.weight_decay = static_cast<T>(weight_decay);
  s.decay_factor = static_cast<T>(1.0 - lr * weight_decay);
  s.lerp_from_grad = !(fabs(lerp_weight) < 0.5);
  s.lerp_weight = static_cast<T>(s.lerp_from_grad ? lerp_weight - 1.0 : lerp_weight);
  s.beta2 = static_cast<T>(beta2);
  s.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  s.bias_correction2_sqrt = static_cast<T>(sqrt(bias_correction2));
  s.inv_bias_correction2_sqrt = static_cast<T>(1.0 / sqrt(bias_correction2));
  s.eps = static_cast<T>(eps);
  s.neg_step_size = static_cast<T>(-(lr / bias_correction1));
  return s;
}

// The same constants in another math type: the CPU kernel broadcasts them to
// vector lanes (cpu/lanes.h). Lists every field of AdamScalars, in order.
template <typename To, typename From>
FA_HOST_DEVICE AdamScalars<To> convert_scalars(const AdamScalars<From>& s) {
  return {To(s.weight_decay), To(s.decay_factor),   To(s.lerp_weight),
          s.lerp_from_grad,   To(s.beta2),          To(s.one_minus_beta2),
          To(s.bias_correction2_sqrt),              To(s.inv_bias_correction2_sqrt),
          To(s.eps),          To(s.neg_step_size)};
}

// How sqrt(v) is divided by sqrt(1 - beta2^step), a constant of the step.
// kExact divides, as torch does: float32 and float64 results then agree with
// torch bit for bit. kByReciprocal multiplies by the reciprocal instead, which
// moves the float math by at most an ulp or so; it is used for bfloat16 and
// float16 storage, which rounds that math to 8 or 11 significant bits anyway,
// and where the step is bound by the divider rather than by memory.
enum class ConstantDivision : int { kExact = 0, kByReciprocal = 1 };

FA_HOST_DEVICE float fa_fma(float a, float b, float c) { return fmaf(a, b, c); }
FA_HOST_DEVICE double fa_fma(double a, double b, double c) { return fma(a, b, c); }
FA_HOST_DEVICE float fa_sqrt(float a) { return sqrtf(a); }
FA_HOST_DEVICE double fa_sqrt(double a) { return sqrt(a); }
FA_HOST_DEVICE float fa_max(float a, float b) { return a > b ? a : b; }  // b when either is NaN
FA_HOST_DEVICE double fa_max(double a, double b) { return a > b ? a : b; }

// One element of one Adam step. `g` is the gradient after any unscaling;
// `max_v` is read and written only when AMSGRAD. The operations, and which of
// them are fused multiply-adds, follow torch's fused CPU kernel as its compiler
// emits it, so float32 results agree bit for bit. The kernels are compiled
// without floating-point contraction: the fmas below are the only ones, on the
// CPU and on the GPU alike.
template <DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          ConstantDivision DIVISION = ConstantDivision::kExact, typename T>
FA_HOST_DEVICE void adam_update(T& p, T g, T& m, T& v, T& max_v,
                                const AdamScalars<T>& s) {
  if (MAXIMIZE) g = -g;
  if (MODE == DecayMode::kL2) {
    g = fa_fma(p, s.weight_decay, g);
  } else {
    p = p * s.decay_factor;
  }
  // The base is chosen by value: a vector T then stays in registers.
  m = fa_fma(s.lerp_weight, g - m, s.lerp_from_grad ? T(g) : T(m));
  v = fa_fma(s.one_minus_beta2 * g, g, v * s.beta2);
  T second_moment = v;
  if (AMSGRAD) {
    max_v = fa_max(max_v, v);
    second_moment = max_v;
  }
  const T root = fa_sqrt(second_moment);
  const T denom = (DIVISION == ConstantDivision::kExact ? root / s.bias_correction2_sqrt
                                                        : root * s.inv_bias_correction2_sqrt) +
                  s.eps;
  p = p + s.neg_step_size * m / denom;
}

}  // namespace fused_accum
