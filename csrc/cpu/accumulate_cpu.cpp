// CPU implementation of the accumulation operators, in one parallel region
// over all tensors, element math from accumulate_math.h.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/Tensor.h>

#include <vector>

#include "../accumulate_args.h"
#include "../accumulate_math.h"
#include "../dense_rows.h"
#include "segments.h"
#include "accumulate_cpu.h"

namespace fused_accum {
namespace cpu {
namespace {

template <typename B, typename G>
double accumulate_piece(B* __restrict__ buffer, const G* __restrict__ grad, int64_t begin,
                        int64_t end, float scale, bool want_sumsq) {
  double sumsq = 0.0;
  if (want_sumsq) {
#pragma omp simd reduction(+ : sumsq)
    for (int64_t i = begin; i < end; ++i) {
      sumsq += square_as_double(accumulate_element(buffer[i], grad[i], scale));
    }
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) accumulate_element(buffer[i], grad[i], scale);
  }
  return sumsq;
}

template <typename X>
double sum_of_squares_piece(const X* __restrict__ x, int64_t begin, int64_t end) {
  double sumsq = 0.0;
#pragma omp simd reduction(+ : sumsq)
  for (int64_t i = begin; i < end; ++i) sumsq += square_as_double(static_cast<float>(x[i]));
  return sumsq;
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

at::Tensor scalar_result(double value) {
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kFloat));
  out.fill_(value);
  return out;
}

double accumulate_all(at::TensorList buffers, at::TensorList grads, double scale,
                      bool want_sumsq, const char* op) {
  check_accumulate_args(buffers, grads, op);
  if (buffers.empty()) return 0.0;
  DenseRows rows({buffers, grads}, {true, false});
  std::vector<int64_t> numels(rows.rows());
  for (size_t i = 0; i < rows.rows(); ++i) numels[i] = rows.at(0, i).numel();
  const Segments segments(numels);
  double sumsq = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grads[0].scalar_type(),
                                  "fused_accum_accumulate_cpu", [&] {
    using G = scalar_t;
    auto run = [&](auto buffer_tag) {
      using B = decltype(buffer_tag);
      std::vector<B*> buffer_ptrs(rows.rows());
      std::vector<const G*> grad_ptrs(rows.rows());
      for (size_t i = 0; i < rows.rows(); ++i) {
        buffer_ptrs[i] = rows.at(0, i).data_ptr<B>();
        grad_ptrs[i] = rows.at(1, i).const_data_ptr<G>();
      }
      sumsq = parallel_sum(segments, [&](int64_t t, int64_t begin, int64_t end) {
        return accumulate_piece(buffer_ptrs[t], grad_ptrs[t], begin, end,
                                static_cast<float>(scale), want_sumsq);
      });
    };
    if (buffers[0].scalar_type() == at::kFloat) {
      run(float{});
    } else {
      run(G{});
    }
  });
  rows.finish();
  return sumsq;
}

}  // namespace

void accumulate_cpu(at::TensorList buffers, at::TensorList grads, double scale) {
  accumulate_all(buffers, grads, scale, /*want_sumsq=*/false, "fused_accum.accumulate_");
}

at::Tensor accumulate_sumsq_cpu(at::TensorList buffers, at::TensorList grads, double scale) {
  return scalar_result(
      accumulate_all(buffers, grads, scale, /*want_sumsq=*/true, "fused_accum.accumulate_sumsq_"));
}

at::Tensor sum_of_squares_cpu(at::TensorList tensors) {
  const char* op = "fused_accum.sum_of_squares";
  check_sum_of_squares_args(tensors, op);
  std::vector<at::Tensor> dense;
  dense.reserve(tensors.size());
  std::vector<int64_t> numels;
  for (const at::Tensor& t : tensors) {
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    numels.push_back(t.numel());
  }
  const Segments segments(numels);
  double total = 0.0;
  // Tensors of one call may differ in dtype (a norm over a whole model).
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype,
                                    "fused_accum_sum_of_squares_cpu", [&] {
      total += parallel_sum(segments, [&](int64_t t, int64_t begin, int64_t end) {
        if (dense[t].scalar_type() != dtype) return 0.0;
        return sum_of_squares_piece(dense[t].const_data_ptr<scalar_t>(), begin, end);
      });
    });
  }
  return scalar_result(total);
}

}  // namespace cpu
}  // namespace fused_accum
