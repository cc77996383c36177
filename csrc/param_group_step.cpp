// The eager step of one param group, grouped in C++.
//
// Sorting a group's params into per-(device, dtype) tensor lists costs a Python
// loop of about a microsecond per param, and handing six Python lists to an
// operator costs as much again; with thousands of small params that is most of
// a step. Here the lists are built from the Python objects directly and the
// operators are called through the dispatcher with C++ lists, so a param costs
// a few dictionary lookups. The lists borrow their tensors
// (borrowed_tensor_list.h) and the state is found without a Python call
// (param_state_lookup.cpp). Nothing is cached: every step reads the group, the
// grads and the optimizer state afresh, so a replaced state tensor, a loaded
// checkpoint or a changed param set can never be stepped stale.
//
// fused_accum/optim.py keeps the same grouping in Python for torch.compile,
// which traces Python; tests/test_param_group_step.py holds the two to the same
// results bit for bit.
#include "param_group_step.h"

#include "borrowed_tensor_list.h"
#include "param_metadata_prefetch.h"
#include "param_state_lookup.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/view_as_real.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace fused_accum {
namespace {

using TensorList = at::TensorList;
using OptionalTensor = std::optional<at::Tensor>;

// The operator lists of one (device, dtype).
struct TensorGroup {
  at::Device device;
  at::ScalarType dtype;
  BorrowedTensorList params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
};

// What keeps borrowed tensors alive: Python references (cheap, under the GIL)
// for tensors that have a Python object, owned tensors for those made in C++
// (views) or reached through C++ (a param's grad, which another thread could
// unset while the GIL is released). Destroy it with the GIL held.
struct KeepAlive {
  std::vector<pybind11::object> objects;
  std::deque<at::Tensor> tensors;  // a deque: adding one moves none of the others

