// CPU kernels of every fused_accum operator.
#include <torch/library.h>

#include "../adam_ops.h"
#include "accumulate_cpu.h"
#include "adam_cpu.h"

TORCH_LIBRARY_IMPL(fused_accum, CPU, m) {
  fused_accum::register_adam_impls<fused_accum::cpu::adam_cpu>(m);
  m.impl("accumulate_", &fused_accum::cpu::accumulate_cpu);
  m.impl("accumulate_sumsq_", &fused_accum::cpu::accumulate_sumsq_cpu);
  m.impl("sum_of_squares", &fused_accum::cpu::sum_of_squares_cpu);
}
