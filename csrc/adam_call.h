// One multi-tensor Adam call, from the dispatcher to a backend: the schemas of
// its four overloads, its arguments, their checks, the entry points that every
// backend registers, and the dispatch of its runtime flags to compile-time ones.
// Host code only; the element math is in adam_math.h and adam_element_op.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "adam_element_op.h"
#include "dense_rows.h"

namespace fused_accum {

// ---------------------------------------------------------------- schemas

#define FA_ADAM_LISTS                                                                  \
  "Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "                   \
  "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, "  \
  "Tensor(g!)[] master_params, Tensor(h!)[] compensations, Tensor[] rounding_seeds"
#define FA_ADAM_HYPER                                                                  \
  "float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "            \
  "bool maximize, bool decoupled_weight_decay"

// Declared by the fused_accum library (ops.cpp) and, for the host run of the
// element functor, by fused_accum_testing (cpu/adam_element_op_reference.cpp).
inline void define_adam_schemas(torch::Library& m) {
  // One Adam/AdamW step over lists of tensors of one device and param dtype.
  // Each state_step is incremented, then used for the bias corrections. With
  // grad_scale the grads are divided by it and written back unscaled; with a
  // non-zero found_inf nothing at all changes. The moments may have another
  // dtype than the params (float32, bfloat16 or float16; the math is float32).
  // For bfloat16/float16 params at most one of three lists is not empty:
  // master_params (float32 masters, stepped; the params become their rounding),
  // compensations (Kahan: the value is param + compensation, both in the
  // params' dtype) or rounding_seeds (bfloat16 only: one-element int64 seeds,
  // the params are rounded stochastically, reproducibly from seed and step).
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

// -------------------------------------------------------------- arguments

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
  at::TensorList master_params;    // empty unless ParamWrite::kFromMaster
  at::TensorList compensations;    // empty unless ParamWrite::kKahan
  at::TensorList rounding_seeds;   // empty unless ParamWrite::kStochastic
};

struct AdamCall {
  AdamTensorLists lists;
  AdamHyperparams hyper;
  GradSource grad_source;
  std::optional<at::Tensor> lr_tensor;    // when set, overrides hyper.lr (read on the device)
  std::optional<at::Tensor> grad_factor;  // grad_scale (kUnscale) or multiplier (kWindowBuffer)
  std::optional<at::Tensor> found_inf;
  const char* op;                         // the operator's name, for messages

