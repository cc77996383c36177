// CPU implementation of the Adam step operators: every tensor of a call in one
// parallel region, each element through AdamElementOp, the functor the CUDA
// kernel calls too.
#include <ATen/core/Tensor.h>

#include <vector>

#include "../adam_element_op.h"
#include "../adam_flag_dispatch.h"
#include "../adam_rows.h"
#include "adam_cpu.h"
#include "segments.h"

namespace fused_accum {
namespace cpu {
namespace {

enum Arg { kParams = 0, kGrads, kExpAvgs, kExpAvgSqs, kMaxExpAvgSqs };

template <typename P, typename G>
struct RowPointers {
  P* param;
  G* grad;
  P* exp_avg;
  P* exp_avg_sq;
  P* max_exp_avg_sq;
};

// The innermost loop: plain, over restrict pointers, so the compiler vectorises
// the inlined element update. Vectorising does not change the rounding (the
// kernels are built without contraction), which tests/test_cuda_element_op.py
// checks against the same functor run one element at a time.
template <bool AMSGRAD, typename Op, typename P, typename G>
void adam_piece(const Op& op, const RowPointers<P, G>& row, int64_t begin, int64_t end) {
  P* __restrict__ param = row.param;
  G* __restrict__ grad = row.grad;
  P* __restrict__ exp_avg = row.exp_avg;
  P* __restrict__ exp_avg_sq = row.exp_avg_sq;
  P* __restrict__ max_exp_avg_sq = row.max_exp_avg_sq;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    if constexpr (AMSGRAD) {
      op(param[i], grad[i], exp_avg[i], exp_avg_sq[i], max_exp_avg_sq[i]);
    } else {
      op(param[i], grad[i], exp_avg[i], exp_avg_sq[i]);
    }
  }
}

template <typename P, typename G>
void adam_all(const DenseRows& rows, const std::vector<double>& steps, const AdamCall& call,
              double lr, double grad_factor) {
  const AdamHyperparams& h = call.hyper;
  const size_t n = rows.rows();
  std::vector<RowPointers<P, G>> pointers(n);
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    pointers[i] = {rows.at(kParams, i).data_ptr<P>(), rows.at(kGrads, i).data_ptr<G>(),
                   rows.at(kExpAvgs, i).data_ptr<P>(), rows.at(kExpAvgSqs, i).data_ptr<P>(),
                   h.amsgrad ? rows.at(kMaxExpAvgSqs, i).data_ptr<P>() : nullptr};
    numels[i] = rows.at(kParams, i).numel();
  }
  const Segments segments(numels);
  dispatch_adam_flags(h, call.grad_mode, [&](auto mode, auto amsgrad, auto maximize,
                                             auto grad_mode) {
    constexpr bool AMSGRAD = decltype(amsgrad)::value;
    using Op = AdamElementOp<P, G, decltype(mode)::value, AMSGRAD, decltype(maximize)::value,
                             decltype(grad_mode)::value>;
    using T = typename Op::T;
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
      adam_piece<AMSGRAD>(ops[t], pointers[t], begin, end);
    });
  });
}

}  // namespace

void adam_cpu(const AdamCall& call, const char* op) {
  check_adam_call(call, op);
  const AdamTensorLists& l = call.lists;
  const size_t n = l.params.size();
  if (n == 0) return;

  const double found_inf = host_value_or(call.found_inf, 0.0);
  const double grad_factor = host_value_or(call.grad_factor, 1.0);
  const bool window = call.grad_mode == GradMode::kScaleAndZero;
  if (adam_step_skipped(&found_inf, window ? &grad_factor : nullptr)) {
    // Nothing changes; a discarded accumulation window still leaves clean buffers.
    if (window) {
      for (const at::Tensor& g : l.grads) g.zero_();
    }
    return;
  }

  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    float* step = l.state_steps[i].data_ptr<float>();
    *step += 1.0f;
    steps[i] = static_cast<double>(*step);
  }
  const double lr = host_value_or(call.lr_tensor, call.hyper.lr);

  DenseRows rows = adam_dense_rows(call);
  dispatch_adam_storage(call, [&](auto param_tag, auto grad_tag) {
    adam_all<decltype(param_tag), decltype(grad_tag)>(rows, steps, call, lr, grad_factor);
  });
  rows.finish();
}

}  // namespace cpu
}  // namespace fused_accum
