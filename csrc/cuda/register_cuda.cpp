// CUDA kernels of every fused_accum operator. tests/test_cuda_registration.py
// fails a CUDA build in which any operator lacks one.
#include <torch/library.h>

#include "../adam_ops.h"
#include "accumulate_cuda.h"
#include "adam_cuda.h"

TORCH_LIBRARY_IMPL(fused_accum, CUDA, m) {
  fused_accum::register_adam_impls<fused_accum::cuda::adam_cuda>(m);
  m.impl("accumulate_", &fused_accum::cuda::accumulate_cuda);
  m.impl("accumulate_sumsq_", &fused_accum::cuda::accumulate_sumsq_cuda);
  m.impl("sum_of_squares", &fused_accum::cuda::sum_of_squares_cuda);
}
