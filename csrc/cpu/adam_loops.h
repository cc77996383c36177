// The element loops of the CPU Adam step, compiled once per instruction set:
// each cpu/isa/*.cpp names its set in FUSED_ACCUM_CPU_ISA and includes this file,
// and setup.py compiles it with that set's flags. Everything here lives in that
// set's namespace and sees no ATen (adam_kernel.h says why).
//
// Two loops. When every stream is the math type (float32 or float64 params,
// grads and moments, the param written in place), a plain loop over the element
// functor, which the compiler vectorises. Any other combination (bfloat16 or
// float16 params, moments in another dtype, float32 accumulation buffers, a
// master, a Kahan compensation, stochastic rounding) runs on FloatLanes
// (lanes.h): each stream is loaded and widened in registers, stepped, and
// rounded on the way out, so a bfloat16 step moves half the bytes of a float32
// one for about the same arithmetic. Which streams exist and their dtypes are
// runtime values, the same for a whole call: a branch on them costs nothing next
// to the square root and the division, and instantiating every combination
// would multiply the build time.
#ifndef FUSED_ACCUM_CPU_ISA
#error "include through cpu/isa/*.cpp, which names the instruction set"
#endif
#ifndef FUSED_ACCUM_WITHOUT_C10
#define FUSED_ACCUM_WITHOUT_C10
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "adam_kernel.h"
#include "lanes.h"
#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {
namespace FUSED_ACCUM_CPU_ISA {
namespace {

template <typename T>
const AdamScalars<T>& scalars_of(const AdamKernelRow& row) {
  if constexpr (sizeof(T) == sizeof(double)) {
    return row.double_scalars;
  } else {
    return row.float_scalars;
  }
}

// Plain loop, over restrict pointers (no `omp simd`: it makes GCC privatise the
// temporaries and give up). Vectorising does not change the rounding: the
// kernels are built without contraction.
template <typename T, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE, GradSource SOURCE>
void plain_piece(const AdamKernelCall& call, const AdamKernelRow& row, int64_t begin,
                 int64_t end) {
  using Op = AdamElementOp<T, T, T, MODE, AMSGRAD, MAXIMIZE, SOURCE, ConstantDivision::kExact>;
  const Op op{scalars_of<T>(row), grad_factor_as<T>(call.grad_factor, SOURCE),
              ParamWrite::kInPlace};
  T* __restrict__ param = static_cast<T*>(row.param);
  T* __restrict__ grad = static_cast<T*>(row.grad);
  T* __restrict__ exp_avg = static_cast<T*>(row.exp_avg);
  T* __restrict__ exp_avg_sq = static_cast<T*>(row.exp_avg_sq);
  T* __restrict__ max_exp_avg_sq = static_cast<T*>(row.max_exp_avg_sq);
  for (int64_t i = begin; i < end; ++i) {
    op(param[i], grad[i], exp_avg[i], exp_avg_sq[i], AMSGRAD ? max_exp_avg_sq + i : nullptr,
       nullptr, nullptr, 0);
  }
}

// ------------------------------------------------------------ lanes loop

// Everything a lanes body calls is inlined into it: an out-of-line call per group
// of lanes would spill the lanes and the step's constants to memory.
#define FA_LANES_INLINE inline __attribute__((always_inline))

FA_LANES_INLINE int64_t bytes_of(Storage type) {
  return type == Storage::kFloat32 ? 4 : type == Storage::kFloat64 ? 8 : 2;
}

template <LaneOrder ORDER>
FA_LANES_INLINE FloatLanes load_as(const void* base, Storage type, int64_t i) {
  switch (type) {
    case Storage::kBFloat16:
      return load_lanes<ORDER>(static_cast<const Bf16Bits*>(base) + i);
    case Storage::kFloat16:
      return load_lanes<ORDER>(static_cast<const HalfBits*>(base) + i);
    default:
      return load_lanes<ORDER>(static_cast<const float*>(base) + i);
  }
}

// MAY_BE_NAN false: the caller knows no lane of x is NaN, and the rounding to
// bfloat16 skips its NaN fix-up.
template <LaneOrder ORDER, bool MAY_BE_NAN = true>
FA_LANES_INLINE void store_as(FloatLanes x, void* base, Storage type, int64_t i) {
  switch (type) {
    case Storage::kBFloat16:
      return store_lanes<ORDER, MAY_BE_NAN>(x, static_cast<Bf16Bits*>(base) + i);
    case Storage::kFloat16:
      return store_lanes<ORDER, MAY_BE_NAN>(x, static_cast<HalfBits*>(base) + i);
    default:
      return store_lanes<ORDER, MAY_BE_NAN>(x, static_cast<float*>(base) + i);
  }
}

// What x reads back as after store_as to `type`.
template <bool MAY_BE_NAN = true>
FA_LANES_INLINE FloatLanes rounded_to(FloatLanes x, Storage type) {
  switch (type) {
    case Storage::kBFloat16:
      return rounded_as<MAY_BE_NAN>(x, static_cast<const Bf16Bits*>(nullptr));
    case Storage::kFloat16:
      return rounded_as<MAY_BE_NAN>(x, static_cast<const HalfBits*>(nullptr));
    default:
      return x;
  }
}

// The streams of one row, as the lanes body walks them (null: absent).
struct Streams {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;
  float* master;
  void* compensation;
};

// The dtypes and the write mode of a call as the lanes loop reads them: at run
// time for most calls, as constants for the layouts that training runs through
// most (bfloat16 params and moments, with bfloat16 grads or the float32 buffers
// of an accumulation window), where the loop then carries no branch on them
// and, its streams being mostly bfloat16, takes the lanes in even/odd order.
// Measured in turns on a Zen 3 EPYC (AVX2), one thread, a bfloat16 AdamW step of
// 2048 elements in cache: 1.04 ns per element with 8 lanes in order, 0.70 with
// 16 in even/odd order and NaN-free stores; at gpt2-small size on two threads
// the bfloat16 step went from 0.94x to 1.58-1.66x the float32 one.
struct RuntimeLayout {
  static constexpr LaneOrder order = LaneOrder::kInOrder;
  Storage param, grad, state;
  ParamWrite write;
};
template <Storage P, Storage G, Storage S, ParamWrite W>
struct FixedLayout {
  static constexpr LaneOrder order = LaneOrder::kEvenOdd;
  static constexpr Storage param = P, grad = G, state = S;
  static constexpr ParamWrite write = W;
};

template <DecayMode MODE, bool AMSGRAD, bool MAXIMIZE, GradSource SOURCE,
          ConstantDivision DIVISION, typename Layout>
void lanes_piece(const AdamKernelCall& call, const AdamKernelRow& row, int64_t begin,
                 int64_t end, const Layout c) {
  // Copied out of the call (and `c` passed by value): read through a reference,
  // the compiler would reload them after every store, which may alias them.
  const ParamWrite write = c.write;
  const uint32_t rounding_key = row.rounding_key;
  const AdamScalars<FloatLanes> scalars = convert_scalars<FloatLanes>(row.float_scalars);
  const FloatLanes factor(grad_factor_as<float>(call.grad_factor, SOURCE));
  constexpr int64_t W = FloatLanes::kWidth;
  constexpr LaneOrder O = Layout::order;

  // Steps the W elements at offset i of `s`, as AdamElementOp steps one: the
  // same reads, take_grad, adam_update and writes, on lanes. `index` is the
  // first element's index in its tensor (the rounding noise depends on it).
  const auto step_lanes = [&](const Streams& s, int64_t i,
                              int64_t index) __attribute__((always_inline)) {
    FloatLanes p;
    if (write == ParamWrite::kFromMaster) {
      p = load_lanes<O>(s.master + i);
    } else {
      p = load_as<O>(s.param, c.param, i);
      if (write == ParamWrite::kKahan) p = p + load_as<O>(s.compensation, c.param, i);
    }
    FloatLanes grad = load_as<O>(s.grad, c.grad, i);
    const FloatLanes g = take_grad<SOURCE, FloatLanes>(grad, factor);
    FloatLanes m = load_as<O>(s.exp_avg, c.state, i);
    FloatLanes v = load_as<O>(s.exp_avg_sq, c.state, i);
    FloatLanes max_v = AMSGRAD ? load_as<O>(s.max_exp_avg_sq, c.state, i) : FloatLanes(0.0f);
    adam_update<MODE, AMSGRAD, MAXIMIZE, DIVISION>(p, g, m, v, max_v, scalars);

    const auto store_results = [&](auto may_be_nan) __attribute__((always_inline)) {
      constexpr bool N = decltype(may_be_nan)::value;
      if constexpr (SOURCE != GradSource::kPlain) store_as<O, N>(grad, s.grad, c.grad, i);
      store_as<O, N>(m, s.exp_avg, c.state, i);
      store_as<O, N>(v, s.exp_avg_sq, c.state, i);
      if constexpr (AMSGRAD) store_as<O, N>(max_v, s.max_exp_avg_sq, c.state, i);
      switch (write) {
        case ParamWrite::kInPlace:
          store_as<O, N>(p, s.param, c.param, i);
          break;
        case ParamWrite::kFromMaster:
          store_lanes<O>(p, s.master + i);
          store_as<O, N>(p, s.param, c.param, i);
          break;
        case ParamWrite::kKahan:
          store_as<O, N>(p, s.param, c.param, i);
          // An infinite p leaves inf - inf: the compensation may be NaN where p is not.
          store_as<O>(p - rounded_to<N>(p, c.param), s.compensation, c.param, i);
          break;
        case ParamWrite::kStochastic: {
          const UintLanes base(rounding_base(rounding_key, index));
          const UintLanes noise =
              rounding_noise(base, iota_lanes<O>(static_cast<uint32_t>(index)));
          store_lanes_stochastic<O, N>(p, noise, static_cast<Bf16Bits*>(s.param) + i);
          break;
        }
      }
    };
    // A NaN in any value this step stores reaches p through the update: a NaN
    // grad through m, a NaN m directly, a NaN v (or max_v) through the square
    // root, and the unscaled grad written back is the g that fed m. Where no
    // lane of p is NaN, every rounding to bfloat16 can skip its NaN fix-up (a
    // compare and a blend per register).
    if (any_nan(p)) {
      store_results(std::true_type{});
    } else {
      store_results(std::false_type{});
    }
  };

  const Streams streams{row.param,          row.grad,   row.exp_avg, row.exp_avg_sq,
                        row.max_exp_avg_sq, row.master, row.compensation};
  int64_t i = begin;
  for (; i + W <= end; i += W) step_lanes(streams, i, i);
  // The last partial group goes through zeroed local copies, so nothing past the
  // tensor's end is read or written. (With one lane there is none.)
  if constexpr (W > 1) {
    if (i == end) return;
    const int64_t n = end - i;
    alignas(64) unsigned char local[7][W * sizeof(float)] = {};
    const auto stage = [&](void* stream, Storage type, int k) -> void* {
      if (stream == nullptr) return nullptr;
      std::memcpy(local[k], static_cast<char*>(stream) + i * bytes_of(type), n * bytes_of(type));
      return local[k];
    };
    const Streams staged{stage(row.param, c.param, 0),
                         stage(row.grad, c.grad, 1),
                         stage(row.exp_avg, c.state, 2),
                         stage(row.exp_avg_sq, c.state, 3),
                         stage(row.max_exp_avg_sq, c.state, 4),
                         static_cast<float*>(stage(row.master, Storage::kFloat32, 5)),
                         stage(row.compensation, c.param, 6)};
    step_lanes(staged, 0, i);
    const auto unstage = [&](void* stream, Storage type, int k) {
      if (stream != nullptr) {
        std::memcpy(static_cast<char*>(stream) + i * bytes_of(type), local[k], n * bytes_of(type));
      }
    };
    unstage(row.param, c.param, 0);
    if (SOURCE != GradSource::kPlain) unstage(row.grad, c.grad, 1);
    unstage(row.exp_avg, c.state, 2);
    unstage(row.exp_avg_sq, c.state, 3);
    unstage(row.max_exp_avg_sq, c.state, 4);
    unstage(row.master, Storage::kFloat32, 5);
    unstage(row.compensation, c.param, 6);
  }
}

}  // namespace

void adam_piece(const AdamKernelCall& call, size_t row_index, int64_t begin, int64_t end) {
  const AdamKernelConfig& c = call.config;
  const AdamKernelRow& row = call.rows[row_index];
  // Stochastic rounding's noise takes the index's high half per group of lanes:
  // no group may straddle a multiple of 2^32.
  constexpr int64_t kHalfRange = int64_t(1) << 32;
  if (c.write == ParamWrite::kStochastic && begin / kHalfRange != (end - 1) / kHalfRange) {
    const int64_t split = (begin / kHalfRange + 1) * kHalfRange;
    adam_piece(call, row_index, begin, split);
    adam_piece(call, row_index, split, end);
    return;
  }
  const bool plain = (c.param == Storage::kFloat32 || c.param == Storage::kFloat64) &&
                     c.grad == c.param && c.state == c.param && c.write == ParamWrite::kInPlace;
  const bool narrow = c.param == Storage::kBFloat16 || c.param == Storage::kFloat16;
  dispatch_step_flags(c.mode, c.amsgrad, c.maximize, c.grad_source,
                      [&](auto mode, auto amsgrad, auto maximize, auto source) {
    constexpr DecayMode MODE = decltype(mode)::value;
    constexpr bool AMSGRAD = decltype(amsgrad)::value;
    constexpr bool MAXIMIZE = decltype(maximize)::value;
    constexpr GradSource SOURCE = decltype(source)::value;
    if (plain) {
      if (c.param == Storage::kFloat64) {
        plain_piece<double, MODE, AMSGRAD, MAXIMIZE, SOURCE>(call, row, begin, end);
      } else {
        plain_piece<float, MODE, AMSGRAD, MAXIMIZE, SOURCE>(call, row, begin, end);
      }
      return;
    }
    dispatch_division(narrow, c.write, [&](auto division) {
      constexpr ConstantDivision DIVISION = decltype(division)::value;
      const auto run = [&](auto layout) {
        lanes_piece<MODE, AMSGRAD, MAXIMIZE, SOURCE, DIVISION>(call, row, begin, end, layout);
      };
      constexpr Storage kBf16 = Storage::kBFloat16;
      constexpr Storage kGrad = SOURCE == GradSource::kWindowBuffer ? Storage::kFloat32 : kBf16;
      if constexpr (DIVISION == ConstantDivision::kByReciprocal) {
        if (c.param == kBf16 && c.grad == kGrad && c.state == kBf16 &&
            c.write == ParamWrite::kInPlace) {
          return run(FixedLayout<kBf16, kGrad, kBf16, ParamWrite::kInPlace>{});
        }
      }
      run(RuntimeLayout{c.param, c.grad, c.state, c.write});
    });
  });
}

}  // namespace FUSED_ACCUM_CPU_ISA
}  // namespace cpu
}  // namespace fused_accum

#undef FA_LANES_INLINE