  // Releasing writes a reference count in every object held, and by then the
  // step has streamed its data through the caches and pushed those lines out:
  // asking for all of them first keeps the releases from waiting on one miss
  // after another. Measured alternately on 2000 params of 1024 elements: the
  // step 2-7% faster (1.01-1.16 ms to 0.95-1.08). Reads no object: safe without the GIL.
  void prefetch_for_release() const {
    for (const pybind11::object& o : objects) {
      __builtin_prefetch(o.ptr(), /*rw=*/1, /*locality=*/3);
    }
    for (const at::Tensor& t : tensors) {
      __builtin_prefetch(t.unsafeGetTensorImpl(), /*rw=*/1, /*locality=*/3);
    }
  }
};

// Every group of one call, and what keeps their tensors alive.
struct GroupedParams {
  std::vector<TensorGroup> groups;
  KeepAlive keep_alive;
};

constexpr Py_ssize_t kNotInAList = -1;

// The message names `what`, or what[i] for a list member; built only on failure.
// The tensor lives as long as obj does.
const at::Tensor& unpack_tensor(PyObject* obj, const char* what, Py_ssize_t i) {
  if (!THPVariable_Check(obj)) {
    const std::string index = i == kNotInAList ? "" : "[" + std::to_string(i) + "]";
    throw py::type_error(what + index + " must be a Tensor, got " + Py_TYPE(obj)->tp_name);
  }
  return THPVariable_Unpack(obj);
}

// state[key] as a tensor; the state of a param is a dict, as torch.optim keeps it.
// The value is held in `keep_alive`: the dict could change while the GIL is released.
const at::Tensor& state_tensor(PyObject* state, PyObject* key, Py_ssize_t i,
                               KeepAlive& keep_alive) {
  PyObject* value = PyDict_GetItemWithError(state, key);  // borrowed
  if (value == nullptr) {
    if (PyErr_Occurred()) throw py::error_already_set();
    throw py::key_error("optimizer state of params[" + std::to_string(i) + "] has no '" +
                        py::str(key).cast<std::string>() + "'");
  }
  if (!THPVariable_Check(value)) {
    throw py::type_error("optimizer state of params[" + std::to_string(i) + "]['" +
                         py::str(key).cast<std::string>() + "'] must be a Tensor, got " +
                         Py_TYPE(value)->tp_name);
  }
  keep_alive.objects.push_back(py::reinterpret_borrow<py::object>(value));
  return THPVariable_Unpack(value);
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

TensorGroup& group_for(std::vector<TensorGroup>& groups, const at::Tensor& param) {
  for (TensorGroup& g : groups) {
    if (g.device == param.device() && g.dtype == param.scalar_type()) return g;
  }
  groups.push_back(TensorGroup{param.device(), param.scalar_type(), {}, {}, {}, {}, {}, {}});
  return groups.back();
}

// A tensor made or reached in C++ (a grad, a view) is owned by `keep_alive`.
const at::Tensor& owned(at::Tensor t, KeepAlive& keep_alive) {
  keep_alive.tensors.push_back(std::move(t));
  return keep_alive.tensors.back();
}

GroupedParams group_params(const py::list& params, const py::object& grads,
                           const py::object& state_map, const py::object& init_state,
                           bool amsgrad) {
  // Never destroyed: Python objects must not be released after the interpreter ends.
  static const StateKeys& keys = *new StateKeys();
  const Py_ssize_t n = PyList_GET_SIZE(params.ptr());
  const bool own_grads = grads.is_none();
  if (!own_grads && !PyList_Check(grads.ptr())) {
    throw py::type_error(std::string("grads must be None or a list, got ") +
                         Py_TYPE(grads.ptr())->tp_name);
  }
  if (!own_grads && PyList_GET_SIZE(grads.ptr()) != n) {
    throw py::value_error("grads must hold one entry per param: " + std::to_string(n) +
                          " params, " + std::to_string(PyList_GET_SIZE(grads.ptr())) +
                          " grads");
  }
  const Py_ssize_t full_state = amsgrad ? 4 : 3;
  // Borrowed, and valid while no Python code has run: init_state, or a lookup
  // that missed (a defaultdict's factory), could change the state map.
  const std::vector<PyObject*> prefetched_states =
      prefetch_param_metadata(params.ptr(), own_grads ? nullptr : grads.ptr(), state_map.ptr());
  bool python_ran = false;
  GroupedParams out;
  KeepAlive& keep_alive = out.keep_alive;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* param_obj = PyList_GET_ITEM(params.ptr(), i);
    const at::Tensor* param = &unpack_tensor(param_obj, "params", i);
    const at::Tensor* grad = nullptr;
    if (own_grads) {
      if (param->grad().defined()) grad = &owned(param->grad(), keep_alive);
    } else {
      PyObject* grad_obj = PyList_GET_ITEM(grads.ptr(), i);
      if (grad_obj != Py_None) {
        grad = &unpack_tensor(grad_obj, "grads", i);
        keep_alive.objects.push_back(py::reinterpret_borrow<py::object>(grad_obj));
      }
    }
    if (grad == nullptr) continue;  // torch skips a param without a grad
    if (grad->is_sparse()) {
      throw std::runtime_error(
          "Adam does not support sparse gradients, please consider SparseAdam instead");
    }
    // self.state is a defaultdict: indexing creates the param's empty state.
    keep_alive.objects.push_back(py::reinterpret_borrow<py::object>(param_obj));
    PyObject* prefetched = python_ran ? nullptr : prefetched_states[i];
    python_ran = python_ran || prefetched == nullptr;
    const auto state =
        prefetched != nullptr
            ? py::reinterpret_borrow<py::object>(prefetched)
            : py::reinterpret_steal<py::object>(param_state(state_map.ptr(), param_obj));
    if (!state) throw py::error_already_set();
    if (!PyDict_Check(state.ptr())) {
      throw py::type_error("optimizer state of params[" + std::to_string(i) +
                           "] must be a dict, got " + Py_TYPE(state.ptr())->tp_name);
    }
    if (PyDict_GET_SIZE(state.ptr()) < full_state) {
      python_ran = true;
      init_state(py::handle(param_obj), state, amsgrad);
    }
    const at::Tensor* exp_avg = &state_tensor(state.ptr(), keys.exp_avg.ptr(), i, keep_alive);
    const at::Tensor* exp_avg_sq =
        &state_tensor(state.ptr(), keys.exp_avg_sq.ptr(), i, keep_alive);
    const at::Tensor* max_exp_avg_sq =
        amsgrad ? &state_tensor(state.ptr(), keys.max_exp_avg_sq.ptr(), i, keep_alive)
                : nullptr;
    const at::Tensor& step = state_tensor(state.ptr(), keys.step.ptr(), i, keep_alive);
    if (param->is_complex()) {
      // torch steps complex params as pairs of reals; so do the kernels.
      param = &owned(at::view_as_real(*param), keep_alive);
      grad = &owned(at::view_as_real(*grad), keep_alive);
      exp_avg = &owned(at::view_as_real(*exp_avg), keep_alive);
      exp_avg_sq = &owned(at::view_as_real(*exp_avg_sq), keep_alive);
      if (amsgrad) max_exp_avg_sq = &owned(at::view_as_real(*max_exp_avg_sq), keep_alive);
    }
    TensorGroup& group = group_for(out.groups, *param);
    group.params.push_back(*param);
    group.grads.push_back(*grad);
    group.exp_avgs.push_back(*exp_avg);
    group.exp_avg_sqs.push_back(*exp_avg_sq);
    if (amsgrad) group.max_exp_avg_sqs.push_back(*max_exp_avg_sq);
    group.steps.push_back(step);
  }
  return out;
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
  return unpack_tensor(obj.ptr(), name, kNotInAList);
}

OptionalTensor on_device(const OptionalTensor& t, const at::Device& device) {
  if (!t || t->device() == device) return t;
  return t->to(device);
}

#define FA_ADAM_LIST_TYPES \
  TensorList, TensorList, TensorList, TensorList, TensorList, TensorList
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
c10::TypedOperatorHandle<Signature> adam_operator(const char* overload) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("fused_accum::adam_step_", overload)
      .typed<Signature>();
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> window_operator(const char* overload) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("fused_accum::adam_window_step_", overload)
      .typed<Signature>();
}

