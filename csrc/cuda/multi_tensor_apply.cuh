// Applies a per-chunk device functor to every chunk of many tensors in as few
// launches as the kernel-argument limit allows. The tensor addresses and the
// block -> (tensor, chunk) table travel by value as a kernel argument, so a
// launch needs no host-to-device copy and can be captured in a CUDA graph.
// launch_plan.h decides what each launch covers (host code, tested on CPU).
#pragma once

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "launch_plan.h"

namespace fused_accum {
namespace cuda {

constexpr int kBlockSize = 512;
constexpr int kILP = 4;  // elements per thread per step: 4 loads in flight per list

template <int DEPTH>
struct ChunkMeta {
  static constexpr int kMaxTensors = launch_plan::max_tensors_per_launch(DEPTH);
  void* addresses[DEPTH][kMaxTensors];
  int64_t numels[kMaxTensors];
  int64_t first_block;
  uint8_t block_slot[launch_plan::kMaxBlocksPerLaunch];
  int32_t block_chunk[launch_plan::kMaxBlocksPerLaunch];
};

// The ILP elements of one list a thread holds in registers. Read-only lists
// (const T) are loaded and never stored.
template <typename T>
struct Lane {
  using Value = std::remove_const_t<T>;
  struct alignas(sizeof(Value) * kILP) Vec {
    Value v[kILP];
  };

  T* ptr;
  Value v[kILP];

