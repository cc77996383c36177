// One Adam element as a kernel sees it in storage: convert to the math type,
// take the gradient, update (adam_math.h), store. The CUDA kernel
// calls this functor for each element; the CPU build runs the same functor on
// the host (torch.ops.fused_accum_testing.adam_step_*) so a test can show, bit
// for bit, that it computes what the CPU kernel computes. Without that test the
// GPU path could drift from the CPU path unnoticed on machines without a GPU.
#pragma once

#include <cfloat>
#include <cstdint>
#include <type_traits>

#ifndef FUSED_ACCUM_WITHOUT_C10
#include <c10/util/BFloat16.h>
#endif

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

// How a step finds a param's value and writes it back. The value is what Adam
// updates, in the math type; the param is what the model computes with.
enum class ParamWrite : int {
  kInPlace = 0,     // the param is the value, stored back rounded to nearest
  kFromMaster = 1,  // a float32 master is the value; the param is its rounding to nearest
  kKahan = 2,       // the value is param + compensation, both in the param's dtype: the
                    // compensation keeps what rounding the param lost (about 16 bits in all)
  kStochastic = 3,  // the param is the value, stored back rounded stochastically (bfloat16)
};

// Storage narrower than float32 that holds the value itself takes the bias
// correction as a multiplication (adam_math.h, ConstantDivision); a float32
// master is stepped exactly as torch steps a float32 param.
template <typename P>
constexpr bool kNarrowStorage = sizeof(P) < sizeof(float);
FA_HOST_DEVICE constexpr ConstantDivision division_for(bool narrow_param, ParamWrite write) {
  return narrow_param && write != ParamWrite::kFromMaster ? ConstantDivision::kByReciprocal
                                                          : ConstantDivision::kExact;
}

// ------------------------------------------------------ stochastic rounding
// Counter-based, so the same (seed, step, element) gives the same bits on any
// backend, thread count or split of the work, and a run resumed from a
// checkpoint (seed and step are state) continues the same stream.

// A 32-bit integer hash with full avalanche (the "lowbias32" constants). U is
// uint32_t or a CPU lane type of them (operators ^, >>, *, + and construction).
template <typename U>
FA_HOST_DEVICE U mix32(U x) {
  x = x ^ (x >> 16);
  x = x * U(0x7feb352du);
  x = x ^ (x >> 15);
  x = x * U(0x846ca68bu);
  x = x ^ (x >> 16);
  return x;
}

// One param's key for one step, from its seed and its step count.
FA_HOST_DEVICE uint32_t stochastic_rounding_key(int64_t seed, double step) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t count = static_cast<uint32_t>(step);
  return mix32(static_cast<uint32_t>(s) ^
               mix32(static_cast<uint32_t>(s >> 32) ^ mix32(count + 0x9e3779b9u)));
}

// The base of the elements whose index >> 32 is that of `index`; for tensors
// under 2^32 elements it is the key itself, since mix32(0) == 0.
FA_HOST_DEVICE uint32_t rounding_base(uint32_t key, int64_t index) {
  return key ^ mix32(static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32));
}

// 32 random bits for one element: `base` from rounding_base, then the low 32
// bits of the element's index.
template <typename U>
FA_HOST_DEVICE U rounding_noise(U base, U index_low) {
  return mix32(base + index_low);
}

// A float, given by its bits, rounded stochastically to bfloat16 bits: the top
// 16 bits of the noise are added below bfloat16's last place and the sum is
// truncated, so the result rounds away from zero with probability equal to the
// distance from the value below (unbiased). NaN becomes 0x7FC0, as torch's
// rounding makes it.
FA_HOST_DEVICE uint16_t stochastic_bf16_bits(uint32_t float_bits, uint32_t noise) {
  const bool nan = (float_bits & 0x7fffffffu) > 0x7f800000u;
  return nan ? uint16_t(0x7fc0u) : static_cast<uint16_t>((float_bits + (noise >> 16)) >> 16);
}

