// The eager step of one param group: ParamGroupPlan, kept by the optimizer
// between steps.
//
// With thousands of small params, Python work per param is most of a step: on
// a 2-core EPYC, `p.grad` and `optimizer.state[p]` each cost about 0.2 us a param
// (Tensor.__hash__ is a Python method), more than the step's own work on a 1024-
// element param. So the plan keeps, from one step to the next, what does not
// change: each param's tensor and its state dict. A step then reads each param's
// grad in C++ and each state tensor from the dict it already holds, and calls the
// operators through the dispatcher with lists that borrow those tensors. Only
// public Python and torch APIs are used.
//
// The plan is valid as long as the group's params and the optimizer's state map
// are those it was built from; fused_accum/optim.py checks both before every
// step (the state map counts its changes) and rebuilds it otherwise. The state
// dicts themselves are read afresh on every step, so a replaced state tensor is
// never stepped stale. The plan holds the GIL throughout: no other thread can
// unset a grad or a state tensor while the lists borrow them.
//
// optim.py keeps the same grouping in Python for torch.compile, which traces
// Python; tests/test_param_group_step.py holds the two to the same results bit
// for bit.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/view_as_real.h>
#include <c10/util/MaybeOwned.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include "adam_call.h"

#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace fused_accum {
namespace {

using TensorList = at::TensorList;
using OptionalTensor = std::optional<at::Tensor>;

// A tensor list for an operator call that takes no reference counts: copying an
// at::Tensor that Python also holds makes its TensorImpl take a reference on the
// Python object, which with thousands of params costs more than the step's
// arithmetic. The plan keeps every borrowed tensor alive while the list is used.
class BorrowedTensorList {
 public:
  BorrowedTensorList() = default;
  BorrowedTensorList(BorrowedTensorList&&) = default;
  BorrowedTensorList& operator=(BorrowedTensorList&&) = delete;
  BorrowedTensorList(const BorrowedTensorList&) = delete;
  BorrowedTensorList& operator=(const BorrowedTensorList&) = delete;
  ~BorrowedTensorList() {
    for (at::Tensor& t : tensors_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  }

  void push_back(const at::Tensor& t) {
    tensors_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(t));
  }
  operator TensorList() const { return tensors_; }

