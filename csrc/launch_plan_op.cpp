// Exposes the CUDA launcher's planner (cuda/launch_plan.h, plain C++) in every
// build, so tests/test_cuda_launch_plan.py checks the exact planning code of
// the CUDA kernels on machines without a GPU.
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

#include "cuda/launch_plan.h"

namespace fused_accum {
namespace {

// One row of five per block, in launch order:
// (launch, global block, slot, tensor, chunk).
std::vector<int64_t> plan_chunks(c10::IntArrayRef numels, int64_t chunk_size,
                                 int64_t max_tensors, int64_t max_blocks) {
  const char* op = "fused_accum_testing.plan_chunks";
  TORCH_CHECK(chunk_size > 0, op, ": chunk_size must be positive, got ", chunk_size);
  TORCH_CHECK(max_tensors > 0 && max_tensors <= 255, op,
              ": max_tensors must be in [1, 255], got ", max_tensors);
  TORCH_CHECK(max_blocks > 0, op, ": max_blocks must be positive, got ", max_blocks);
  for (size_t i = 0; i < numels.size(); ++i) {
    TORCH_CHECK(numels[i] >= 0, op, ": numels[", i, "] must be >= 0, got ", numels[i]);
  }
  const auto launches = launch_plan::plan_launches(
      numels.vec(), chunk_size, static_cast<int>(max_tensors), static_cast<int>(max_blocks));
  std::vector<int64_t> rows;
  for (size_t l = 0; l < launches.size(); ++l) {
    const launch_plan::PlannedLaunch& launch = launches[l];
    for (size_t b = 0; b < launch.blocks.size(); ++b) {
      const launch_plan::BlockTask& task = launch.blocks[b];
      rows.insert(rows.end(), {static_cast<int64_t>(l),
                               launch.first_block + static_cast<int64_t>(b), task.slot,
                               launch.tensors[task.slot], task.chunk});
    }
  }
  return rows;
}

// What the CUDA launcher passes to the planner for `depth` pointers per tensor:
// (max tensors per launch, max blocks per launch, chunk size, metadata bytes budget).
std::vector<int64_t> launch_capacity(int64_t depth) {
  TORCH_CHECK(depth >= 1 && depth <= 8, "fused_accum_testing.launch_capacity: depth must "
              "be in [1, 8], got ", depth);
  return {launch_plan::max_tensors_per_launch(static_cast<int>(depth)),
          launch_plan::kMaxBlocksPerLaunch, launch_plan::kChunkSize, launch_plan::kMetaBytes};
}

}  // namespace
}  // namespace fused_accum

TORCH_LIBRARY_FRAGMENT(fused_accum_testing, m) {
  m.def("plan_chunks(int[] numels, int chunk_size, int max_tensors, int max_blocks) -> int[]",
        &fused_accum::plan_chunks);
  m.def("launch_capacity(int depth) -> int[]", &fused_accum::launch_capacity);
}
