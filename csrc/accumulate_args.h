// Validation of the accumulation operators, shared by every backend.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>

#include "memory_overlap.h"
#include "tensor_list_checks.h"

namespace fused_accum {

// buffers: one dtype, float32 or the grads' dtype; grads: one floating dtype;
// one device; matching shapes; no buffer sharing memory with another argument;
// a finite scale that the computation dtype (float64 for float64 buffers, else
// float32) holds.
inline void check_accumulate_args(at::TensorList buffers, at::TensorList grads, double scale,
                                  const char* op) {
  check_list_length(grads, buffers.size(), op, "grads");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  if (buffers.empty()) return;
  const at::Device device = buffers[0].device();
  const at::ScalarType buffer_dtype = buffers[0].scalar_type();
  const at::ScalarType grad_dtype = grads[0].scalar_type();
  TORCH_CHECK(at::isFloatingType(grad_dtype), op,
              ": grads must be floating point, got ", grad_dtype);
  TORCH_CHECK(buffer_dtype == at::kFloat || buffer_dtype == grad_dtype, op,
              ": buffers must be float32 or the grads' dtype ", grad_dtype, ", got ",
              buffer_dtype);
  for (size_t i = 0; i < buffers.size(); ++i) {
    check_member(buffers[i], i, op, "buffers", device, buffer_dtype);
    check_member(grads[i], i, op, "grads", device, grad_dtype);
    check_same_shape(grads[i], buffers[i], i, op, "grads", "buffers");
  }
  TORCH_CHECK(buffer_dtype == at::kDouble || std::isfinite(static_cast<float>(scale)), op,
              ": scale ", scale, " overflows float32, in which ", buffer_dtype,
              " buffers accumulate; float64 buffers accumulate in float64");
  MemoryOverlapCheck memory(op);
  memory.add(buffers, "buffers", true);
  memory.add(grads, "grads", false);
  memory.check();
}

inline void check_sum_of_squares_args(at::TensorList tensors, const char* op) {
  if (tensors.empty()) return;
  const at::Device device = tensors[0].device();
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(at::isFloatingType(tensors[i].scalar_type()), op, ": tensors[", i,
                "] must be floating point, got ", tensors[i].scalar_type());
    check_member(tensors[i], i, op, "tensors", device, tensors[i].scalar_type());
  }
}

}  // namespace fused_accum
