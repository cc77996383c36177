// CPU kernel of the Adam step operators: every tensor of a call in one parallel
// region, each element through AdamElementOp, the functor the CUDA kernel calls
// too. Float32 and bfloat16 storage take the AVX-512 loop below where the build
// has it (float_lanes.h); the compiler-vectorised loops after it serve the other
// storage types and machines.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../adam_call.h"
#include "../adam_element_op.h"
#include "float_lanes.h"
#include "host_step.h"
#include "multi_tensor_loop.h"
#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {
namespace {

// Where one tensor's elements of each Adam list start, as a loop walks them.
template <typename P, typename G>
struct RowPointers {
  P* param;
  G* grad;
  P* exp_avg;
  P* exp_avg_sq;
  P* max_exp_avg_sq;  // null without amsgrad
};

// The AVX-512 loop (float_lanes.h).
#ifdef FUSED_ACCUM_FLOAT_LANES

// The functor of a float-math step, on 16 lanes: same mode, flags and division.
template <typename FloatOp>
struct InLanes;
template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradSource GRAD_SOURCE, ConstantDivision DIVISION>
struct InLanes<AdamElementOp<P, G, MODE, AMSGRAD, MAXIMIZE, GRAD_SOURCE, DIVISION>> {
  static_assert(std::is_same_v<typename MathType<P>::type, float>, "lanes hold float math");
  using type = AdamElementOp<FloatLanes, FloatLanes, MODE, AMSGRAD, MAXIMIZE, GRAD_SOURCE, DIVISION>;
};

// Steps elements [begin, end) of one tensor; the last partial 16 through masks.
// `next`: the tensor the loop goes on to when `end` is this one's end, else null.
template <bool AMSGRAD, bool WRITES_GRAD, typename FloatOp, typename P, typename G>
void adam_piece_in_lanes(const FloatOp& float_op, const RowPointers<P, G>& row, int64_t begin,
                         int64_t end, const RowPointers<P, G>* next) {
  using LanesOp = typename InLanes<FloatOp>::type;
  const LanesOp op{convert_scalars<FloatLanes>(float_op.scalars),
                   FloatLanes(float_op.grad_factor)};
  // Local restrict copies: through `row` the compiler reloads every pointer after each store.
  P* __restrict__ param_at = row.param;
  G* __restrict__ grad_at = row.grad;
  P* __restrict__ exp_avg_at = row.exp_avg;
  P* __restrict__ exp_avg_sq_at = row.exp_avg_sq;
  P* __restrict__ max_exp_avg_sq_at = row.max_exp_avg_sq;
  const RowPointers<P, G> following = next != nullptr ? *next : RowPointers<P, G>{};
  const int64_t ahead = prefetch_bytes_for((end - begin) * static_cast<int64_t>(sizeof(P)));
  const auto step_lanes = [&](int64_t i, auto lanes) {
    prefetch_ahead(param_at, i, end, following.param, ahead);
    prefetch_ahead(grad_at, i, end, following.grad, ahead);
    prefetch_ahead(exp_avg_at, i, end, following.exp_avg, ahead);
    prefetch_ahead(exp_avg_sq_at, i, end, following.exp_avg_sq, ahead);
    if constexpr (AMSGRAD) {
      prefetch_ahead(max_exp_avg_sq_at, i, end, following.max_exp_avg_sq, ahead);
    }
    FloatLanes param = load_lanes(param_at + i, lanes);
    FloatLanes grad = load_lanes(grad_at + i, lanes);
    FloatLanes exp_avg = load_lanes(exp_avg_at + i, lanes);
    FloatLanes exp_avg_sq = load_lanes(exp_avg_sq_at + i, lanes);
    if constexpr (AMSGRAD) {
      FloatLanes max_exp_avg_sq = load_lanes(max_exp_avg_sq_at + i, lanes);
      op(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq);
      store_lanes(max_exp_avg_sq, max_exp_avg_sq_at + i, lanes);
    } else {
      op(param, grad, exp_avg, exp_avg_sq);
    }
    store_lanes(param, param_at + i, lanes);
    if (WRITES_GRAD) store_lanes(grad, grad_at + i, lanes);
    store_lanes(exp_avg, exp_avg_at + i, lanes);
    store_lanes(exp_avg_sq, exp_avg_sq_at + i, lanes);
  };
  for_each_lanes(begin, end, step_lanes);
}

#else

// Declared only, for the discarded branch that names it: kSteppedInLanes is false.
template <bool AMSGRAD, bool WRITES_GRAD, typename FloatOp, typename P, typename G>
void adam_piece_in_lanes(const FloatOp& float_op, const RowPointers<P, G>& row, int64_t begin,
                         int64_t end, const RowPointers<P, G>* next);

#endif

// The innermost loop: plain, over restrict pointers, so the compiler vectorises
// the inlined element update (no `omp simd`: it makes GCC privatise the class-typed
// bfloat16 temporaries and give up). Vectorising does not change the rounding (the
// kernels are built without contraction), which tests/test_cuda_element_op.py
// checks against the same functor run one element at a time.
template <bool AMSGRAD, typename Op, typename P, typename G>
void adam_piece(const Op& op, const RowPointers<P, G>& row, int64_t begin, int64_t end) {
  P* __restrict__ param = row.param;
  G* __restrict__ grad = row.grad;
  P* __restrict__ exp_avg = row.exp_avg;
  P* __restrict__ exp_avg_sq = row.exp_avg_sq;
  P* __restrict__ max_exp_avg_sq = row.max_exp_avg_sq;
  for (int64_t i = begin; i < end; ++i) {
    if constexpr (AMSGRAD) {
      op(param[i], grad[i], exp_avg[i], exp_avg_sq[i], max_exp_avg_sq[i]);
    } else {
      op(param[i], grad[i], exp_avg[i], exp_avg_sq[i]);
    }
  }
}

// Low-precision storage: the compiler vectorises the element update in float,
// and plain conversion loops, but not the two fused in one loop. So each block is
// converted to float scratch, stepped by the float functor and converted back;
// the scratch stays in L1, and the rounding is that of converting each value once
// each way, exactly as the element functor on bfloat16 storage does.
constexpr int64_t kConvertBlock = 256;

template <typename From, typename To>
void convert(const From* __restrict__ from, To* __restrict__ to, int64_t n) {
  for (int64_t i = 0; i < n; ++i) to[i] = static_cast<To>(static_cast<float>(from[i]));
}

template <bool AMSGRAD, bool WRITES_GRAD, typename FloatOp, typename P, typename G>
void adam_piece_via_float(const FloatOp& op, const RowPointers<P, G>& row, int64_t begin,
                          int64_t end) {
  float param[kConvertBlock], grad[kConvertBlock], exp_avg[kConvertBlock],
      exp_avg_sq[kConvertBlock], max_exp_avg_sq[kConvertBlock];
  const RowPointers<float, float> scratch{param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq};
  for (int64_t block = begin; block < end; block += kConvertBlock) {
    const int64_t n = std::min(kConvertBlock, end - block);
    convert(row.param + block, param, n);
    convert(row.grad + block, grad, n);
    convert(row.exp_avg + block, exp_avg, n);
    convert(row.exp_avg_sq + block, exp_avg_sq, n);
    if (AMSGRAD) convert(row.max_exp_avg_sq + block, max_exp_avg_sq, n);
    adam_piece<AMSGRAD>(op, scratch, 0, n);
    convert(param, row.param + block, n);
    if (WRITES_GRAD) convert(grad, row.grad + block, n);
    convert(exp_avg, row.exp_avg + block, n);
    convert(exp_avg_sq, row.exp_avg_sq + block, n);
    if (AMSGRAD) convert(max_exp_avg_sq, row.max_exp_avg_sq + block, n);
  }
}

// The elements of a checked tensor of dtype T, as the loops walk them.
template <typename T>
loop_storage_t<T>* loop_data(const at::Tensor& t) {
  return loop_pointer(static_cast<T*>(t.data_ptr()));
}

template <typename P>
constexpr bool kSteppedInPlace = std::is_same_v<P, float> || std::is_same_v<P, double>;

// PT and GT are the tensors' element types; P and G the types the loops walk
// (vectorizable_storage.h).
template <typename PT, typename GT, typename P = loop_storage_t<PT>,
          typename G = loop_storage_t<GT>>
void adam_all(const DenseRows& rows, const std::vector<double>& steps, const AdamCall& call,
              double lr, double grad_factor) {
  const AdamHyperparams& h = call.hyper;
  const size_t n = rows.rows();
  std::vector<RowPointers<P, G>> pointers(n);
  std::vector<int64_t> numels(n);
  parallel_for_rows(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      pointers[i] = {loop_data<PT>(rows.at(kParams, i)), loop_data<GT>(rows.at(kGrads, i)),
                     loop_data<PT>(rows.at(kExpAvgs, i)), loop_data<PT>(rows.at(kExpAvgSqs, i)),
                     h.amsgrad ? loop_data<PT>(rows.at(kMaxExpAvgSqs, i)) : nullptr};
      numels[i] = rows.at(kParams, i).numel();
    }
  });
  const Segments segments(numels);
  dispatch_adam_flags(call, [&](auto mode, auto amsgrad, auto maximize, auto grad_source) {
    constexpr bool AMSGRAD = decltype(amsgrad)::value;
    constexpr GradSource GRAD_SOURCE = decltype(grad_source)::value;
    constexpr bool IN_PLACE = kSteppedInPlace<P>;
    constexpr bool IN_LANES = kSteppedInLanes<P, G>;
    using OpP = std::conditional_t<IN_PLACE, P, float>;
    using OpG = std::conditional_t<IN_PLACE, G, float>;
    using Op = AdamElementOp<OpP, OpG, decltype(mode)::value, AMSGRAD,
                             decltype(maximize)::value, GRAD_SOURCE, kDivisionFor<P>>;
    using T = typename Op::T;
    static_assert(std::is_same_v<T, typename AdamElementOp<P, G, decltype(mode)::value, AMSGRAD,
                                                           decltype(maximize)::value,
                                                           GRAD_SOURCE>::T>,
                  "stepping through float scratch must keep the storage's math type");
    // Params of one group almost always share a step count: derive the bias
    // corrections once per distinct step, not once per tensor.
    std::vector<Op> ops(n);
    for (size_t i = 0; i < n; ++i) {
      ops[i] = (i > 0 && steps[i] == steps[i - 1])
                   ? ops[i - 1]
                   : Op{make_adam_scalars<T>(lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                                             steps[i]),
                        grad_factor_as<T>(grad_factor, call.grad_source)};
    }
    segments.parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
      if constexpr (IN_LANES) {
        const bool ends_tensor = end == numels[t] && static_cast<size_t>(t) + 1 < n;
        adam_piece_in_lanes<AMSGRAD, GRAD_SOURCE != GradSource::kPlain>(
            ops[t], pointers[t], begin, end, ends_tensor ? &pointers[t + 1] : nullptr);
      } else if constexpr (IN_PLACE) {
        adam_piece<AMSGRAD>(ops[t], pointers[t], begin, end);
      } else {
        adam_piece_via_float<AMSGRAD, GRAD_SOURCE != GradSource::kPlain>(ops[t], pointers[t],
                                                                     begin, end);
      }
    });
  });
}

}  // namespace

void adam_cpu(const AdamCall& call) {
  run_host_adam(call, [&](auto param_tag, auto grad_tag, const DenseRows& rows,
                              const HostStep& step) {
    adam_all<decltype(param_tag), decltype(grad_tag)>(rows, step.steps, call, step.lr,
                                                      step.grad_factor);
  });
}

}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CPU, m) {
  fused_accum::register_adam_impls<fused_accum::cpu::adam_cpu>(m);
}
