// The argument checks of an Adam call, run by every backend before it writes.
#include "adam_call.h"

#include <c10/util/Exception.h>

#include "tensor_list_checks.h"

namespace fused_accum {

namespace {

void check_scalar_tensor(const std::optional<at::Tensor>& t, const char* op,
                         const char* name, const at::Device& device) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->numel() == 1, op, ": ", name, " must hold one element, got ",
              t->numel());
  TORCH_CHECK(t->device() == device, op, ": ", name, " must be on ", device,
              " like the params, got ", t->device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t->scalar_type());
}

}  // namespace

void check_adam_lists(const AdamCall& call) {
  const char* op = call.op;
  const AdamTensorLists& l = call.lists;
  const size_t n = l.params.size();
  check_list_length(l.grads, n, op, "grads");
  check_list_length(l.exp_avgs, n, op, "exp_avgs");
  check_list_length(l.exp_avg_sqs, n, op, "exp_avg_sqs");
  check_list_length(l.state_steps, n, op, "state_steps");
  if (call.hyper.amsgrad) {
    check_list_length(l.max_exp_avg_sqs, n, op, "max_exp_avg_sqs");
  } else {
    TORCH_CHECK(l.max_exp_avg_sqs.empty(), op,
                ": max_exp_avg_sqs must be empty when amsgrad=False, got ",
                l.max_exp_avg_sqs.size(), " tensors");
  }
  if (n == 0) return;

  const at::Tensor& first = l.params[0];
  const at::Device device = first.device();
  const at::ScalarType dtype = first.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": params must be float32, float64, float16 or bfloat16, got ", dtype);
  check_scalar_tensor(call.lr_tensor, op, "lr", device);
  check_scalar_tensor(call.grad_factor, op,
                      call.grad_source == GradSource::kUnscale ? "grad_scale" : "grad_multiplier",
                      device);
  check_scalar_tensor(call.found_inf, op, "found_inf", device);
}

void check_adam_rows(const AdamCall& call, size_t begin, size_t end) {
  const char* op = call.op;
  if (begin >= end) return;
  const AdamTensorLists& l = call.lists;
  const at::Device device = l.params[0].device();
  const at::ScalarType dtype = l.params[0].scalar_type();
  // The window step reads float32 accumulation buffers for low-precision params.
  const bool float_grads_allowed = call.grad_source == GradSource::kWindowBuffer;
  for (size_t i = begin; i < end; ++i) {
    check_member(l.params[i], i, op, "params", device, dtype);
    check_same_shape(l.grads[i], l.params[i], i, op, "grads");
    check_same_shape(l.exp_avgs[i], l.params[i], i, op, "exp_avgs");
    check_same_shape(l.exp_avg_sqs[i], l.params[i], i, op, "exp_avg_sqs");
    TORCH_CHECK(!l.grads[i].is_sparse(), op, ": grads[", i,
                "] is sparse; Adam does not support sparse gradients");
    const at::ScalarType grad_dtype = l.grads[i].scalar_type();
    TORCH_CHECK(grad_dtype == dtype || (float_grads_allowed && grad_dtype == at::kFloat),
                op, ": grads[", i, "] must have the params' dtype ", dtype,
                float_grads_allowed ? " or float32" : "", ", got ", grad_dtype);
    // Within a list one dtype: the kernel is instantiated once per call.
    TORCH_CHECK(grad_dtype == l.grads[0].scalar_type(), op,
                ": all grads must share one dtype, grads[0] is ", l.grads[0].scalar_type(),
                " and grads[", i, "] is ", grad_dtype);
    check_member(l.grads[i], i, op, "grads", device, grad_dtype);
    check_member(l.exp_avgs[i], i, op, "exp_avgs", device, dtype);
    check_member(l.exp_avg_sqs[i], i, op, "exp_avg_sqs", device, dtype);
    if (call.hyper.amsgrad) {
      check_same_shape(l.max_exp_avg_sqs[i], l.params[i], i, op, "max_exp_avg_sqs");
      check_member(l.max_exp_avg_sqs[i], i, op, "max_exp_avg_sqs", device, dtype);
    }
    const at::Tensor& step = l.state_steps[i];
    TORCH_CHECK(step.numel() == 1 && step.scalar_type() == at::kFloat, op,
                ": state_steps[", i, "] must be a one-element float32 tensor, got ",
                step.scalar_type(), " with ", step.numel(), " elements");
    TORCH_CHECK(step.device() == device, op, ": state_steps[", i, "] must be on ",
                device, " like the params, got ", step.device());
  }
}

}  // namespace fused_accum
