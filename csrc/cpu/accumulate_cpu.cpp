// CPU kernels of the accumulation operators, in one parallel region over all
// tensors, element math from accumulate_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../accumulate_args.h"
#include "../accumulate_math.h"
#include "../dense_rows.h"
#include "multi_tensor_loop.h"
#include "loop_storage.h"

namespace fused_accum {
namespace cpu {
namespace {

// Sums of squares run at memory speed only when vectorised: each block of kBlock
// elements is summed in the element's math type (float for float, half and
// bfloat16; double for double), which the compiler vectorises, and the block sums
// are added in double, so rounding stays that of a kBlock-term float sum.
constexpr int64_t kBlock = 1024;

template <typename X>
using SquareSum = std::conditional_t<std::is_same_v<X, double>, double, float>;

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

template <typename X>
double sum_of_squares_block(const X* __restrict__ x, int64_t begin, int64_t end) {
  using S = SquareSum<X>;
  S sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = begin; i < end; ++i) {
    const S value = static_cast<S>(x[i]);
    sum += value * value;
  }
  return sum;
}

template <typename X>
double sum_of_squares_piece(const void* data, int64_t begin, int64_t end) {
  const X* __restrict__ x = static_cast<const X*>(data);
  double total = 0.0;
  for (int64_t block = begin; block < end; block += kBlock) {
    total += sum_of_squares_block(x, block, std::min(end, block + kBlock));
  }
  return total;
}

// Per-thread partial sums, added in thread order so the result does not depend
// on scheduling.
template <typename Fn>
double parallel_sum(const Segments& segments, const Fn& piece_sum) {
  std::vector<double> partial(at::get_num_threads(), 0.0);
  at::parallel_for(0, segments.total(), kParallelGrain, [&](int64_t first, int64_t last) {
    double local = 0.0;
    segments.for_each_piece(first, last, [&](int64_t t, int64_t begin, int64_t end) {
      local += piece_sum(t, begin, end);
    });
    partial[at::get_thread_num()] += local;
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// The sum as a 0-d tensor: float64 when the tensors hold float64 values (a norm
// of a float64 model, computed as clip_grad_norm_ computes it), else float32.
at::Tensor scalar_result(double value, at::ScalarType dtype) {
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(dtype));
  out.fill_(value);
  return out;
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

at::Tensor sum_of_squares_cpu(at::TensorList tensors) {
  const char* op = "fused_accum.sum_of_squares";
  check_sum_of_squares_args(tensors, op);
  // Tensors of one call may differ in dtype (a norm over a whole model): each gets
  // the loop for its dtype, all in one parallel region.
  using PieceFn = double (*)(const void*, int64_t, int64_t);
  std::vector<at::Tensor> dense;
  std::vector<PieceFn> piece_fns;
  std::vector<int64_t> numels;
  at::ScalarType result_dtype = at::kFloat;
  dense.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    numels.push_back(t.numel());
    if (t.scalar_type() == at::kDouble) result_dtype = at::kDouble;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(),
                                    "fused_accum_sum_of_squares_cpu", [&] {
      piece_fns.push_back(&sum_of_squares_piece<loop_storage_t<scalar_t>>);
    });
  }
  const Segments segments(numels);
  const double total = parallel_sum(segments, [&](int64_t t, int64_t begin, int64_t end) {
    return piece_fns[t](dense[t].const_data_ptr(), begin, end);
  });
  return scalar_result(total, result_dtype);
}

}  // namespace

}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CPU, m) {
  m.impl("accumulate_", &fused_accum::cpu::accumulate_cpu);
  m.impl("sum_of_squares", &fused_accum::cpu::sum_of_squares_cpu);
}
