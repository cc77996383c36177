// Which kernel launches, and which blocks of them, cover which chunks of which
// tensors. Plain C++ with no CUDA: the CUDA launcher (multi_tensor_apply.cuh)
// calls exactly this code, and the CPU build compiles it too so the plan can be
// tested on machines without a GPU (torch.ops.fused_accum_testing.plan_chunks).
#pragma once

#include <cstdint>
#include <vector>

namespace fused_accum {
namespace launch_plan {

// Elements one block walks; a tensor is cut into chunks of this size.
constexpr int64_t kChunkSize = 65536;

// The tensor addresses and the block table travel by value as one kernel
// argument, and kernel arguments are limited to 4 KB. The metadata gets at most
// kMetaBytes of it; the rest is left to the per-operator functor.
constexpr int kKernelArgBytes = 4096;
constexpr int kMetaBytes = 3584;
constexpr int kMaxBlocksPerLaunch = 320;
// Per block: a one-byte tensor slot and a four-byte chunk index.
constexpr int kBytesPerBlock = 5;
// Besides the tables: the global index of the launch's first block.
constexpr int kMetaHeaderBytes = 16;

// Tensors one launch can address when each has `depth` pointers (param, grad,
// moments...) and an element count.
constexpr int max_tensors_per_launch(int depth) {
  const int fit = (kMetaBytes - kMetaHeaderBytes - kMaxBlocksPerLaunch * kBytesPerBlock) /
                  (8 * depth + 8);
  return fit > 255 ? 255 : fit;  // slots are stored in one byte
}

struct BlockTask {
  int32_t slot;   // index into PlannedLaunch::tensors
  int32_t chunk;  // chunk of that tensor: elements [chunk * chunk_size, ...)
};

struct PlannedLaunch {
  std::vector<int64_t> tensors;    // indices into the caller's list, in slot order
  std::vector<BlockTask> blocks;   // block b of the launch does blocks[b]
  int64_t first_block = 0;         // blocks of all earlier launches: where this one's
                                   // per-block results start in a shared buffer
};

inline int64_t chunks_of(int64_t numel, int64_t chunk_size) {
  return (numel + chunk_size - 1) / chunk_size;
}

// Every chunk of every tensor exactly once, in tensor then chunk order, packed
// greedily: a launch is closed when its block table or its tensor slots are
// full. A tensor whose chunks span two launches takes a slot in both. Tensors
// without elements take no slot and no block.
// Preconditions (checked by callers): chunk_size > 0, max_tensors > 0,
// max_blocks > 0, numels >= 0, chunks_of(numel) < 2^31.
inline std::vector<PlannedLaunch> plan_launches(const std::vector<int64_t>& numels,
                                                int64_t chunk_size, int max_tensors,
                                                int max_blocks) {
  std::vector<PlannedLaunch> launches;
  PlannedLaunch current;
  int64_t blocks_before = 0;
  auto close_launch = [&] {
    if (current.blocks.empty()) return;
    current.first_block = blocks_before;
    blocks_before += static_cast<int64_t>(current.blocks.size());
    launches.push_back(std::move(current));
    current = PlannedLaunch{};
  };
  for (size_t t = 0; t < numels.size(); ++t) {
    const int64_t chunks = chunks_of(numels[t], chunk_size);
    for (int64_t c = 0; c < chunks; ++c) {
      const bool needs_slot =
          current.tensors.empty() || current.tensors.back() != static_cast<int64_t>(t);
      if (needs_slot) {
        if (static_cast<int>(current.tensors.size()) == max_tensors) close_launch();
        current.tensors.push_back(static_cast<int64_t>(t));
      }
      current.blocks.push_back({static_cast<int32_t>(current.tensors.size() - 1),
                                static_cast<int32_t>(c)});
      if (static_cast<int>(current.blocks.size()) == max_blocks) close_launch();
    }
  }
  close_launch();
  return launches;
}

// The blocks plan_launches hands out in all, without planning: one per chunk.
inline int64_t count_chunks(const std::vector<int64_t>& numels, int64_t chunk_size) {
  int64_t chunks = 0;
  for (const int64_t numel : numels) chunks += chunks_of(numel, chunk_size);
  return chunks;
}

inline int64_t total_blocks(const std::vector<PlannedLaunch>& launches) {
  if (launches.empty()) return 0;
  return launches.back().first_block + static_cast<int64_t>(launches.back().blocks.size());
}

}  // namespace launch_plan
}  // namespace fused_accum