 private:
  std::vector<at::Tensor> tensors_;
};

// The operator lists of one (device, dtype).
struct TensorGroup {
  at::Device device;
  at::ScalarType dtype;
  BorrowedTensorList params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
  // What the group's low-precision option keeps (master_params, compensations or
  // rounding_seeds): filled for bfloat16 and float16 params only.
  BorrowedTensorList write_states;
};

TensorGroup& group_for(std::vector<TensorGroup>& groups, const at::Tensor& param) {
  for (TensorGroup& g : groups) {
    if (g.device == param.device() && g.dtype == param.scalar_type()) return g;
  }
  groups.push_back(TensorGroup{param.device(), param.scalar_type(), {}, {}, {}, {}, {}, {}, {}});
  return groups.back();
}

// The message names `what`, or what[i] for a list member; built only on failure.
constexpr size_t kNotInAList = static_cast<size_t>(-1);

const at::Tensor& unpack_tensor(PyObject* obj, const char* what, size_t i = kNotInAList) {
  if (!THPVariable_Check(obj)) {
    const std::string index = i == kNotInAList ? "" : "[" + std::to_string(i) + "]";
    throw py::type_error(what + index + " must be a Tensor, got " + Py_TYPE(obj)->tp_name);
  }
  return THPVariable_Unpack(obj);
}

// Interned, as the string literals that torch.optim and _init_state store under
// are: a dict lookup then matches the key by identity, without comparing text.
py::str interned(const char* text) {
  return py::reinterpret_steal<py::str>(PyUnicode_InternFromString(text));
}

struct StateKeys {
  py::str exp_avg = interned("exp_avg"), exp_avg_sq = interned("exp_avg_sq"),
          max_exp_avg_sq = interned("max_exp_avg_sq"), step = interned("step");
};

// The values a step needs from a param's state dict (borrowed references).
struct StateTensors {
  PyObject* step = nullptr;
  PyObject* exp_avg = nullptr;
  PyObject* exp_avg_sq = nullptr;
  PyObject* max_exp_avg_sq = nullptr;  // with amsgrad
  PyObject* write_state = nullptr;     // with a write key
};

// Looks the values up, each once; false when one is missing, as before a param's
// first step or after its group switched on amsgrad or a low-precision option.
bool find_state_tensors(PyObject* state, const StateKeys& keys, bool amsgrad,
                        PyObject* write_key, StateTensors* found) {
  const auto get = [&](PyObject* key) {
    PyObject* value = PyDict_GetItemWithError(state, key);
    if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
    return value;
  };
  found->step = get(keys.step.ptr());
  found->exp_avg = get(keys.exp_avg.ptr());
  found->exp_avg_sq = get(keys.exp_avg_sq.ptr());
  found->max_exp_avg_sq = amsgrad ? get(keys.max_exp_avg_sq.ptr()) : nullptr;
  found->write_state = write_key != nullptr ? get(write_key) : nullptr;
  return found->step && found->exp_avg && found->exp_avg_sq &&
         (!amsgrad || found->max_exp_avg_sq) && (write_key == nullptr || found->write_state);
}

// A state value as a tensor; `key` names it in the message.
const at::Tensor& as_state_tensor(PyObject* value, PyObject* key, size_t i) {
  if (THPVariable_Check(value)) return THPVariable_Unpack(value);
  throw py::type_error("optimizer state of params[" + std::to_string(i) + "]['" +
                       py::str(key).cast<std::string>() + "'] must be a Tensor, got " +
                       Py_TYPE(value)->tp_name);
}

// A float or a tensor (moved to the group's device), as the operators take it.
struct LearningRate {
  double value = 0.0;
  OptionalTensor tensor;
};

LearningRate learning_rate(const py::object& lr) {
  LearningRate out;
  if (THPVariable_Check(lr.ptr())) {
    out.tensor = THPVariable_Unpack(lr.ptr());
  } else {
    out.value = lr.cast<double>();
  }
  return out;
}

OptionalTensor optional_tensor(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return unpack_tensor(obj.ptr(), name);
}

OptionalTensor on_device(const OptionalTensor& t, const at::Device& device) {
  if (!t || t->device() == device) return t;
  return t->to(device);
}

#define FA_ADAM_LIST_TYPES                                                             \
  TensorList, TensorList, TensorList, TensorList, TensorList, TensorList, TensorList, \
      TensorList, TensorList
#define FA_ADAM_HYPER_TYPES double, double, double, double, bool, bool, bool

using StepFloatLr = void(FA_ADAM_LIST_TYPES, double, FA_ADAM_HYPER_TYPES,
                         const OptionalTensor&, const OptionalTensor&);
using StepTensorLr = void(FA_ADAM_LIST_TYPES, const at::Tensor&, FA_ADAM_HYPER_TYPES,
                          const OptionalTensor&, const OptionalTensor&);
using WindowFloatLr = void(FA_ADAM_LIST_TYPES, const at::Tensor&, double,
                           FA_ADAM_HYPER_TYPES, const OptionalTensor&);
using WindowTensorLr = void(FA_ADAM_LIST_TYPES, const at::Tensor&, const at::Tensor&,
                            FA_ADAM_HYPER_TYPES, const OptionalTensor&);

#undef FA_ADAM_HYPER_TYPES
#undef FA_ADAM_LIST_TYPES

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_operator(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Signature>();
}

struct Hyper {
  double beta1, beta2, weight_decay, eps;
  bool amsgrad, maximize, decoupled;
};

// The arguments of one group's operator call, beyond the group's own lists.
struct GroupCall {
  TensorList masters, compensations, seeds;
  OptionalTensor lr_tensor, factor, inf;
};

GroupCall group_call(const TensorGroup& g, const LearningRate& lr, ParamWrite write,
                     const OptionalTensor& grad_factor, const OptionalTensor& found_inf) {
  GroupCall c;
  const bool writes = !TensorList(g.write_states).empty();
  if (writes && write == ParamWrite::kFromMaster) c.masters = g.write_states;
  if (writes && write == ParamWrite::kKahan) c.compensations = g.write_states;
  if (writes && write == ParamWrite::kStochastic) c.seeds = g.write_states;
  c.lr_tensor = on_device(lr.tensor, g.device);
  c.factor = on_device(grad_factor, g.device);
  c.inf = on_device(found_inf, g.device);
  return c;
}

#define FA_LISTS                                                                          \
  g.params, g.grads, g.exp_avgs, g.exp_avg_sqs, g.max_exp_avg_sqs, g.steps, c.masters,   \
      c.compensations, c.seeds
#define FA_HYPER h.beta1, h.beta2, h.weight_decay, h.eps, h.amsgrad, h.maximize, h.decoupled

// The checks the group's operator runs before it writes (adam_call.h): run for
// every group before the first operator call, so a step refused for one group
// changes no other.
void check_group(const TensorGroup& g, const GroupCall& c, const LearningRate& lr,
                 const Hyper& h, bool window) {
  const GradSource source = window      ? GradSource::kWindowBuffer
                            : c.factor ? GradSource::kUnscale
                                       : GradSource::kPlain;
  AdamCall call = make_adam_call(FA_LISTS, lr.value, FA_HYPER, source,
                                 window ? "fused_accum.adam_window_step_"
                                        : "fused_accum.adam_step_");
  call.lr_tensor = c.lr_tensor;
  call.grad_factor = c.factor;
  call.found_inf = c.inf;
  check_adam_call(call);
}

void call_operator(const TensorGroup& g, const GroupCall& c, const LearningRate& lr,
                   const Hyper& h, bool window) {
  static const auto step_float = find_operator<StepFloatLr>("fused_accum::adam_step_", "");
  static const auto step_tensor =
      find_operator<StepTensorLr>("fused_accum::adam_step_", "tensor_lr");
  static const auto window_float =
      find_operator<WindowFloatLr>("fused_accum::adam_window_step_", "");
  static const auto window_tensor =
      find_operator<WindowTensorLr>("fused_accum::adam_window_step_", "tensor_lr");
  if (window) {
    if (c.lr_tensor) {
      window_tensor.call(FA_LISTS, *c.factor, *c.lr_tensor, FA_HYPER, c.inf);
    } else {
      window_float.call(FA_LISTS, *c.factor, lr.value, FA_HYPER, c.inf);
    }
  } else if (c.lr_tensor) {
    step_tensor.call(FA_LISTS, *c.lr_tensor, FA_HYPER, c.factor, c.inf);
  } else {
    step_float.call(FA_LISTS, lr.value, FA_HYPER, c.factor, c.inf);
  }
}

#undef FA_HYPER
#undef FA_LISTS

class ParamGroupPlan {
 public:
  // `params` is a group's "params" list; `states[i]` the state dict of params[i]
  // in `state_map` (the optimizer's state), or None where it has none yet;
  // init_state(param) creates or completes a param's state and returns it.
  ParamGroupPlan(const py::list& params, const py::list& states, py::object state_map,
                 py::object init_state)
      : state_map_(std::move(state_map)), init_state_(std::move(init_state)) {
    const size_t n = params.size();
    if (states.size() != n) {
      throw py::value_error("states must hold one entry per param: " + std::to_string(n) +
                            " params, " + std::to_string(states.size()) + " states");
    }
    param_objects_.reserve(n);
    param_tensors_.reserve(n);
    states_.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      param_objects_.push_back(params[i]);
      param_tensors_.push_back(unpack_tensor(params[i].ptr(), "params", i));
      states_.push_back(states[i]);
    }
  }