  // Which list is given says how params are written (check_adam_lists allows one).
  ParamWrite param_write() const {
    if (!lists.master_params.empty()) return ParamWrite::kFromMaster;
    if (!lists.compensations.empty()) return ParamWrite::kKahan;
    if (!lists.rounding_seeds.empty()) return ParamWrite::kStochastic;
    return ParamWrite::kInPlace;
  }
};

// ----------------------------------------------------------------- checks

// The lists' lengths and the scalar arguments.
void check_adam_lists(const AdamCall& call);
// Devices, dtypes, shapes and layouts of rows [begin, end); check_adam_lists
// must have passed. Every message names the argument and the index.
void check_adam_rows(const AdamCall& call, size_t begin, size_t end);

// That no written tensor shares memory with another argument or with itself;
// the rows must have passed check_adam_rows.
void check_adam_memory(const AdamCall& call);

// Every check, in the order a backend runs them before its first write.
inline void check_adam_call(const AdamCall& call) {
  check_adam_lists(call);
  check_adam_rows(call, 0, call.lists.params.size());
  check_adam_memory(call);
}

// ---------------------------------------------------------- entry points

using AdamBackend = void (*)(const AdamCall&);

#define FA_ADAM_LIST_PARAMS                                                              \
  at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,                  \
      at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,                         \
      at::TensorList state_steps, at::TensorList master_params,                           \
      at::TensorList compensations, at::TensorList rounding_seeds
#define FA_ADAM_HYPER_PARAMS                                                             \
  double beta1, double beta2, double weight_decay, double eps, bool amsgrad,             \
      bool maximize, bool decoupled_weight_decay

inline AdamCall make_adam_call(FA_ADAM_LIST_PARAMS, double lr, FA_ADAM_HYPER_PARAMS,
                               GradSource source, const char* op) {
  AdamCall call;
  call.lists = {params,      grads,         exp_avgs,      exp_avg_sqs,   max_exp_avg_sqs,
                state_steps, master_params, compensations, rounding_seeds};
  call.hyper = {lr, beta1, beta2, weight_decay, eps, amsgrad, maximize,
                decoupled_weight_decay ? DecayMode::kDecoupled : DecayMode::kL2};
  call.grad_source = source;
  call.op = op;
  return call;
}

#define FA_ADAM_ARGS                                                                     \
  params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params,     \
      compensations, rounding_seeds
#define FA_HYPER_ARGS                                                                    \
  beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay

template <AdamBackend BACKEND>
void adam_step(FA_ADAM_LIST_PARAMS, double lr, FA_ADAM_HYPER_PARAMS,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  AdamCall call = make_adam_call(FA_ADAM_ARGS, lr, FA_HYPER_ARGS,
                                 grad_scale ? GradSource::kUnscale : GradSource::kPlain,
                                 "fused_accum.adam_step_");
  call.grad_factor = grad_scale;
  call.found_inf = found_inf;
  BACKEND(call);
}

template <AdamBackend BACKEND>
void adam_step_tensor_lr(FA_ADAM_LIST_PARAMS, const at::Tensor& lr, FA_ADAM_HYPER_PARAMS,
                         const std::optional<at::Tensor>& grad_scale,
                         const std::optional<at::Tensor>& found_inf) {
  AdamCall call = make_adam_call(FA_ADAM_ARGS, 0.0, FA_HYPER_ARGS,
                                 grad_scale ? GradSource::kUnscale : GradSource::kPlain,
                                 "fused_accum.adam_step_");
  call.lr_tensor = lr;
  call.grad_factor = grad_scale;
  call.found_inf = found_inf;
  BACKEND(call);
}

template <AdamBackend BACKEND>
void adam_window_step(FA_ADAM_LIST_PARAMS, const at::Tensor& grad_multiplier, double lr,
                      FA_ADAM_HYPER_PARAMS, const std::optional<at::Tensor>& found_inf) {
  AdamCall call = make_adam_call(FA_ADAM_ARGS, lr, FA_HYPER_ARGS, GradSource::kWindowBuffer,
                                 "fused_accum.adam_window_step_");
  call.grad_factor = grad_multiplier;
  call.found_inf = found_inf;
  BACKEND(call);
}

template <AdamBackend BACKEND>
void adam_window_step_tensor_lr(FA_ADAM_LIST_PARAMS, const at::Tensor& grad_multiplier,
                                const at::Tensor& lr, FA_ADAM_HYPER_PARAMS,
                                const std::optional<at::Tensor>& found_inf) {
  AdamCall call = make_adam_call(FA_ADAM_ARGS, 0.0, FA_HYPER_ARGS, GradSource::kWindowBuffer,
                                 "fused_accum.adam_window_step_");
  call.lr_tensor = lr;
  call.grad_factor = grad_multiplier;
  call.found_inf = found_inf;
  BACKEND(call);
}

#undef FA_HYPER_ARGS
#undef FA_ADAM_ARGS
#undef FA_ADAM_HYPER_PARAMS
#undef FA_ADAM_LIST_PARAMS

// Each backend registers its kernel with this, in its own TORCH_LIBRARY_IMPL.
template <AdamBackend BACKEND>
void register_adam_impls(torch::Library& m) {
  m.impl("adam_step_", &adam_step<BACKEND>);
  m.impl("adam_step_.tensor_lr", &adam_step_tensor_lr<BACKEND>);
  m.impl("adam_window_step_", &adam_window_step<BACKEND>);
  m.impl("adam_window_step_.tensor_lr", &adam_window_step_tensor_lr<BACKEND>);
}

// ------------------------------------------------------- rows and dispatch

// The lists of a row, in the order adam_dense_rows stages them: the first four
// always, the optional ones after them when present (-1: absent).
enum AdamRow { kParams = 0, kGrads, kExpAvgs, kExpAvgSqs };
struct AdamOptionalRows {
  int max_exp_avg_sq = -1;
  int master = -1;
  int compensation = -1;
};

// Row i: params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], then max_exp_avg_sqs[i],
// master_params[i] or compensations[i] where given, dense or staged. Grads are
// written only when the step rewrites them.
inline DenseRows adam_dense_rows(const AdamCall& call, AdamOptionalRows* optional) {
  const AdamTensorLists& l = call.lists;
  std::vector<at::TensorList> lists = {l.params, l.grads, l.exp_avgs, l.exp_avg_sqs};
  std::vector<bool> mutated = {true, call.grad_source != GradSource::kPlain, true, true};
  const auto add = [&](at::TensorList list, int* index) {
    if (list.empty()) return;
    *index = static_cast<int>(lists.size());
    lists.push_back(list);
    mutated.push_back(true);
  };
  if (call.hyper.amsgrad) add(l.max_exp_avg_sqs, &optional->max_exp_avg_sq);
  add(l.master_params, &optional->master);
  add(l.compensations, &optional->compensation);
  return DenseRows(lists, mutated);
}

// Calls fn(P{}, G{}) with the param and grad storage types of a checked call:
// G is P, or float for the float32 accumulation buffers of other params.
template <typename Fn>
void dispatch_adam_storage(const AdamCall& call, const Fn& fn) {
  const at::ScalarType grad_dtype = call.lists.grads[0].scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, call.lists.params[0].scalar_type(),
                                  "fused_accum_adam", [&] {
    if (grad_dtype == at::kFloat && !std::is_same_v<scalar_t, float>) {
      fn(scalar_t{}, float{});
    } else {
      fn(scalar_t{}, scalar_t{});
    }
  });
}

// Calls fn(S{}) with the moments' storage type of a checked call whose params
// are of type P: P itself, or the state dtype chosen (float32, bfloat16, float16).
template <typename P, typename Fn>
void dispatch_state_storage(const AdamCall& call, const Fn& fn) {
  const at::ScalarType state = call.lists.exp_avgs[0].scalar_type();
  if (state == c10::CppTypeToScalarType<P>::value) {
    fn(P{});
  } else if constexpr (!std::is_same_v<P, double>) {
    switch (state) {
      case at::kFloat:
        return fn(float{});
      case at::kBFloat16:
        return fn(c10::BFloat16{});
      case at::kHalf:
        return fn(c10::Half{});
      default:
        TORCH_CHECK(false, call.op, ": unexpected moment dtype ", state);
    }
  } else {
    TORCH_CHECK(false, call.op, ": float64 params keep float64 moments, got ", state);
  }
}

// Calls fn(mode, amsgrad, maximize, grad_source), each an std::integral_constant
// (dispatch_step_flags in adam_element_op.h).
template <typename Fn>
void dispatch_adam_flags(const AdamCall& call, const Fn& fn) {
  dispatch_step_flags(call.hyper.decay_mode, call.hyper.amsgrad, call.hyper.maximize,
                      call.grad_source, fn);
}

}  // namespace fused_accum
