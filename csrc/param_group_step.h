// The eager fast path of FusedAdam.step: one param group grouped and stepped in C++.
#pragma once

#include <pybind11/pybind11.h>

namespace fused_accum {

// Adds step_param_group to the extension's Python module.
void define_param_group_step(pybind11::module_& m);

}  // namespace fused_accum
