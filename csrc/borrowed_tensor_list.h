// A tensor list for an operator call that takes no reference counts.
//
// Copying an at::Tensor that Python also holds is not one atomic increment:
// the first C++ reference makes the TensorImpl take a reference on its Python
// object, through the interpreter, and dropping it gives that back under the
// GIL. With thousands of small params that was a fifth of an eager step. The
// list below holds borrows instead, so whoever builds it must keep every
// tensor alive for as long as the list is used: the param group step holds a
// Python reference to each object it borrows from.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/MaybeOwned.h>

#include <vector>

namespace fused_accum {

class BorrowedTensorList {
 public:
  BorrowedTensorList() = default;
  BorrowedTensorList(BorrowedTensorList&&) = default;
  BorrowedTensorList& operator=(BorrowedTensorList&&) = delete;
  BorrowedTensorList(const BorrowedTensorList&) = delete;
  BorrowedTensorList& operator=(const BorrowedTensorList&) = delete;
  ~BorrowedTensorList() {
    for (at::Tensor& t : tensors_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  }

  void push_back(const at::Tensor& t) {
    tensors_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(t));
  }
  operator at::TensorList() const { return tensors_; }

 private:
  std::vector<at::Tensor> tensors_;
};

}  // namespace fused_accum
