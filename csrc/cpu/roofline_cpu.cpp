// Memory roofline for the benchmark: a kernel with exactly the memory streams
// of an Adam step (read p, g, m, v; write p, m, v) and almost no arithmetic,
// run over all tensors in one parallel region like the real step. Its time is
// what a step over the same tensors cannot beat on this machine, so
// `python -m fused_accum.bench` reports the step as a fraction of it.
//
// Registered here, with its own library fragment, because it is a measuring
// tool, not part of the optimizer's operator set in csrc/ops.cpp.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../tensor_list_checks.h"
#include "multi_tensor_loop.h"
#include "loop_storage.h"

namespace fused_accum {
namespace cpu {
namespace {

constexpr const char* kOp = "fused_accum_bench.stream_roofline_";

// Each output depends on its own old value and on g, so no load or store can be
// dropped; one add per stream keeps the loop memory-bound. T is a loop storage
// type (loop_storage.h), so bfloat16 vectorises as in the real step. It
// prefetches as the Adam loop does over large tensors (multi_tensor_loop.h): without, the
// step would beat its own yardstick.
template <typename T>
void stream_piece(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                  T* __restrict__ v, int64_t begin, int64_t end) {
  constexpr int64_t kLine = kCacheLineBytes / static_cast<int64_t>(sizeof(T));
  for (int64_t line = begin; line < end; line += kLine) {
    prefetch_ahead(p + line);
    prefetch_ahead(g + line);
    prefetch_ahead(m + line);
    prefetch_ahead(v + line);
    const int64_t line_end = std::min(end, line + kLine);
    for (int64_t i = line; i < line_end; ++i) {
      const float gi = static_cast<float>(g[i]);
      p[i] = static_cast<T>(static_cast<float>(p[i]) + gi);
      m[i] = static_cast<T>(static_cast<float>(m[i]) + gi);
      v[i] = static_cast<T>(static_cast<float>(v[i]) + gi);
    }
  }
}

void check_roofline_args(at::TensorList p, at::TensorList g, at::TensorList m,
                         at::TensorList v) {
  const size_t n = p.size();
  check_list_length(g, n, kOp, "g");
  check_list_length(m, n, kOp, "m");
  check_list_length(v, n, kOp, "v");
  if (n == 0) return;
  const auto device = p[0].device();
  const auto dtype = p[0].scalar_type();
  const char* names[] = {"p", "g", "m", "v"};
  const at::TensorList lists[] = {p, g, m, v};
  for (size_t k = 0; k < 4; ++k) {
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& t = lists[k][i];
      check_member(t, i, kOp, names[k], device, dtype);
      check_same_shape(t, p[i], i, kOp, names[k]);
      // Only a measuring tool: no staging copies, which would add traffic.
      TORCH_CHECK(t.is_contiguous(), kOp, ": ", names[k], "[", i, "] must be contiguous");
    }
  }
}

void stream_roofline_cpu(at::TensorList p, at::TensorList g, at::TensorList m,
                         at::TensorList v) {
  check_roofline_args(p, g, m, v);
  if (p.empty()) return;
  const size_t n = p.size();
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) numels[i] = p[i].numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p[0].scalar_type(),
                                  "fused_accum_stream_roofline_cpu", [&] {
    using T = loop_storage_t<scalar_t>;
    std::vector<T*> pp(n), gp(n), mp(n), vp(n);
    for (size_t i = 0; i < n; ++i) {
      pp[i] = loop_pointer(p[i].data_ptr<scalar_t>());
      gp[i] = loop_pointer(g[i].data_ptr<scalar_t>());
      mp[i] = loop_pointer(m[i].data_ptr<scalar_t>());
      vp[i] = loop_pointer(v[i].data_ptr<scalar_t>());
    }
    Segments(numels).parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
      stream_piece(pp[t], gp[t], mp[t], vp[t], begin, end);
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fused_accum

// A namespace of its own: a yardstick for the benchmark, not part of the library's
// operator set (which every backend implements).
TORCH_LIBRARY(fused_accum_bench, m) {
  // Benchmark roofline: p += g, m += g, v += g over all tensors in one pass.
  m.def("stream_roofline_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v) -> ()");
}

TORCH_LIBRARY_IMPL(fused_accum_bench, CPU, m) {
  m.impl("stream_roofline_", &fused_accum::cpu::stream_roofline_cpu);
}
