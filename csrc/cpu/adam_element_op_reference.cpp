// The Adam step run on the host through AdamElementOp, the per-element functor
// of the CUDA kernel, as torch.ops.fused_accum_testing.adam_step_* (same
// schemas as fused_accum). tests/test_cuda_element_op.py requires its results
// to equal the CPU kernel's bit for bit: the GPU path then computes what the
// CPU path computes, and that is checked on machines without a GPU. It also
// follows the CUDA path's order: skip check, step count, then the update from
// the counted step. Deliberately serial and simple: it is a reference, not a kernel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../adam_call.h"
#include "../adam_element_op.h"
#include "host_step.h"

namespace fused_accum {
namespace cpu {
namespace {

template <typename P, typename G>
void update_through_element_op(const DenseRows& rows, const AdamCall& call,
                               const std::vector<double>& steps, double lr,
                               double grad_factor) {
  const AdamHyperparams& h = call.hyper;
  dispatch_adam_flags(call, [&](auto mode, auto amsgrad, auto maximize, auto grad_source) {
    constexpr bool AMSGRAD = decltype(amsgrad)::value;
    using Op = AdamElementOp<P, G, decltype(mode)::value, AMSGRAD, decltype(maximize)::value,
                             decltype(grad_source)::value>;
    using T = typename Op::T;
    for (size_t i = 0; i < rows.rows(); ++i) {
      const Op op{make_adam_scalars<T>(lr, h.beta1, h.beta2, h.weight_decay, h.eps, steps[i]),
                  grad_factor_as<T>(grad_factor, call.grad_source)};
      P* param = rows.at(kParams, i).data_ptr<P>();
      G* grad = rows.at(kGrads, i).data_ptr<G>();
      P* exp_avg = rows.at(kExpAvgs, i).data_ptr<P>();
      P* exp_avg_sq = rows.at(kExpAvgSqs, i).data_ptr<P>();
      P* max_exp_avg_sq = AMSGRAD ? rows.at(kMaxExpAvgSqs, i).data_ptr<P>() : nullptr;
      for (int64_t e = 0; e < rows.at(kParams, i).numel(); ++e) {
        if constexpr (AMSGRAD) {
          op(param[e], grad[e], exp_avg[e], exp_avg_sq[e], max_exp_avg_sq[e]);
        } else {
          op(param[e], grad[e], exp_avg[e], exp_avg_sq[e]);
        }
      }
    }
  });
}

void adam_through_element_op(const AdamCall& call) {
  run_host_adam(call, [&](auto param_tag, auto grad_tag, const DenseRows& rows,
                              const HostStep& step) {
    update_through_element_op<decltype(param_tag), decltype(grad_tag)>(
        rows, call, step.steps, step.lr, step.grad_factor);
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_FRAGMENT(fused_accum_testing, m) { fused_accum::define_adam_schemas(m); }

TORCH_LIBRARY_IMPL(fused_accum_testing, CPU, m) {
  fused_accum::register_adam_impls<fused_accum::cpu::adam_through_element_op>(m);
}
