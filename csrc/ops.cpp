// The fused_accum operator library and the extension's Python module.
//
// Importing the module registers the operators: their schemas here, their
// kernels in each backend's own files (cpu/, cuda/), by static initialisers. The
// module itself answers what was built and holds the eager param-group step
// (param_group_step.cpp).
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "adam_call.h"

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

// The instruction set the CPU kernels were compiled for: they are built with
// -march for the build machine (FUSED_ACCUM_CPU_ARCH), so this is what they use.
const char* cpu_instruction_set() {
#if defined(__AVX512F__)
  return "AVX512";
#elif defined(__AVX2__)
  return "AVX2";
#elif defined(__AVX__)
  return "AVX";
#elif defined(__ARM_FEATURE_SVE)
  return "SVE";
#elif defined(__ARM_NEON)
  return "NEON";
#elif defined(__SSE2__)
  return "SSE2";
#else
  return "scalar";
#endif
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::string(FUSED_ACCUM_TORCH_VERSION);
  info["cpu_instruction_set"] = std::string(cpu_instruction_set());
  info["cpu_arch_flag"] = std::string(FUSED_ACCUM_CPU_ARCH);
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
        "What this build contains: torch version, CPU instruction set, CUDA architectures.");
  fused_accum::define_param_group_plan(m);
}