  // Whether `params` holds the params the plan was built from, in the same order.
  bool matches(const py::list& params) const {
    if (params.size() != param_objects_.size()) return false;
    for (size_t i = 0; i < param_objects_.size(); ++i) {
      if (PyList_GET_ITEM(params.ptr(), i) != param_objects_[i].ptr()) return false;
    }
    return true;
  }

  // Steps every param with a gradient: adam_step_ (window=false; grad_factor is
  // GradScaler's scale) or adam_window_step_ (window=true; grad_factor is the
  // window multiplier). `grads` is None (each param's .grad) or a list aligned
  // with the params, None entries skipped.
  // write_key names the state tensor that bfloat16 and float16 params are written
  // through (None: written in place), param_write its ParamWrite value.
  void step(const py::object& grads, bool window, const py::object& lr, double beta1,
            double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
            bool decoupled_weight_decay, const py::object& write_key, int param_write,
            const py::object& grad_factor, const py::object& found_inf) {
    HANDLE_TH_ERRORS
    const Hyper hyper{beta1, beta2, weight_decay, eps, amsgrad, maximize,
                      decoupled_weight_decay};
    const LearningRate rate = learning_rate(lr);
    const OptionalTensor factor = optional_tensor(grad_factor, "grad_factor");
    const OptionalTensor inf = optional_tensor(found_inf, "found_inf");
    if (window && !factor) {
      throw py::value_error("a window step needs grad_factor (the multiplier)");
    }
    if (at::GradMode::is_enabled()) {
      throw std::runtime_error("ParamGroupPlan.step must run under torch.no_grad()");
    }
    // Views made for complex params; a deque, so adding one moves none of the others.
    if (param_write < 0 || param_write > static_cast<int>(ParamWrite::kStochastic) ||
        write_key.is_none() != (param_write == 0)) {
      throw py::value_error("param_write must be 0 without a write_key, or 1-3 with one");
    }
    const ParamWrite write = static_cast<ParamWrite>(param_write);
    std::deque<at::Tensor> views;
    const std::vector<TensorGroup> groups =
        group(grads, amsgrad, write_key.is_none() ? nullptr : write_key.ptr(), views);
    // Under no_grad the autograd and ADInplaceOrView kernels of these operators
    // are boxed fallbacks that only pass the call on; like torch's fused step,
    // this one bumps no version counters.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::vector<GroupCall> calls;
    calls.reserve(groups.size());
    for (const TensorGroup& g : groups) calls.push_back(group_call(g, rate, write, factor, inf));
    // The first group's operator checks its own call before writing; the others
    // are checked here, before it runs.
    for (size_t k = 1; k < groups.size(); ++k) {
      check_group(groups[k], calls[k], rate, hyper, window);
    }
    for (size_t k = 0; k < groups.size(); ++k) {
      call_operator(groups[k], calls[k], rate, hyper, window);
    }
    END_HANDLE_TH_ERRORS_PYBIND
  }