  __device__ __forceinline__ static bool aligned(T* p) {
    return reinterpret_cast<uintptr_t>(p) % alignof(Vec) == 0;
  }
  __device__ __forceinline__ void load_vec(int64_t i) {
    const Vec loaded = reinterpret_cast<const Vec*>(ptr)[i];
#pragma unroll
    for (int k = 0; k < kILP; ++k) v[k] = loaded.v[k];
  }
  __device__ __forceinline__ void store_vec(int64_t i) {
    if constexpr (!std::is_const_v<T>) {
      Vec out;
#pragma unroll
      for (int k = 0; k < kILP; ++k) out.v[k] = v[k];
      reinterpret_cast<Vec*>(ptr)[i] = out;
    }
  }
  __device__ __forceinline__ void load(int k, int64_t i, int64_t n) {
    if (i < n) v[k] = ptr[i];
  }
  __device__ __forceinline__ void store(int k, int64_t i, int64_t n) {
    if constexpr (!std::is_const_v<T>) {
      if (i < n) ptr[i] = v[k];
    }
  }
};

template <typename Op, typename... Lanes>
__device__ __forceinline__ void vector_step(Op& op, int64_t i, Lanes... lanes) {
  (lanes.load_vec(i), ...);
#pragma unroll
  for (int k = 0; k < kILP; ++k) op(lanes.v[k]...);
  (lanes.store_vec(i), ...);
}

// Element k of a thread sits blockDim.x apart from element k+1, so each of the
// ILP loads is coalesced across the block.
template <typename Op, typename... Lanes>
__device__ __forceinline__ void strided_step(Op& op, int64_t base, int64_t n,
                                             Lanes... lanes) {
#pragma unroll
  for (int k = 0; k < kILP; ++k) {
    const int64_t i = base + threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    (lanes.load(k, i, n), ...);
  }
#pragma unroll
  for (int k = 0; k < kILP; ++k) {
    const int64_t i = base + threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i < n) op(lanes.v[k]...);
  }
#pragma unroll
  for (int k = 0; k < kILP; ++k) {
    const int64_t i = base + threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    (lanes.store(k, i, n), ...);
  }
}

// Calls op(x0[i], x1[i], ...) for i in [0, n) over the block's threads, with
// one vector load per list and thread when every list is aligned for it and n
// is a multiple of kILP (every chunk but a tensor's last, for aligned storage).
template <typename Op, typename... Ts>
__device__ __forceinline__ void for_each_element(int64_t n, Op& op, Ts*... ptrs) {
  if (n % kILP == 0 && (Lane<Ts>::aligned(ptrs) && ...)) {
    for (int64_t i = threadIdx.x; i < n / kILP; i += blockDim.x) {
      vector_step(op, i, Lane<Ts>{ptrs}...);
    }
  } else {
    for (int64_t base = 0; base < n; base += static_cast<int64_t>(blockDim.x) * kILP) {
      strided_step(op, base, n, Lane<Ts>{ptrs}...);
    }
  }
}

// Block b of a launch runs fn(meta, slot, begin, count, global_block) on
// elements [begin, begin + count) of the tensor in `slot`.
template <int DEPTH, typename ChunkFn>
__global__ void __launch_bounds__(kBlockSize) chunk_kernel(const ChunkMeta<DEPTH> meta,
                                                           const ChunkFn fn) {
  const int slot = meta.block_slot[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) *
                        launch_plan::kChunkSize;
  const int64_t left = meta.numels[slot] - begin;
  const int64_t count = left < launch_plan::kChunkSize ? left : launch_plan::kChunkSize;
  fn(meta, slot, begin, count, meta.first_block + blockIdx.x);
}

// addresses[d][t]: data pointer of tensor t in list d (lists beyond the
// element lists may hold per-tensor scalars such as a step count);
// numels[t]: elements of tensor t. Launches on the current stream of the
// current device (the caller holds a device guard). Returns the number of
// blocks launched over all launches.
template <int DEPTH, typename ChunkFn>
int64_t apply_chunked(const std::array<std::vector<void*>, DEPTH>& addresses,
                      const std::vector<int64_t>& numels, const ChunkFn& fn) {
  using Meta = ChunkMeta<DEPTH>;
  static_assert(sizeof(Meta) <= launch_plan::kMetaBytes, "metadata exceeds its budget");
  static_assert(sizeof(Meta) + sizeof(ChunkFn) <= launch_plan::kKernelArgBytes,
                "kernel arguments exceed the 4 KB limit");
  const std::vector<launch_plan::PlannedLaunch> launches = launch_plan::plan_launches(
      numels, launch_plan::kChunkSize, Meta::kMaxTensors, launch_plan::kMaxBlocksPerLaunch);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (const launch_plan::PlannedLaunch& launch : launches) {
    Meta meta;
    for (size_t s = 0; s < launch.tensors.size(); ++s) {
      const int64_t t = launch.tensors[s];
      for (int d = 0; d < DEPTH; ++d) meta.addresses[d][s] = addresses[d][t];
      meta.numels[s] = numels[t];
    }
    meta.first_block = launch.first_block;
    for (size_t b = 0; b < launch.blocks.size(); ++b) {
      meta.block_slot[b] = static_cast<uint8_t>(launch.blocks[b].slot);
      meta.block_chunk[b] = launch.blocks[b].chunk;
    }
    chunk_kernel<DEPTH, ChunkFn>
        <<<static_cast<unsigned>(launch.blocks.size()), kBlockSize, 0, stream>>>(meta, fn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return launch_plan::total_blocks(launches);
}

// Runs an element op over the chunk of list 0..N-1 (typed by Ts).
template <typename Op, typename... Ts>
struct ElementwiseChunk {
  Op op;
  template <int DEPTH>
  __device__ __forceinline__ void operator()(const ChunkMeta<DEPTH>& meta, int slot,
                                             int64_t begin, int64_t count,
                                             int64_t /*global_block*/) const {
    run(meta, slot, begin, count, std::index_sequence_for<Ts...>{});
  }

 private:
  template <int DEPTH, size_t... I>
  __device__ __forceinline__ void run(const ChunkMeta<DEPTH>& meta, int slot, int64_t begin,
                                      int64_t count, std::index_sequence<I...>) const {
    Op local = op;
    for_each_element(count, local, static_cast<Ts*>(meta.addresses[I][slot]) + begin...);
  }
};

}  // namespace cuda
}  // namespace fused_accum
