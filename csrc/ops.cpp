// The fused_accum operator library and the extension's Python module.
//
// Importing the module registers the operators: their schemas here, their
// kernels in each backend's own files (cpu/, cuda/), by static initialisers. The
// module itself answers what was built and holds the eager param-group step
// (param_group_step.cpp).
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "adam_call.h"
#include "cpu/cpu_capability.h"

#ifndef FUSED_ACCUM_TORCH_VERSION
#error "setup.py defines FUSED_ACCUM_TORCH_VERSION"
#endif

// Mutated lists carry alias annotations so functionalization, torch.compile and
// opcheck see the writes.
TORCH_LIBRARY(fused_accum, m) {
  fused_accum::define_adam_schemas(m);
  // buffers[i] += scale * grads[i], computed in float32.
  m.def("accumulate_(Tensor(a!)[] buffers, Tensor[] grads, *, float scale=1.0) -> ()");
  // Sum of squares of all elements of all tensors, as a 0-d tensor: float64 when
  // any tensor is float64, else float32.
  m.def("sum_of_squares(Tensor[] tensors) -> Tensor");
}

namespace fused_accum {
void define_param_group_plan(pybind11::module_& m);  // param_group_step.cpp
}  // namespace fused_accum

namespace {

pybind11::list capability_names(const std::vector<fused_accum::cpu::CpuCapability>& levels) {
  pybind11::list names;
  for (auto level : levels) names.append(fused_accum::cpu::cpu_capability_name(level));
  return names;
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::string(FUSED_ACCUM_TORCH_VERSION);
  // Raises, as the first CPU step would, when FUSED_ACCUM_CPU_CAPABILITY asks
  // for a level that cannot run here.
  info["cpu_capability"] = std::string(
      fused_accum::cpu::cpu_capability_name(fused_accum::cpu::cpu_capability()));
  info["cpu_capabilities_supported"] =
      capability_names(fused_accum::cpu::cpu_capabilities_supported());
  info["cpu_capabilities_compiled"] =
      capability_names(fused_accum::cpu::cpu_capabilities_compiled());
#ifdef FUSED_ACCUM_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::string(FUSED_ACCUM_CUDA_VERSION);
  info["cuda_archs"] = std::string(FUSED_ACCUM_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fused_accum compiled extension: operators live in torch.ops.fused_accum";
  m.def("build_info", &build_info,
        "What this build contains and runs: torch version, CPU instruction-set levels, CUDA "
        "architectures.");
  fused_accum::define_param_group_plan(m);
}
