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

template <typename P, typename G, typename S>
void update_through_element_op(const DenseRows& rows, const AdamOptionalRows& optional,
                               const AdamCall& call, const HostStep& step) {
  const AdamHyperparams& h = call.hyper;
  const ParamWrite write = call.param_write();
  dispatch_adam_flags(call, [&](auto mode, auto amsgrad, auto maximize, auto grad_source) {
    dispatch_division(kNarrowStorage<P>, write, [&](auto division) {
      constexpr bool AMSGRAD = decltype(amsgrad)::value;
      using Op = AdamElementOp<P, G, S, decltype(mode)::value, AMSGRAD, decltype(maximize)::value,
                               decltype(grad_source)::value, decltype(division)::value>;
      using T = typename Op::T;
      for (size_t i = 0; i < rows.rows(); ++i) {
        const Op op{make_adam_scalars<T>(step.lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                                         step.steps[i]),
                    grad_factor_as<T>(step.grad_factor, call.grad_source), write};
        const auto data = [&](int k, auto type_tag) {
          using D = decltype(type_tag);
          return k < 0 ? nullptr : rows.at(k, i).template data_ptr<D>();
        };
        P* param = data(kParams, P{});
        G* grad = data(kGrads, G{});
        S* exp_avg = data(kExpAvgs, S{});
        S* exp_avg_sq = data(kExpAvgSqs, S{});
        S* max_exp_avg_sq = data(optional.max_exp_avg_sq, S{});
        float* master = data(optional.master, float{});
        P* compensation = data(optional.compensation, P{});
        const uint32_t key =
            write == ParamWrite::kStochastic
                ? stochastic_rounding_key(*call.lists.rounding_seeds[i].const_data_ptr<int64_t>(),
                                          step.steps[i])
                : 0u;
        for (int64_t e = 0; e < rows.at(kParams, i).numel(); ++e) {
          const uint32_t noise =
              write == ParamWrite::kStochastic
                  ? rounding_noise(rounding_base(key, e), static_cast<uint32_t>(e))
                  : 0u;
          op(param[e], grad[e], exp_avg[e], exp_avg_sq[e],
             AMSGRAD ? max_exp_avg_sq + e : nullptr, master ? master + e : nullptr,
             compensation ? compensation + e : nullptr, noise);
        }
      }
    });
  });
}

void adam_through_element_op(const AdamCall& call) {
  run_host_adam(call, [&](const DenseRows& rows, const AdamOptionalRows& optional,
                          const HostStep& step) {
    dispatch_adam_storage(call, [&](auto param_tag, auto grad_tag) {
      using P = decltype(param_tag);
      dispatch_state_storage<P>(call, [&](auto state_tag) {
        update_through_element_op<P, decltype(grad_tag), decltype(state_tag)>(rows, optional,
                                                                              call, step);
      });
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_FRAGMENT(fused_accum_testing, m) { fused_accum::define_adam_schemas(m); }

TORCH_LIBRARY_IMPL(fused_accum_testing, CPU, m) {
  fused_accum::register_adam_impls<fused_accum::cpu::adam_through_element_op>(m);
}
