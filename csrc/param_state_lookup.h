// optimizer.state[param], for the eager param group step.
#pragma once

#include <Python.h>

namespace fused_accum {

// state_map[param] as a new reference, or nullptr with a Python error set.
// state_map is the optimizer's `state` (a defaultdict), so a missing entry is
// created, exactly as `state_map[param]` in Python would.
PyObject* param_state(PyObject* state_map, PyObject* param);

// state_map[param] as a borrowed reference where the state exists and the
// identity probe applies; otherwise nullptr, with nothing created and no error
// set. For prefetching only: it may miss where param_state would find.
PyObject* existing_param_state(PyObject* state_map, PyObject* param);

}  // namespace fused_accum
