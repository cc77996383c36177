// CUDA kernels of gradient accumulation and sums of squares, element math from
// accumulate_math.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../accumulate_args.h"
#include "../accumulate_math.h"
#include "../dense_rows.h"
#include "launch_plan.h"
#include "multi_tensor_apply.cuh"

namespace fused_accum {
namespace cuda {
namespace {

// A sum over all blocks of all launches that gives the same bits on every run:
// each block writes its partial to its own slot (indexed by the global block
// number from the launch plan), then one block adds the partials in a fixed
// order. No atomics, so no dependence on scheduling.

// Sum of x over the threads of a block (blockDim.x == kBlockSize), the same
// tree every time; every thread must call it and gets the total.
__device__ __forceinline__ double block_sum(double x) {
  __shared__ double shared[kBlockSize];
  shared[threadIdx.x] = x;
  __syncthreads();
#pragma unroll
  for (int stride = kBlockSize / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();  // shared may be reused by a later call
  return total;
}

// The sum of squares of one chunk, stored at partials[global_block]. Element i of
// the chunk is added by thread (i / kILP) % blockDim.x, in the order of i, whether
// the chunk is read in vectors or element by element: the bits do not depend on
// where the data sits (a tensor and the same values in a view at an odd offset
// give the same sum), nor on where a tensor's last, partial group falls.
template <typename X>
struct SumOfSquaresChunk {
  double* partials;
  template <int DEPTH>
  __device__ __forceinline__ void operator()(const ChunkMeta<DEPTH>& meta, int slot,
                                             int64_t begin, int64_t count,
                                             int64_t global_block) const {
    const X* x = static_cast<const X*>(meta.addresses[0][slot]) + begin;
    const int64_t groups = count / kILP;  // full groups of kILP elements
    double sum = 0.0;
    if (Lane<const X>::aligned(x)) {
      for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
        Lane<const X> lane{x};
        lane.load_vec(g);
#pragma unroll
        for (int k = 0; k < kILP; ++k) sum += stored_square(lane.v[k]);
      }
    } else {
      for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
#pragma unroll
        for (int k = 0; k < kILP; ++k) sum += stored_square(x[g * kILP + k]);
      }
    }
    // The partial group comes last, from the thread whose turn it would be.
    if (threadIdx.x == groups % blockDim.x) {
      for (int64_t i = groups * kILP; i < count; ++i) sum += stored_square(x[i]);
    }
    const double total = block_sum(sum);
    if (threadIdx.x == 0) partials[global_block] = total;
  }
};

template <typename Out>
__global__ void __launch_bounds__(kBlockSize)
    sum_partials_kernel(const double* partials, int64_t count, Out* out) {
  double local = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kBlockSize) local += partials[i];
  const double total = block_sum(local);
  if (threadIdx.x == 0) *out = static_cast<Out>(total);
}

// out (a 0-d float32 or float64 tensor) = sum of partials[0, count), on the
// current stream. count may be 0: out is then 0.
void sum_partials(const double* partials, int64_t count, const at::Tensor& out) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (out.scalar_type() == at::kDouble) {
    sum_partials_kernel<<<1, kBlockSize, 0, stream>>>(partials, count, out.data_ptr<double>());
  } else {
    sum_partials_kernel<<<1, kBlockSize, 0, stream>>>(partials, count, out.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}


template <typename B, typename G>
struct AccumulateOp {
  AccumulateMath<B> scale;
  __device__ __forceinline__ void operator()(B& buffer, const G& grad) const {
    accumulate_element(buffer, grad, scale);
  }
};

at::Tensor partials_on(const at::Device& device, int64_t count) {
  return at::empty({count}, at::TensorOptions().dtype(at::kDouble).device(device));
}

void accumulate_cuda(at::TensorList buffers, at::TensorList grads, double scale) {
  const char* op = "fused_accum.accumulate_";
  check_accumulate_args(buffers, grads, scale, op);
  if (buffers.empty()) return;
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grads[0].scalar_type(),
                                  "fused_accum_accumulate_cuda", [&] {
    using G = scalar_t;
    auto run = [&](auto buffer_tag) {
      using B = decltype(buffer_tag);
      const AccumulateOp<B, G> element{static_cast<AccumulateMath<B>>(scale)};
      apply_chunked<2>(addresses, numels, ElementwiseChunk<AccumulateOp<B, G>, B, const G>{element});
    };
    if (buffers[0].scalar_type() == at::kFloat) {
      run(float{});
    } else {
      run(G{});
    }
  });
  rows.finish();
}

// Float64 when the tensors hold float64 values (a norm of a float64 model, as
// clip_grad_norm_ computes it), else float32.
at::Tensor sum_of_squares_cuda(at::TensorList tensors) {
  const char* op = "fused_accum.sum_of_squares";
  check_sum_of_squares_args(tensors, op);
  if (tensors.empty()) return at::zeros({}, at::kFloat);
  const at::Device device = tensors[0].device();
  TORCH_CHECK(device.is_cuda(), op, ": tensors must be CUDA tensors here, got ", device);
  const c10::cuda::CUDAGuard guard(device);

  std::vector<at::Tensor> dense;
  std::vector<int64_t> numels;
  at::ScalarType result_dtype = at::kFloat;
  for (const at::Tensor& t : tensors) {
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    numels.push_back(t.numel());
    if (t.scalar_type() == at::kDouble) result_dtype = at::kDouble;
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
      first_partial += apply_chunked<1>(
          addresses, group_numels,
          SumOfSquaresChunk<scalar_t>{partials.data_ptr<double>() + first_partial});
    });
  }
  at::Tensor result = at::empty({}, at::TensorOptions().dtype(result_dtype).device(device));
  sum_partials(partials.data_ptr<double>(), blocks, result);
  return result;
}

}  // namespace
}  // namespace cuda
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CUDA, m) {
  m.impl("accumulate_", &fused_accum::cuda::accumulate_cuda);
  m.impl("sum_of_squares", &fused_accum::cuda::sum_of_squares_cuda);
}
