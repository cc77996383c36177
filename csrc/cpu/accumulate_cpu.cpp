// CPU accumulate_, in one parallel region over all tensors, element math from
// accumulate_math.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../accumulate_args.h"
#include "../accumulate_math.h"
#include "../dense_rows.h"
#include "multi_tensor_loop.h"
#include "loop_storage.h"

namespace fused_accum {
namespace cpu {
namespace {

template <typename B, typename G>
void accumulate_piece(B* __restrict__ buffer, const G* __restrict__ grad, int64_t begin,
                      int64_t end, AccumulateMath<B> scale) {
  // Grads are read as values of the math type: a class-typed (bfloat16) temporary
  // inside an `omp simd` loop keeps GCC from vectorising it.
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    accumulate_element(buffer[i], static_cast<AccumulateMath<B>>(grad[i]), scale);
  }
}

void accumulate_cpu(at::TensorList buffers, at::TensorList grads, double scale) {
  const char* op = "fused_accum.accumulate_";
  check_accumulate_args(buffers, grads, scale, op);
  if (buffers.empty()) return;
  DenseRows rows({buffers, grads}, {true, false});
  std::vector<int64_t> numels(rows.rows());
  for (size_t i = 0; i < rows.rows(); ++i) numels[i] = rows.at(0, i).numel();
  const Segments segments(numels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grads[0].scalar_type(),
                                  "fused_accum_accumulate_cpu", [&] {
    using G = scalar_t;
    auto run = [&](auto buffer_tag) {
      using B = decltype(buffer_tag);
      std::vector<loop_storage_t<B>*> buffer_ptrs(rows.rows());
      std::vector<loop_storage_t<G>*> grad_ptrs(rows.rows());
      for (size_t i = 0; i < rows.rows(); ++i) {
        buffer_ptrs[i] = loop_pointer(rows.at(0, i).data_ptr<B>());
        grad_ptrs[i] = loop_pointer(rows.at(1, i).data_ptr<G>());
      }
      segments.parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
        accumulate_piece(buffer_ptrs[t], grad_ptrs[t], begin, end,
                         static_cast<AccumulateMath<B>>(scale));
      });
    };
    if (buffers[0].scalar_type() == at::kFloat) {
      run(float{});
    } else {
      run(G{});
    }
  });
  rows.finish();
}

}  // namespace

}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CPU, m) {
  m.impl("accumulate_", &fused_accum::cpu::accumulate_cpu);
}
