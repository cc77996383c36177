// One parallel region over the elements of many tensors.
//
// The tensors are laid end to end and the combined element range is split
// evenly between threads, so a thread's share is the same however the elements
// are spread over tensors: a few huge tensors and thousands of small ones both
// keep both cores busy, and a small tensor costs a loop, not a parallel launch.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fused_accum {
namespace cpu {

// Elements per thread below which splitting costs more than it saves.
constexpr int64_t kParallelGrain = 32768;

class Segments {
 public:
  explicit Segments(const std::vector<int64_t>& numels) : starts_(numels.size() + 1, 0) {
    for (size_t i = 0; i < numels.size(); ++i) starts_[i + 1] = starts_[i] + numels[i];
  }

  int64_t total() const { return starts_.back(); }

  // Calls fn(tensor_index, begin, end) for every piece of [first, last) of the
  // combined range; begin and end are offsets inside that tensor.
  template <typename Fn>
  void for_each_piece(int64_t first, int64_t last, const Fn& fn) const {
    auto it = std::upper_bound(starts_.begin(), starts_.end(), first);
    int64_t t = static_cast<int64_t>(it - starts_.begin()) - 1;
    const int64_t tensors = static_cast<int64_t>(starts_.size()) - 1;
    for (int64_t pos = first; pos < last && t < tensors; ++t) {
      const int64_t end = std::min(last, starts_[t + 1]);
      if (end > pos) fn(t, pos - starts_[t], end - starts_[t]);
      pos = std::max(pos, end);
    }
  }

  template <typename Fn>
  void parallel_for_each_piece(const Fn& fn) const {
    at::parallel_for(0, total(), kParallelGrain, [&](int64_t first, int64_t last) {
      for_each_piece(first, last, fn);
    });
  }

 private:
  std::vector<int64_t> starts_;  // prefix sums of numels
};

}  // namespace cpu
}  // namespace fused_accum
