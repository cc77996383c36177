// CPU sum_of_squares: the same bits at any thread count.
//
// The sum is cut into blocks that the tensors alone decide: block k of a tensor
// holds its elements [k * kBlock, (k + 1) * kBlock) in memory order. Every block
// sum is computed the same way wherever it runs, and the block sums are added in
// one fixed order, tensor after tensor, block after block. Threads decide only who
// computes which block sums, so 1, 2 or 64 threads, and any split of the tensors
// between them, give the same bits: DDP ranks on machines with different core
// counts compute the same clip coefficient, and a run resumed on another machine
// continues as it would have on the first.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../accumulate_args.h"
#include "multi_tensor_loop.h"
#include "loop_storage.h"

namespace fused_accum {
namespace cpu {
namespace {

// Sums of squares run at memory speed only when vectorised: a block is summed in
// the element's math type (float for float, half and bfloat16; double for
// double), which the compiler vectorises, and the block sums are added in double,
// so rounding stays that of a short float sum however large the tensors.
constexpr int64_t kBlock = 1024;
// Inside a block, element i is added to lane i % kLanes, in order, and the lanes
// are then added in a fixed tree. The lanes are independent sums, vectorised
// without reordering any addition; a reduction left to the compiler could change
// its order with the data's alignment or the compiler's version.
constexpr int64_t kLanes = 16;
static_assert(kBlock % kLanes == 0, "a full block fills every lane equally");

template <typename X>
using SquareSum = std::conditional_t<std::is_same_v<X, double>, double, float>;

template <typename X>
double block_sum_of_squares(const X* __restrict__ x, int64_t count) {
  using S = SquareSum<X>;
  S lanes[kLanes] = {};
  const int64_t full = count - count % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    // Unrolled, so that the lanes stay in registers even where the conversion is
    // left scalar (float16 without F16C).
#pragma GCC unroll 16
    for (int64_t j = 0; j < kLanes; ++j) {
      const S value = static_cast<S>(x[i + j]);
      lanes[j] += value * value;
    }
  }
  for (int64_t j = 0; j < count - full; ++j) {
    const S value = static_cast<S>(x[full + j]);
    lanes[j] += value * value;
  }
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  }
  return lanes[0];
}

// Writes the sums of the blocks of one tensor that start in [begin, end) to
// block_sums[b] for block b of the tensor. A block that starts in the range is
// summed whole, even where it reaches past `end`.
template <typename X>
void block_sums_of_piece(const void* data, int64_t numel, int64_t begin, int64_t end,
                         double* block_sums) {
  const X* x = static_cast<const X*>(data);
  for (int64_t b = (begin + kBlock - 1) / kBlock; b * kBlock < end; ++b) {
    const int64_t first = b * kBlock;
    block_sums[b] = block_sum_of_squares(x + first, std::min(kBlock, numel - first));
  }
}

// The sum as a 0-d tensor: float64 when the tensors hold float64 values (a norm
// of a float64 model, computed as clip_grad_norm_ computes it), else float32.
at::Tensor scalar_result(double value, at::ScalarType dtype) {
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(dtype));
  out.fill_(value);
  return out;
}

at::Tensor sum_of_squares_cpu(at::TensorList tensors) {
  const char* op = "fused_accum.sum_of_squares";
  check_sum_of_squares_args(tensors, op);
  // Tensors of one call may differ in dtype (a norm over a whole model): each gets
  // the loop for its dtype, all in one parallel region.
  using PieceFn = void (*)(const void*, int64_t, int64_t, int64_t, double*);
  std::vector<at::Tensor> dense;
  std::vector<PieceFn> piece_fns;
  std::vector<int64_t> numels;
  std::vector<int64_t> first_block(tensors.size() + 1, 0);  // of each tensor, in block_sums
  at::ScalarType result_dtype = at::kFloat;
  dense.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    numels.push_back(t.numel());
    first_block[i + 1] = first_block[i] + (t.numel() + kBlock - 1) / kBlock;
    if (t.scalar_type() == at::kDouble) result_dtype = at::kDouble;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(),
                                    "fused_accum_sum_of_squares_cpu", [&] {
      piece_fns.push_back(&block_sums_of_piece<loop_storage_t<scalar_t>>);
    });
  }
  // Threads get even shares of the elements, as in every other loop here; a block
  // belongs to the share its first element lies in.
  std::vector<double> block_sums(first_block.back());
  Segments(numels).parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
    piece_fns[t](dense[t].const_data_ptr(), numels[t], begin, end,
                 block_sums.data() + first_block[t]);
  });
  // One thread adds them in order: one addition per 1024 elements read, under 1% of
  // the pass.
  double total = 0.0;
  for (const double block_sum : block_sums) total += block_sum;
  return scalar_result(total, result_dtype);
}

}  // namespace
}  // namespace cpu
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CPU, m) {
  m.impl("sum_of_squares", &fused_accum::cpu::sum_of_squares_cpu);
}
