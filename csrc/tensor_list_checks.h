// Argument checks for tensor-list operators; every message names the argument
// and the index so a user can find the offending tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fused_accum {

inline void check_list_length(at::TensorList list, size_t expected, const char* op,
                              const char* name) {
  TORCH_CHECK(list.size() == expected, op, ": ", name, " must hold ", expected,
              " tensors (one per param), got ", list.size());
}

inline void check_member(const at::Tensor& t, size_t i, const char* op, const char* name,
                         const at::Device& device, at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
  TORCH_CHECK(t.device() == device, op, ": ", name, "[", i, "] must be on ", device,
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, "[", i, "] must be ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, "[", i,
              "] must be a strided (dense) tensor, got layout ", t.layout());
}

// t has the shape of lead (lead_name[i]: params, or buffers for accumulate_).
inline void check_same_shape(const at::Tensor& t, const at::Tensor& lead, size_t i,
                             const char* op, const char* name, const char* lead_name = "params") {
  TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
  TORCH_CHECK(t.sizes() == lead.sizes(), op, ": ", name, "[", i, "] must have shape ",
              lead.sizes(), " like ", lead_name, "[", i, "], got ", t.sizes());
}

}  // namespace fused_accum