 private:
  std::vector<TensorGroup> group(const py::object& grads, bool amsgrad, PyObject* write_key,
                                 std::deque<at::Tensor>& views) {
    // Never destroyed: Python objects must not be released after the interpreter ends.
    static const StateKeys& keys = *new StateKeys();
    const size_t n = param_tensors_.size();
    const bool own_grads = grads.is_none();
    if (!own_grads && !PyList_Check(grads.ptr())) {
      throw py::type_error(std::string("grads must be None or a list, got ") +
                           Py_TYPE(grads.ptr())->tp_name);
    }
    if (!own_grads && static_cast<size_t>(PyList_GET_SIZE(grads.ptr())) != n) {
      throw py::value_error("grads must hold one entry per param: " + std::to_string(n) +
                            " params, " + std::to_string(PyList_GET_SIZE(grads.ptr())) +
                            " grads");
    }
    // Once init_state has run, Python code may have changed any param's state:
    // the params after it are looked up in the state map again.
    bool python_ran = false;
    std::vector<TensorGroup> groups;
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor* param = &param_tensors_[i];
      const at::Tensor* grad = nullptr;
      if (own_grads) {
        grad = &param->grad();
      } else {
        PyObject* grad_obj = PyList_GET_ITEM(grads.ptr(), i);
        if (grad_obj != Py_None) grad = &unpack_tensor(grad_obj, "grads", i);
      }
      if (grad == nullptr || !grad->defined()) continue;  // torch skips a param without a grad
      if (grad->is_sparse()) {
        throw std::runtime_error(
            "Adam does not support sparse gradients, please consider SparseAdam instead");
      }
      if (python_ran) {
        PyObject* found = PyObject_GetItem(state_map_.ptr(), param_objects_[i].ptr());
        if (found == nullptr) throw py::error_already_set();
        states_[i] = py::reinterpret_steal<py::object>(found);
      }
      PyObject* state = states_[i].ptr();
      if (state != Py_None && !PyDict_Check(state)) {
        throw py::type_error("optimizer state of params[" + std::to_string(i) +
                             "] must be a dict, got " + Py_TYPE(state)->tp_name);
      }
      const bool narrow = param->scalar_type() == at::kBFloat16 ||
                          param->scalar_type() == at::kHalf;
      StateTensors found;
      if (state == Py_None ||
          !find_state_tensors(state, keys, amsgrad, narrow ? write_key : nullptr, &found)) {
        states_[i] = init_state_(param_objects_[i]);
        state = states_[i].ptr();
        python_ran = true;
        if (!PyDict_Check(state)) {
          throw py::type_error("init_state must return a dict, got " +
                               std::string(Py_TYPE(state)->tp_name));
        }
        if (!find_state_tensors(state, keys, amsgrad, narrow ? write_key : nullptr, &found)) {
          throw py::key_error("init_state left the optimizer state of params[" +
                              std::to_string(i) + "] incomplete");
        }
      }
      const at::Tensor* exp_avg = &as_state_tensor(found.exp_avg, keys.exp_avg.ptr(), i);
      const at::Tensor* exp_avg_sq = &as_state_tensor(found.exp_avg_sq, keys.exp_avg_sq.ptr(), i);
      const at::Tensor* max_exp_avg_sq =
          amsgrad ? &as_state_tensor(found.max_exp_avg_sq, keys.max_exp_avg_sq.ptr(), i) : nullptr;
      const at::Tensor& step = as_state_tensor(found.step, keys.step.ptr(), i);
      const at::Tensor* write_state =
          found.write_state != nullptr ? &as_state_tensor(found.write_state, write_key, i)
                                       : nullptr;
      if (param->is_complex()) {
        // torch steps complex params as pairs of reals; so do the kernels.
        const auto as_real = [&](const at::Tensor* t) {
          views.push_back(at::view_as_real(*t));
          return &views.back();
        };
        param = as_real(param);
        grad = as_real(grad);
        exp_avg = as_real(exp_avg);
        exp_avg_sq = as_real(exp_avg_sq);
        if (amsgrad) max_exp_avg_sq = as_real(max_exp_avg_sq);
      }
      TensorGroup& g = group_for(groups, *param);
      g.params.push_back(*param);
      g.grads.push_back(*grad);
      g.exp_avgs.push_back(*exp_avg);
      g.exp_avg_sqs.push_back(*exp_avg_sq);
      if (amsgrad) g.max_exp_avg_sqs.push_back(*max_exp_avg_sq);
      g.steps.push_back(step);
      if (write_state != nullptr) g.write_states.push_back(*write_state);
    }
    return groups;
  }

  std::vector<py::object> param_objects_;
  std::vector<at::Tensor> param_tensors_;
  std::vector<py::object> states_;  // a dict, or None until the param is first stepped
  py::object state_map_;
  py::object init_state_;
};

}  // namespace

void define_param_group_plan(py::module_& m) {
  py::class_<ParamGroupPlan>(m, "ParamGroupPlan",
                             "What the eager step of one param group keeps between steps: "
                             "its params and their state dicts.")
      .def(py::init<const py::list&, const py::list&, py::object, py::object>(),
           py::arg("params"), py::arg("states"), py::arg("state_map"), py::arg("init_state"))
      .def("matches", &ParamGroupPlan::matches, py::arg("params"),
           "Whether `params` holds the plan's params, in the same order.")
      .def("step", &ParamGroupPlan::step, py::arg("grads"), py::kw_only(), py::arg("window"),
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"),
           py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"),
           py::arg("decoupled_weight_decay"), py::arg("write_key"), py::arg("param_write"),
           py::arg("grad_factor"), py::arg("found_inf"),
           "Steps the params with a gradient, grouped by (device, dtype), through "
           "fused_accum::adam_step_ or (window=True) adam_window_step_.");
}

}  // namespace fused_accum
