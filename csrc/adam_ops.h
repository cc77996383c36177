// Operator entry points of the Adam step: they turn the dispatcher's arguments
// into an AdamCall and hand it to a backend. One set serves CPU and CUDA.
#pragma once

#include <torch/library.h>

#include "adam_args.h"

namespace fused_accum {

using AdamBackend = void (*)(const AdamCall&, const char*);

inline AdamCall make_adam_call(at::TensorList params, at::TensorList grads,
                               at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                               at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                               double lr, double beta1, double beta2, double weight_decay,
                               double eps, bool amsgrad, bool maximize, bool decoupled,
                               GradMode grad_mode) {
  AdamCall call;
  call.lists = {params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps};
  call.hyper = {lr, beta1, beta2, weight_decay, eps, amsgrad, maximize,
                decoupled ? DecayMode::kDecoupled : DecayMode::kL2};
  call.grad_mode = grad_mode;
  return call;
}

#define FA_ADAM_LIST_PARAMS                                                              \
  at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,                  \
      at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,                         \
      at::TensorList state_steps
#define FA_ADAM_HYPER_PARAMS                                                             \
  double beta1, double beta2, double weight_decay, double eps, bool amsgrad,             \
      bool maximize, bool decoupled_weight_decay
#define FA_ADAM_CALL(LR, GRAD_MODE)                                                      \
  make_adam_call(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, LR, \
                 beta1, beta2, weight_decay, eps, amsgrad, maximize,                     \
                 decoupled_weight_decay, GRAD_MODE)

template <AdamBackend BACKEND>
void adam_step(FA_ADAM_LIST_PARAMS, double lr, FA_ADAM_HYPER_PARAMS,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  AdamCall call = FA_ADAM_CALL(lr, grad_scale ? GradMode::kUnscale : GradMode::kPlain);
  call.grad_factor = grad_scale;
  call.found_inf = found_inf;
  BACKEND(call, "fused_accum.adam_step_");
}

template <AdamBackend BACKEND>
void adam_step_tensor_lr(FA_ADAM_LIST_PARAMS, const at::Tensor& lr, FA_ADAM_HYPER_PARAMS,
                         const std::optional<at::Tensor>& grad_scale,
                         const std::optional<at::Tensor>& found_inf) {
  AdamCall call = FA_ADAM_CALL(0.0, grad_scale ? GradMode::kUnscale : GradMode::kPlain);
  call.lr_tensor = lr;
  call.grad_factor = grad_scale;
  call.found_inf = found_inf;
  BACKEND(call, "fused_accum.adam_step_");
}

template <AdamBackend BACKEND>
void adam_window_step(FA_ADAM_LIST_PARAMS, const at::Tensor& grad_multiplier, double lr,
                      FA_ADAM_HYPER_PARAMS, const std::optional<at::Tensor>& found_inf) {
  AdamCall call = FA_ADAM_CALL(lr, GradMode::kScaleAndZero);
  call.grad_factor = grad_multiplier;
  call.found_inf = found_inf;
  BACKEND(call, "fused_accum.adam_window_step_");
}

template <AdamBackend BACKEND>
void adam_window_step_tensor_lr(FA_ADAM_LIST_PARAMS, const at::Tensor& grad_multiplier,
                                const at::Tensor& lr, FA_ADAM_HYPER_PARAMS,
                                const std::optional<at::Tensor>& found_inf) {
  AdamCall call = FA_ADAM_CALL(0.0, GradMode::kScaleAndZero);
  call.lr_tensor = lr;
  call.grad_factor = grad_multiplier;
  call.found_inf = found_inf;
  BACKEND(call, "fused_accum.adam_window_step_");
}

#undef FA_ADAM_CALL
#undef FA_ADAM_HYPER_PARAMS
#undef FA_ADAM_LIST_PARAMS

template <AdamBackend BACKEND>
void register_adam_impls(torch::Library& m) {
  m.impl("adam_step_", &adam_step<BACKEND>);
  m.impl("adam_step_.tensor_lr", &adam_step_tensor_lr<BACKEND>);
  m.impl("adam_window_step_", &adam_window_step<BACKEND>);
  m.impl("adam_window_step_.tensor_lr", &adam_window_step_tensor_lr<BACKEND>);
}

}  // namespace fused_accum