struct Hyper {
  double beta1, beta2, weight_decay, eps;
  bool amsgrad, maximize, decoupled;
};

void call_operator(const TensorGroup& g, const LearningRate& lr, const Hyper& h,
                   bool window, const OptionalTensor& grad_factor,
                   const OptionalTensor& found_inf) {
  static const auto step_float = adam_operator<StepFloatLr>("");
  static const auto step_tensor = adam_operator<StepTensorLr>("tensor_lr");
  static const auto window_float = window_operator<WindowFloatLr>("");
  static const auto window_tensor = window_operator<WindowTensorLr>("tensor_lr");
  const OptionalTensor lr_tensor = on_device(lr.tensor, g.device);
  const OptionalTensor factor = on_device(grad_factor, g.device);
  const OptionalTensor inf = on_device(found_inf, g.device);
#define FA_LISTS g.params, g.grads, g.exp_avgs, g.exp_avg_sqs, g.max_exp_avg_sqs, g.steps
#define FA_HYPER h.beta1, h.beta2, h.weight_decay, h.eps, h.amsgrad, h.maximize, h.decoupled
  if (window) {
    if (lr_tensor) {
      window_tensor.call(FA_LISTS, *factor, *lr_tensor, FA_HYPER, inf);
    } else {
      window_float.call(FA_LISTS, *factor, lr.value, FA_HYPER, inf);
    }
  } else if (lr_tensor) {
    step_tensor.call(FA_LISTS, *lr_tensor, FA_HYPER, factor, inf);
  } else {
    step_float.call(FA_LISTS, lr.value, FA_HYPER, factor, inf);
  }
#undef FA_HYPER
#undef FA_LISTS
}

void step_param_group(const py::list& params, const py::object& grads,
                      const py::object& state, const py::object& init_state, bool window,
                      const py::object& lr, double beta1, double beta2, double weight_decay,
                      double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
                      const py::object& grad_factor, const py::object& found_inf) {
  HANDLE_TH_ERRORS
  const Hyper hyper{beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay};
  const LearningRate rate = learning_rate(lr);
  const OptionalTensor factor = optional_tensor(grad_factor, "grad_factor");
  const OptionalTensor inf = optional_tensor(found_inf, "found_inf");
  if (window && !factor) throw py::value_error("a window step needs grad_factor (the multiplier)");
  if (at::GradMode::is_enabled()) {
    throw std::runtime_error("step_param_group must run under torch.no_grad()");
  }
  // Destroyed after the GIL is taken back: it holds Python references.
  const GroupedParams grouped = group_params(params, grads, state, init_state, amsgrad);
  py::gil_scoped_release no_gil;
  // Under no_grad the autograd and ADInplaceOrView kernels of these operators
  // are boxed fallbacks that only pass the call on, at a cost per tensor; like
  // torch's fused step, this one bumps no version counters.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  for (const TensorGroup& g : grouped.groups) call_operator(g, rate, hyper, window, factor, inf);
  grouped.keep_alive.prefetch_for_release();
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

void define_param_group_step(py::module_& m) {
  m.def("step_param_group", &step_param_group, py::arg("params"), py::arg("grads"),
        py::arg("state"), py::arg("init_state"), py::kw_only(), py::arg("window"),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"),
        py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"),
        py::arg("decoupled_weight_decay"), py::arg("grad_factor"), py::arg("found_inf"),
        "Steps one param group: groups params by (device, dtype) and calls "
        "fused_accum::adam_step_ (window=False; grad_factor is GradScaler's scale) or "
        "adam_window_step_ (window=True; grad_factor is the window multiplier). "
        "grads is None (use each p.grad) or a list aligned with params, None entries "
        "skipped; init_state(p, state, amsgrad) fills a param's missing state.");
}

}  // namespace fused_accum
