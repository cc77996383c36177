// CPU implementation of the Adam step operators: every tensor of a call in one
// parallel region, each element through AdamElementOp, the functor the CUDA
// kernel calls too. Float32 and bfloat16 storage take the AVX-512 loop of
// adam_piece_in_lanes.h where the build has it; the loops below serve the other
// storage types and machines.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../adam_element_op.h"
#include "../adam_flag_dispatch.h"
#include "../adam_rows.h"
#include "../parallel_rows.h"
#include "adam_cpu.h"
#include "adam_piece_in_lanes.h"
#include "adam_row_pointers.h"
#include "host_step.h"
#include "segments.h"
#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {
namespace {

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
  return loop_pointer(checked_data<T>(t));
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
  dispatch_adam_flags(h, call.grad_mode, [&](auto mode, auto amsgrad, auto maximize,
                                             auto grad_mode) {
    constexpr bool AMSGRAD = decltype(amsgrad)::value;
    constexpr GradMode GRAD_MODE = decltype(grad_mode)::value;
    constexpr bool IN_PLACE = kSteppedInPlace<P>;
    constexpr bool IN_LANES = kSteppedInLanes<P, G>;
    using OpP = std::conditional_t<IN_PLACE, P, float>;
    using OpG = std::conditional_t<IN_PLACE, G, float>;
    using Op = AdamElementOp<OpP, OpG, decltype(mode)::value, AMSGRAD,
                             decltype(maximize)::value, GRAD_MODE, kDivisionFor<P>>;
    using T = typename Op::T;
    static_assert(std::is_same_v<T, typename AdamElementOp<P, G, decltype(mode)::value, AMSGRAD,
                                                           decltype(maximize)::value,
                                                           GRAD_MODE>::T>,
                  "stepping through float scratch must keep the storage's math type");
    // Params of one group almost always share a step count: derive the bias
    // corrections once per distinct step, not once per tensor.
    std::vector<Op> ops(n);
    for (size_t i = 0; i < n; ++i) {
      ops[i] = (i > 0 && steps[i] == steps[i - 1])
                   ? ops[i - 1]
                   : Op{make_adam_scalars<T>(lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                                             steps[i]),
                        grad_factor_as<T>(grad_factor)};
    }
    segments.parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
      if constexpr (IN_LANES) {
        const bool ends_tensor = end == numels[t] && static_cast<size_t>(t) + 1 < n;
        adam_piece_in_lanes<AMSGRAD, GRAD_MODE != GradMode::kPlain>(
            ops[t], pointers[t], begin, end, ends_tensor ? &pointers[t + 1] : nullptr);
      } else if constexpr (IN_PLACE) {
        adam_piece<AMSGRAD>(ops[t], pointers[t], begin, end);
      } else {
        adam_piece_via_float<AMSGRAD, GRAD_MODE != GradMode::kPlain>(ops[t], pointers[t],
                                                                     begin, end);
      }
    });
  });
}

}  // namespace

void adam_cpu(const AdamCall& call, const char* op) {
  run_host_adam(call, op, [&](auto param_tag, auto grad_tag, const DenseRows& rows,
                              const HostStep& step) {
    adam_all<decltype(param_tag), decltype(grad_tag)>(rows, step.steps, call, step.lr,
                                                      step.grad_factor);
  });
}

}  // namespace cpu
}  // namespace fused_accum
