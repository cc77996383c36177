#include "param_metadata_prefetch.h"

#include "metadata_prefetch.h"
#include "param_state_lookup.h"

#include <torch/csrc/autograd/python_variable.h>

#include <vector>

namespace fused_accum {
namespace {

// Python objects hold at most a few lines that the step reads.
constexpr int64_t kObjectBytes = 128;

const c10::TensorImpl* impl_of(PyObject* obj) {
  return THPVariable_Check(obj) ? THPVariable_Unpack(obj).unsafeGetTensorImpl() : nullptr;
}

}  // namespace

std::vector<PyObject*> prefetch_param_metadata(PyObject* params, PyObject* grads,
                                               PyObject* state_map) {
  const Py_ssize_t n = PyList_GET_SIZE(params);
  for (Py_ssize_t i = 0; i < n; ++i) {
    prefetch_object(PyList_GET_ITEM(params, i), kObjectBytes);
    if (grads != nullptr) prefetch_object(PyList_GET_ITEM(grads, i), kObjectBytes);
  }
  // Level by level: each loop reads only what the loop before prefetched.
  std::vector<const c10::TensorImpl*> param_impls(n);
  std::vector<PyObject*> states(n);  // borrowed
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* param = PyList_GET_ITEM(params, i);
    param_impls[i] = impl_of(param);
    if (param_impls[i] != nullptr) {
      prefetch_object(param_impls[i], sizeof(c10::TensorImpl));
      states[i] = existing_param_state(state_map, param);
      if (states[i] != nullptr) prefetch_object(states[i], kObjectBytes);
    }
    if (grads != nullptr) {
      const c10::TensorImpl* grad = impl_of(PyList_GET_ITEM(grads, i));
      if (grad != nullptr) prefetch_object(grad, sizeof(c10::TensorImpl));
    }
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (grads == nullptr && param_impls[i] != nullptr) {
      const c10::AutogradMetaInterface* meta = param_impls[i]->autograd_meta();
      if (meta != nullptr) prefetch_object(meta, kObjectBytes);
    }
    if (states[i] != nullptr && PyDict_Check(states[i])) {
      prefetch_object(reinterpret_cast<PyDictObject*>(states[i])->ma_keys, kObjectBytes);
    }
  }
  if (grads == nullptr) {
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (param_impls[i] == nullptr) continue;
      prefetch_object(param_impls[i]->grad().unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
    }
  }
  return states;
}

}  // namespace fused_accum
