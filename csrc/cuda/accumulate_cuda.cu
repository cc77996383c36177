// CUDA kernels of gradient accumulation and sums of squares, element math from
// accumulate_math.h, sums through deterministic_sum.cuh.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <vector>

#include "../accumulate_args.h"
#include "../accumulate_math.h"
#include "../dense_rows.h"
#include "accumulate_cuda.h"
#include "deterministic_sum.cuh"
#include "multi_tensor_apply.cuh"

namespace fused_accum {
namespace cuda {
namespace {

template <typename B, typename G>
struct AccumulateOp {
  float scale;
  double sum;  // of the squares of the updated buffer, when summed
  __device__ __forceinline__ void operator()(B& buffer, const G& grad) {
    sum += square_as_double(accumulate_element(buffer, grad, scale));
  }
};

template <typename X>
struct SquareOp {
  double sum;
  __device__ __forceinline__ void operator()(const X& x) {
    sum += stored_square(x);
  }
};

at::Tensor float_scalar_on(const at::Device& device) {
  return at::empty({}, at::TensorOptions().dtype(at::kFloat).device(device));
}

at::Tensor partials_on(const at::Device& device, int64_t count) {
  return at::empty({count}, at::TensorOptions().dtype(at::kDouble).device(device));
}

// Returns the 0-d sum of squares of the updated buffers when want_sumsq, else
// an undefined tensor.
at::Tensor accumulate_all(at::TensorList buffers, at::TensorList grads, double scale,
                          bool want_sumsq, const char* op) {
  check_accumulate_args(buffers, grads, op);
  if (buffers.empty()) return want_sumsq ? at::zeros({}, at::kFloat) : at::Tensor();
  const at::Device device = buffers[0].device();
  TORCH_CHECK(device.is_cuda(), op, ": buffers must be CUDA tensors here, got ", device);
  const c10::cuda::CUDAGuard guard(device);

  DenseRows rows({buffers, grads}, {true, false});
  std::array<std::vector<void*>, 2> addresses;
  std::vector<int64_t> numels(rows.rows());
  for (size_t i = 0; i < rows.rows(); ++i) {
    addresses[0].push_back(rows.at(0, i).data_ptr());
    addresses[1].push_back(rows.at(1, i).data_ptr());
    numels[i] = rows.at(0, i).numel();
  }
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grads[0].scalar_type(),
                                  "fused_accum_accumulate_cuda", [&] {
    using G = scalar_t;
    auto run = [&](auto buffer_tag) {
      using B = decltype(buffer_tag);
      const AccumulateOp<B, G> element{static_cast<float>(scale), 0.0};
      if (!want_sumsq) {
        apply_chunked<2>(addresses, numels, ElementwiseChunk<AccumulateOp<B, G>, B, const G>{element});
        return;
      }
      const int64_t blocks = launch_plan::count_chunks(numels, launch_plan::kChunkSize);
      const at::Tensor partials = partials_on(device, blocks);
      double* partial_data = partials.data_ptr<double>();
      apply_chunked<2>(addresses, numels,
                       SummingChunk<AccumulateOp<B, G>, B, const G>{element, partial_data});
      result = float_scalar_on(device);
      sum_partials(partial_data, blocks, result.data_ptr<float>());
    };
    if (buffers[0].scalar_type() == at::kFloat) {
      run(float{});
    } else {
      run(G{});
    }
  });
  rows.finish();
  return result;
}

}  // namespace

void accumulate_cuda(at::TensorList buffers, at::TensorList grads, double scale) {
  accumulate_all(buffers, grads, scale, /*want_sumsq=*/false, "fused_accum.accumulate_");
}

at::Tensor accumulate_sumsq_cuda(at::TensorList buffers, at::TensorList grads, double scale) {
  return accumulate_all(buffers, grads, scale, /*want_sumsq=*/true,
                        "fused_accum.accumulate_sumsq_");
}

at::Tensor sum_of_squares_cuda(at::TensorList tensors) {
  const char* op = "fused_accum.sum_of_squares";
  check_sum_of_squares_args(tensors, op);
  if (tensors.empty()) return at::zeros({}, at::kFloat);
  const at::Device device = tensors[0].device();
  TORCH_CHECK(device.is_cuda(), op, ": tensors must be CUDA tensors here, got ", device);
  const c10::cuda::CUDAGuard guard(device);

  std::vector<at::Tensor> dense;
  std::vector<int64_t> numels;
  for (const at::Tensor& t : tensors) {
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    numels.push_back(t.numel());
  }
  const int64_t blocks = launch_plan::count_chunks(numels, launch_plan::kChunkSize);
  const at::Tensor partials = partials_on(device, blocks);
  int64_t first_partial = 0;
  // Tensors of one call may differ in dtype (a norm over a whole model): one
  // pass per dtype, each writing its own range of partials.
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    std::array<std::vector<void*>, 1> addresses;
    std::vector<int64_t> group_numels;
    for (size_t i = 0; i < dense.size(); ++i) {
      if (dense[i].scalar_type() != dtype) continue;
      addresses[0].push_back(dense[i].data_ptr());
      group_numels.push_back(numels[i]);
    }
    if (group_numels.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype,
                                    "fused_accum_sum_of_squares_cuda", [&] {
      using Chunk = SummingChunk<SquareOp<scalar_t>, const scalar_t>;
      first_partial += apply_chunked<1>(
          addresses, group_numels, Chunk{{0.0}, partials.data_ptr<double>() + first_partial});
    });
  }
  at::Tensor result = float_scalar_on(device);
  sum_partials(partials.data_ptr<double>(), blocks, result.data_ptr<float>());
  return result;
}

}  // namespace cuda
}  // namespace fused_accum
