// The Adam step on CUDA: checks, float64 device copies of the scalar
// tensors, one small launch sequence that counts the steps, then the update
// (adam_update.cuh). Nothing is read back to the host.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <vector>

#include "../adam_rows.h"
#include "adam_cuda.h"
#include "adam_update.cuh"
#include "multi_tensor_apply.cuh"

namespace fused_accum {
namespace cuda {
namespace {

struct IncrementStepOp {
  AdamDeviceArgs args;
  __device__ __forceinline__ void operator()(float& step) const {
    if (!args.skipped()) step += 1.0f;
  }
};

// Absent optional scalars stay undefined; present ones become float64 on the
// device (a no-op for float64), so kernels read one type whatever was passed.
at::Tensor as_device_double(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->to(at::kDouble).contiguous() : at::Tensor();
}

const double* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<double>() : nullptr;
}

void increment_steps(at::TensorList state_steps, const AdamDeviceArgs& args) {
  std::array<std::vector<void*>, 1> addresses;
  for (const at::Tensor& step : state_steps) addresses[0].push_back(step.data_ptr());
  const std::vector<int64_t> numels(state_steps.size(), 1);
  apply_chunked<1>(addresses, numels, ElementwiseChunk<IncrementStepOp, float>{{args}});
}

}  // namespace

void adam_cuda(const AdamCall& call, const char* op) {
  check_adam_call(call, op);
  const AdamTensorLists& l = call.lists;
  if (l.params.empty()) return;
  TORCH_CHECK(l.params[0].is_cuda(), op, ": params must be CUDA tensors here, got ",
              l.params[0].device());
  const c10::cuda::CUDAGuard guard(l.params[0].device());

  const at::Tensor lr_tensor = as_device_double(call.lr_tensor);
  const at::Tensor grad_factor = as_device_double(call.grad_factor);
  const at::Tensor found_inf = as_device_double(call.found_inf);
  const AdamHyperparams& h = call.hyper;
  const AdamDeviceArgs args{h.lr,
                            data_or_null(lr_tensor),
                            data_or_null(grad_factor),
                            data_or_null(found_inf),
                            h.beta1,
                            h.beta2,
                            h.weight_decay,
                            h.eps,
                            call.grad_mode == GradMode::kScaleAndZero};

  increment_steps(l.state_steps, args);

  DenseRows rows = adam_dense_rows(call, LayoutScan::kOneThread);
  if (h.decay_mode == DecayMode::kL2) {
    launch_adam_update<DecayMode::kL2>(rows, call, args);
  } else {
    launch_adam_update<DecayMode::kDecoupled>(rows, call, args);
  }
  rows.finish();
}

}  // namespace cuda
}  // namespace fused_accum
