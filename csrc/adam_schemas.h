// The schemas of the four Adam step overloads, defined once: the fused_accum
// library declares them, and the fused_accum_testing library declares the same
// ones for its host run of the CUDA element functor.
#pragma once

#include <torch/library.h>

namespace fused_accum {

#define FA_ADAM_LISTS                                                                  \
  "Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "                   \
  "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps"
#define FA_ADAM_HYPER                                                                  \
  "float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "            \
  "bool maximize, bool decoupled_weight_decay"

inline void define_adam_schemas(torch::Library& m) {
  // One Adam/AdamW step over lists of tensors of one device and dtype. Each
  // state_step is incremented, then used for the bias corrections. With
  // grad_scale the grads are divided by it and written back unscaled; with a
  // non-zero found_inf nothing at all changes.
  m.def("adam_step_(" FA_ADAM_LISTS ", *, float lr, " FA_ADAM_HYPER
        ", Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def("adam_step_.tensor_lr(" FA_ADAM_LISTS ", *, Tensor lr, " FA_ADAM_HYPER
        ", Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // The end of an accumulation window: grads are accumulation buffers (float32
  // for low-precision params), read as buffer * grad_multiplier and zeroed in
  // the same pass. A non-finite multiplier or a set found_inf skips the step
  // (params, moments and steps unchanged) and still zeroes the buffers.
  m.def("adam_window_step_(" FA_ADAM_LISTS ", *, Tensor grad_multiplier, float lr, "
        FA_ADAM_HYPER ", Tensor? found_inf=None) -> ()");
  m.def("adam_window_step_.tensor_lr(" FA_ADAM_LISTS
        ", *, Tensor grad_multiplier, Tensor lr, " FA_ADAM_HYPER
        ", Tensor? found_inf=None) -> ()");
}

#undef FA_ADAM_HYPER
#undef FA_ADAM_LISTS

}  // namespace fused_accum
