// A sum over all blocks of all launches that gives the same bits on every run:
// each block writes its partial to its own slot (indexed by the global block
// number from the launch plan), then one block adds the partials in a fixed
// order. No atomics, so no dependence on scheduling.
#pragma once

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "multi_tensor_apply.cuh"

namespace fused_accum {
namespace cuda {

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

// Runs an element op that gathers a `sum` member over the chunk, then stores
// the block's total at partials[global_block].
template <typename Op, typename... Ts>
struct SummingChunk {
  Op op;
  double* partials;
  template <int DEPTH>
  __device__ __forceinline__ void operator()(const ChunkMeta<DEPTH>& meta, int slot,
                                             int64_t begin, int64_t count,
                                             int64_t global_block) const {
    const double total = run(meta, slot, begin, count, std::index_sequence_for<Ts...>{});
    if (threadIdx.x == 0) partials[global_block] = total;
  }

 private:
  template <int DEPTH, size_t... I>
  __device__ __forceinline__ double run(const ChunkMeta<DEPTH>& meta, int slot,
                                        int64_t begin, int64_t count,
                                        std::index_sequence<I...>) const {
    Op local = op;
    for_each_element(count, local, static_cast<Ts*>(meta.addresses[I][slot]) + begin...);
    return block_sum(local.sum);
  }
};

// static: one copy per translation unit, no clash at link time.
static __global__ void __launch_bounds__(kBlockSize)
    sum_partials_kernel(const double* partials, int64_t count, float* out) {
  double local = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kBlockSize) local += partials[i];
  const double total = block_sum(local);
  if (threadIdx.x == 0) *out = static_cast<float>(total);
}

// out (a 0-d float32 tensor's storage) = sum of partials[0, count), on the
// current stream. count may be 0: out is then 0.
static inline void sum_partials(const double* partials, int64_t count, float* out) {
  sum_partials_kernel<<<1, kBlockSize, 0, c10::cuda::getCurrentCUDAStream()>>>(partials, count,
                                                                              out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace fused_accum
