// CUDA implementation of the accumulation operators.
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_accum {
namespace cuda {

void accumulate_cuda(at::TensorList buffers, at::TensorList grads, double scale);
// The sums are 0-d float32 tensors on the device, reduced in a fixed order.
at::Tensor accumulate_sumsq_cuda(at::TensorList buffers, at::TensorList grads, double scale);
at::Tensor sum_of_squares_cuda(at::TensorList tensors);

}  // namespace cuda
}  // namespace fused_accum
