// Prefetches what the eager param group step reads per param (metadata_prefetch.h).
#pragma once

#include <Python.h>

#include <vector>

namespace fused_accum {

// `params` is a list; `grads` is nullptr (each param's own .grad) or a list of
// the same length. Reads only: items that are not tensors are passed over and
// left for the step to report, and no state is created. Returns, per param, the
// state it found (existing_param_state, borrowed) or nullptr.
std::vector<PyObject*> prefetch_param_metadata(PyObject* params, PyObject* grads,
                                               PyObject* state_map);

}  // namespace fused_accum
