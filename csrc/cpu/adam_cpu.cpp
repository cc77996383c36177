// CPU kernel of the Adam step operators, the part that speaks ATen: the checks,
// the step counts, the rows laid out for the element loops, and the split of all
// the elements of a call between threads. The loops themselves are compiled once
// per instruction set and chosen at run time (adam_kernel.h, cpu_capability.h).
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

#include "../adam_call.h"
#include "adam_kernel.h"
#include "cpu_capability.h"
#include "host_step.h"
#include "multi_tensor_loop.h"

namespace fused_accum {
namespace cpu {
namespace {

Storage storage_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return Storage::kFloat32;
    case at::kDouble:
      return Storage::kFloat64;
    case at::kBFloat16:
      return Storage::kBFloat16;
    case at::kHalf:
      return Storage::kFloat16;
    default:
      TORCH_CHECK(false, "fused_accum: no CPU Adam loop for ", dtype);
  }
}

AdamKernelConfig kernel_config(const AdamCall& call) {
  const AdamTensorLists& l = call.lists;
  return {call.hyper.decay_mode,
          call.hyper.amsgrad,
          call.hyper.maximize,
          call.grad_source,
          call.param_write(),
          storage_of(l.params[0].scalar_type()),
          storage_of(l.grads[0].scalar_type()),
          storage_of(l.exp_avgs[0].scalar_type())};
}

void adam_cpu(const AdamCall& call) {
  run_host_adam(call, [&](const DenseRows& rows, const AdamOptionalRows& optional,
                          const HostStep& step) {
    const AdamHyperparams& h = call.hyper;
    const AdamTensorLists& l = call.lists;
    const size_t n = rows.rows();
    const bool double_math = l.params[0].scalar_type() == at::kDouble;
    std::vector<AdamKernelRow> kernel_rows(n);
    std::vector<int64_t> numels(n);
    const auto data = [&](int k, size_t i) -> void* {
      return k < 0 ? nullptr : rows.at(k, i).data_ptr();
    };
    parallel_for_rows(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        AdamKernelRow& row = kernel_rows[i];
        row.param = data(kParams, i);
        row.grad = data(kGrads, i);
        row.exp_avg = data(kExpAvgs, i);
        row.exp_avg_sq = data(kExpAvgSqs, i);
        row.max_exp_avg_sq = data(optional.max_exp_avg_sq, i);
        row.master = static_cast<float*>(data(optional.master, i));
        row.compensation = data(optional.compensation, i);
        row.numel = numels[i] = rows.at(kParams, i).numel();
        row.rounding_key =
            l.rounding_seeds.empty()
                ? 0u
                : stochastic_rounding_key(*l.rounding_seeds[i].const_data_ptr<int64_t>(),
                                          step.steps[i]);
      }
    });
    // Params of one group almost always share a step count: derive the bias
    // corrections once per distinct step, not once per tensor.
    for (size_t i = 0; i < n; ++i) {
      AdamKernelRow& row = kernel_rows[i];
      if (i > 0 && step.steps[i] == step.steps[i - 1]) {
        row.float_scalars = kernel_rows[i - 1].float_scalars;
        row.double_scalars = kernel_rows[i - 1].double_scalars;
      } else if (double_math) {
        row.double_scalars = make_adam_scalars<double>(step.lr, h.beta1, h.beta2,
                                                       h.weight_decay, h.eps, step.steps[i]);
      } else {
        row.float_scalars = make_adam_scalars<float>(step.lr, h.beta1, h.beta2,
                                                     h.weight_decay, h.eps, step.steps[i]);
      }
    }
    const AdamKernelCall kernel_call{kernel_config(call), step.grad_factor, kernel_rows.data(),
                                     n};
    const AdamPieceKernel piece = adam_piece_kernel();
    Segments(numels).parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
      piece(kernel_call, static_cast<size_t>(t), begin, end);
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CPU, m) {
  fused_accum::register_adam_impls<fused_accum::cpu::adam_cpu>(m);
}
