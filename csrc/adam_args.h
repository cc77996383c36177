// The arguments of one multi-tensor Adam call, validated once for every backend.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "grad_mode.h"

namespace fused_accum {

struct AdamHyperparams {
  double lr;
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool amsgrad;
  bool maximize;
  DecayMode decay_mode;
};

struct AdamTensorLists {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList exp_avgs;
  at::TensorList exp_avg_sqs;
  at::TensorList max_exp_avg_sqs;  // empty unless amsgrad
  at::TensorList state_steps;      // 0-d float32, one per param
};

struct AdamCall {
  AdamTensorLists lists;
  AdamHyperparams hyper;
  GradMode grad_mode;
  std::optional<at::Tensor> lr_tensor;    // when set, overrides hyper.lr (read on the device)
  std::optional<at::Tensor> grad_factor;  // grad_scale (kUnscale) or multiplier (kScaleAndZero)
  std::optional<at::Tensor> found_inf;
};

// Checks lengths, devices, dtypes and shapes, naming the offending argument.
// `op` is the operator name used in messages.
void check_adam_call(const AdamCall& call, const char* op);

// check_adam_call in two parts: the lists' lengths and the scalar arguments, then
// the tensors of rows [begin, end), which check_adam_lists must have passed.
void check_adam_lists(const AdamCall& call, const char* op);
void check_adam_rows(const AdamCall& call, const char* op, size_t begin, size_t end);

}  // namespace fused_accum