FA_HOST_DEVICE uint32_t bits_of_float(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

// bfloat16 storage types say here how they are made from bits, so the element
// functor can store stochastically rounded values in them. Other storage rounds
// to nearest: only bfloat16 params take stochastic rounding (the checks refuse others).
template <typename P>
struct StochasticStore {
  static FA_HOST_DEVICE P round(float value, uint32_t /*noise*/) { return static_cast<P>(value); }
};

#ifndef FUSED_ACCUM_WITHOUT_C10
template <>
struct StochasticStore<c10::BFloat16> {
  static FA_HOST_DEVICE c10::BFloat16 round(float value, uint32_t noise) {
    return c10::BFloat16(stochastic_bf16_bits(bits_of_float(value), noise),
                         c10::BFloat16::from_bits());
  }
};
#endif

// ------------------------------------------------------------ one element

// P: param storage; G: grad storage (P, or float32 accumulation buffers); S:
// storage of the moments (P, or the state dtype chosen). DIVISION: division_for
// the param and its write mode. The write mode is a runtime member: it is the
// same for every element of a call, so a branch on it costs next to nothing.
template <typename P, typename G, typename S, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradSource GRAD_SOURCE, ConstantDivision DIVISION>
struct AdamElementOp {
  using T = typename MathType<P>::type;
  AdamScalars<T> scalars;
  T grad_factor;  // grad_scale or the window multiplier; unused for kPlain
  ParamWrite write;

  // max_exp_avg_sq is used only with AMSGRAD, master (float32) and compensation
  // (P) only in their write modes, noise (rounding_noise of this element) only
  // in kStochastic; each may be null or anything when unused.
  FA_HOST_DEVICE void operator()(P& param, G& grad, S& exp_avg, S& exp_avg_sq,
                                 S* max_exp_avg_sq, float* master, P* compensation,
                                 uint32_t noise) const {
    T p;
    if (write == ParamWrite::kFromMaster) {
      p = static_cast<T>(*master);
    } else if (write == ParamWrite::kKahan) {
      p = static_cast<T>(param) + static_cast<T>(*compensation);
    } else {
      p = static_cast<T>(param);
    }
    T m = static_cast<T>(exp_avg);
    T v = static_cast<T>(exp_avg_sq);
    T max_v = AMSGRAD ? static_cast<T>(*max_exp_avg_sq) : T(0);
    const T g = take_grad<GRAD_SOURCE, T>(grad, grad_factor);
    adam_update<MODE, AMSGRAD, MAXIMIZE, DIVISION>(p, g, m, v, max_v, scalars);
    exp_avg = static_cast<S>(m);
    exp_avg_sq = static_cast<S>(v);
    if (AMSGRAD) *max_exp_avg_sq = static_cast<S>(max_v);
    if (write == ParamWrite::kStochastic) {
      param = StochasticStore<P>::round(static_cast<float>(p), noise);
      return;
    }
    param = static_cast<P>(p);
    if (write == ParamWrite::kFromMaster) {
      *master = static_cast<float>(p);
    } else if (write == ParamWrite::kKahan) {
      *compensation = static_cast<P>(p - static_cast<T>(param));
    }
  }
};

// Calls fn(mode, amsgrad, maximize, grad_source), each an std::integral_constant,
// so that each loop instance carries only the branches its configuration needs.
// Host code: kernels and loops are instantiated through it.
template <typename Fn>
inline void dispatch_step_flags(DecayMode mode, bool amsgrad, bool maximize, GradSource source,
                                const Fn& fn) {
  auto with_bool = [](bool b, const auto& next) {
    if (b) {
      next(std::true_type{});
    } else {
      next(std::false_type{});
    }
  };
  auto with_grad_source = [&](const auto& next) {
    switch (source) {
      case GradSource::kPlain:
        return next(std::integral_constant<GradSource, GradSource::kPlain>{});
      case GradSource::kUnscale:
        return next(std::integral_constant<GradSource, GradSource::kUnscale>{});
      case GradSource::kWindowBuffer:
        return next(std::integral_constant<GradSource, GradSource::kWindowBuffer>{});
    }
  };
  auto with_decay_mode = [&](const auto& next) {
    if (mode == DecayMode::kL2) {
      next(std::integral_constant<DecayMode, DecayMode::kL2>{});
    } else {
      next(std::integral_constant<DecayMode, DecayMode::kDecoupled>{});
    }
  };
  with_decay_mode([&](auto m) {
    with_bool(amsgrad, [&](auto a) {
      with_bool(maximize, [&](auto x) {
        with_grad_source([&](auto g) { fn(m, a, x, g); });
      });
    });
  });
}

// Calls fn(division) with division_for(narrow_param, write) as an std::integral_constant.
template <typename Fn>
inline void dispatch_division(bool narrow_param, ParamWrite write, const Fn& fn) {
  if (division_for(narrow_param, write) == ConstantDivision::kByReciprocal) {
    fn(std::integral_constant<ConstantDivision, ConstantDivision::kByReciprocal>{});
  } else {
    fn(std::integral_constant<ConstantDivision, ConstantDivision::kExact>{});
  }
}

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
