// The argument checks of an Adam call, run by every backend before it writes.
#include "adam_call.h"

#include <c10/util/Exception.h>

#include "memory_overlap.h"
#include "tensor_list_checks.h"

namespace fused_accum {

namespace {

const char* grad_factor_name(const AdamCall& call) {
  return call.grad_source == GradSource::kUnscale ? "grad_scale" : "grad_multiplier";
}

// A one-element floating tensor, on the params' device when there are params.
void check_scalar_tensor(const std::optional<at::Tensor>& t, const char* op,
                         const char* name, const at::Device* device) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->numel() == 1, op, ": ", name, " must hold one element, got ",
              t->numel());
  TORCH_CHECK(device == nullptr || t->device() == *device, op, ": ", name, " must be on ",
              *device, " like the params, got ", t->device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t->scalar_type());
}

void check_scalar_tensors(const AdamCall& call, const at::Device* device) {
  check_scalar_tensor(call.lr_tensor, call.op, "lr", device);
  check_scalar_tensor(call.grad_factor, call.op, grad_factor_name(call), device);
  check_scalar_tensor(call.found_inf, call.op, "found_inf", device);
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
  const size_t given = !l.master_params.empty() + !l.compensations.empty() +
                       !l.rounding_seeds.empty();
  TORCH_CHECK(given <= 1, op, ": master_params (", l.master_params.size(),
              " tensors), compensations (", l.compensations.size(),
              ") and rounding_seeds (", l.rounding_seeds.size(),
              ") are exclusive ways to write the params; give at most one");
  if (!l.master_params.empty()) check_list_length(l.master_params, n, op, "master_params");
  if (!l.compensations.empty()) check_list_length(l.compensations, n, op, "compensations");
  if (!l.rounding_seeds.empty()) check_list_length(l.rounding_seeds, n, op, "rounding_seeds");
  if (n == 0) {
    check_scalar_tensors(call, nullptr);
    return;
  }

  const at::Tensor& first = l.params[0];
  const at::Device device = first.device();
  const at::ScalarType dtype = first.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": params must be float32, float64, float16 or bfloat16, got ", dtype);
  const bool narrow = dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(l.master_params.empty() || narrow, op,
              ": master_params are for bfloat16 and float16 params, got ", dtype, " params");
  TORCH_CHECK(l.compensations.empty() || narrow, op,
              ": compensations are for bfloat16 and float16 params, got ", dtype, " params");
  TORCH_CHECK(l.rounding_seeds.empty() || dtype == at::kBFloat16, op,
              ": rounding_seeds (stochastic rounding) are for bfloat16 params, got ", dtype,
              " params");
  TORCH_CHECK(l.exp_avgs[0].defined(), op, ": exp_avgs[0] is undefined");
  const at::ScalarType state = l.exp_avgs[0].scalar_type();
  TORCH_CHECK(state == dtype || (dtype != at::kDouble && (state == at::kFloat ||
                                                          state == at::kBFloat16 ||
                                                          state == at::kHalf)),
              op, ": exp_avgs must have the params' dtype ", dtype,
              dtype == at::kDouble ? "" : " or be float32, bfloat16 or float16", ", got ",
              state);
  check_scalar_tensors(call, &device);
}

void check_adam_rows(const AdamCall& call, size_t begin, size_t end) {
  const char* op = call.op;
  if (begin >= end) return;
  const AdamTensorLists& l = call.lists;
  const at::Device device = l.params[0].device();
  const at::ScalarType dtype = l.params[0].scalar_type();
  const at::ScalarType state = l.exp_avgs[0].scalar_type();
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
    // One state dtype for all moments: the kernel is instantiated once per call.
    check_member(l.exp_avgs[i], i, op, "exp_avgs", device, state);
    check_member(l.exp_avg_sqs[i], i, op, "exp_avg_sqs", device, state);
    if (call.hyper.amsgrad) {
      check_same_shape(l.max_exp_avg_sqs[i], l.params[i], i, op, "max_exp_avg_sqs");
      check_member(l.max_exp_avg_sqs[i], i, op, "max_exp_avg_sqs", device, state);
    }
    if (!l.master_params.empty()) {
      check_same_shape(l.master_params[i], l.params[i], i, op, "master_params");
      check_member(l.master_params[i], i, op, "master_params", device, at::kFloat);
    }
    if (!l.compensations.empty()) {
      check_same_shape(l.compensations[i], l.params[i], i, op, "compensations");
      check_member(l.compensations[i], i, op, "compensations", device, dtype);
    }
    if (!l.rounding_seeds.empty()) {
      const at::Tensor& seed = l.rounding_seeds[i];
      TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong, op,
                  ": rounding_seeds[", i, "] must be a one-element int64 tensor, got ",
                  seed.scalar_type(), " with ", seed.numel(), " elements");
      TORCH_CHECK(seed.device() == device, op, ": rounding_seeds[", i, "] must be on ",
                  device, " like the params, got ", seed.device());
    }
    const at::Tensor& step = l.state_steps[i];
    TORCH_CHECK(step.numel() == 1 && step.scalar_type() == at::kFloat, op,
                ": state_steps[", i, "] must be a one-element float32 tensor, got ",
                step.scalar_type(), " with ", step.numel(), " elements");
    TORCH_CHECK(step.device() == device, op, ": state_steps[", i, "] must be on ",
                device, " like the params, got ", step.device());
  }
}

void check_adam_memory(const AdamCall& call) {
  const AdamTensorLists& l = call.lists;
  MemoryOverlapCheck memory(call.op);
  memory.add(l.params, "params", true);
  // Plain grads are only read; unscaled ones are written back, window buffers zeroed.
  memory.add(l.grads, "grads", call.grad_source != GradSource::kPlain);
  memory.add(l.exp_avgs, "exp_avgs", true);
  memory.add(l.exp_avg_sqs, "exp_avg_sqs", true);
  memory.add(l.max_exp_avg_sqs, "max_exp_avg_sqs", true);
  memory.add(l.state_steps, "state_steps", true);
  memory.add(l.master_params, "master_params", true);
  memory.add(l.compensations, "compensations", true);
  memory.add(l.rounding_seeds, "rounding_seeds", false);
  memory.add_read(call.lr_tensor, "lr");
  memory.add_read(call.grad_factor, grad_factor_name(call));
  memory.add_read(call.found_inf, "found_inf");
  memory.check();
}

}  // namespace fused_accum
