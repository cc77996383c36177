#pragma once

#include <ATen/core/Tensor.h>

namespace fused_accum {
namespace cpu {

void accumulate_cpu(at::TensorList buffers, at::TensorList grads, double scale);
at::Tensor accumulate_sumsq_cpu(at::TensorList buffers, at::TensorList grads, double scale);
at::Tensor sum_of_squares_cpu(at::TensorList tensors);

}  // namespace cpu
}  // namespace fused_accum
