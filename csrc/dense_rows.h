// Gives kernels flat storage to walk. Row i is the i-th tensor of every list
// (param, grad, moments...). A row whose tensors are all dense with one and the
// same strides (contiguous, channels_last, any permutation) is used in place:
// elementwise math does not care about the order of elements. Any other row is
// staged through contiguous copies, and the copies of mutated tensors are
// written back by finish().
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace fused_accum {

class DenseRows {
 public:
  // `lists[k]` is one argument; `mutated[k]` says whether the kernel writes it.
  DenseRows(const std::vector<at::TensorList>& lists, const std::vector<bool>& mutated);

  // The tensor the kernel should use for list k, row i.
  const at::Tensor& at(size_t k, size_t i) const { return views_[k][i]; }
  size_t rows() const { return rows_; }

  // Copies staged results back into the caller's tensors.
  void finish();

 private:
  std::vector<at::TensorList> originals_;
  std::vector<bool> mutated_;
  std::vector<std::vector<at::Tensor>> views_;
  std::vector<size_t> staged_rows_;
  size_t rows_ = 0;
};

}  // namespace fused_accum
