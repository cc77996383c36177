// Gives kernels flat storage to walk. Row i is the i-th tensor of every list
// (param, grad, moments...). A row whose tensors are all dense with one and the
// same strides (contiguous, channels_last, any permutation) is used in place:
// elementwise math does not care about the order of elements. Any other row is
// staged through contiguous copies, and the copies of mutated tensors are
// written back by finish().
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fused_accum {

class DenseRows {
 public:
  // `lists[k]` is one argument; `mutated[k]` says whether the kernel writes it.
  DenseRows(const std::vector<at::TensorList>& lists, const std::vector<bool>& mutated);

  // The tensor the kernel should use for list k, row i.
  const at::Tensor& at(size_t k, size_t i) const {
    const int64_t staged = staged_index_[i];
    return staged < 0 ? originals_[k][i] : staged_[k][staged];
  }
  size_t rows() const { return staged_index_.size(); }

  // Copies staged results back into the caller's tensors.
  void finish();

 private:
  // Rows in place are not copied: with thousands of small tensors a copy of each
  // would cost a reference count apiece.
  std::vector<at::TensorList> originals_;
  std::vector<bool> mutated_;
  std::vector<int64_t> staged_index_;            // per row: -1, or its index in staged_rows_
  std::vector<size_t> staged_rows_;              // the rows that were staged
  std::vector<std::vector<at::Tensor>> staged_;  // staged_[k][j]: list k of staged row j
};

}  // namespace fused_accum
