// The kernels of calls that have no data to touch: meta tensors (torch.compile
// and FakeTensor trace through these) and calls with no tensor at all (empty
// lists). Both run the very checks of the CPU and CUDA kernels, so a call that a
// backend would refuse is refused with the same message at trace time, and write
// nothing.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "accumulate_args.h"
#include "adam_call.h"

namespace fused_accum {
namespace {

// ------------------------------------------------------------------- Meta

void adam_meta(const AdamCall& call) { check_adam_call(call); }

void accumulate_meta(at::TensorList buffers, at::TensorList grads, double scale) {
  check_accumulate_args(buffers, grads, scale, "fused_accum.accumulate_");
}

// The result's dtype and device, as the backends give them.
at::Tensor sum_of_squares_meta(at::TensorList tensors) {
  check_sum_of_squares_args(tensors, "fused_accum.sum_of_squares");
  bool any_double = false;
  for (const at::Tensor& t : tensors) any_double = any_double || t.scalar_type() == at::kDouble;
  return at::empty({}, at::TensorOptions()
                           .dtype(any_double ? at::kDouble : at::kFloat)
                           .device(tensors.empty() ? at::Device(at::kMeta) : tensors[0].device()));
}

// ---------------------------------------------------- calls without tensors

// The dispatcher picks a CompositeExplicitAutograd kernel when a call holds no
// tensor (every list empty, no optional tensor), and for backends without a
// kernel of their own; CPU, CUDA and Meta tensors keep their own kernels.
void refuse_other_backend(at::TensorList first_list, const char* op, const char* name) {
  TORCH_CHECK(first_list.empty(), op, ": no kernel for ", name, " on ",
              first_list[0].device(), "; fused_accum runs on CPU and CUDA");
}

// Empty lists: nothing to step, as torch.optim's step over no params.
void adam_without_tensors(const AdamCall& call) {
  check_adam_call(call);
  refuse_other_backend(call.lists.params, call.op, "params");
}

void accumulate_without_tensors(at::TensorList buffers, at::TensorList grads, double scale) {
  const char* op = "fused_accum.accumulate_";
  check_accumulate_args(buffers, grads, scale, op);
  refuse_other_backend(buffers, op, "buffers");
}

// The norm of no tensors is 0, as clip_grad_norm_ answers for no grads: a 0-d
// float32 CPU tensor.
at::Tensor sum_of_squares_without_tensors(at::TensorList tensors) {
  const char* op = "fused_accum.sum_of_squares";
  check_sum_of_squares_args(tensors, op);
  refuse_other_backend(tensors, op, "tensors");
  return at::zeros({}, at::kFloat);
}

}  // namespace
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, Meta, m) {
  fused_accum::register_adam_impls<fused_accum::adam_meta>(m);
  m.impl("accumulate_", &fused_accum::accumulate_meta);
  m.impl("sum_of_squares", &fused_accum::sum_of_squares_meta);
}

TORCH_LIBRARY_IMPL(fused_accum, CompositeExplicitAutograd, m) {
  fused_accum::register_adam_impls<fused_accum::adam_without_tensors>(m);
  m.impl("accumulate_", &fused_accum::accumulate_without_tensors);
  m.impl("sum_of_squares", &fused_accum::sum_of_squares_without_tensors);
}
