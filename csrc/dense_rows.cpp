#include "dense_rows.h"

namespace fused_accum {

namespace {

bool shares_dense_layout(const std::vector<at::TensorList>& lists, size_t i) {
  const at::Tensor& lead = lists[0][i];
  if (!lead.is_non_overlapping_and_dense()) return false;
  for (size_t k = 1; k < lists.size(); ++k) {
    const at::Tensor& t = lists[k][i];
    if (!t.is_non_overlapping_and_dense() || t.strides() != lead.strides()) return false;
  }
  return true;
}

}  // namespace

DenseRows::DenseRows(const std::vector<at::TensorList>& lists,
                     const std::vector<bool>& mutated)
    : originals_(lists), mutated_(mutated), views_(lists.size()) {
  rows_ = lists.empty() ? 0 : lists[0].size();
  for (size_t k = 0; k < lists.size(); ++k) views_[k].reserve(rows_);
  for (size_t i = 0; i < rows_; ++i) {
    const bool in_place = shares_dense_layout(lists, i);
    if (!in_place) staged_rows_.push_back(i);
    for (size_t k = 0; k < lists.size(); ++k) {
      const at::Tensor& t = lists[k][i];
      views_[k].push_back(in_place ? t : t.contiguous());
    }
  }
}

void DenseRows::finish() {
  for (size_t i : staged_rows_) {
    for (size_t k = 0; k < originals_.size(); ++k) {
      const at::Tensor& original = originals_[k][i];
      const at::Tensor& staged = views_[k][i];
      if (mutated_[k] && !staged.is_same(original)) {
        original.copy_(staged);
      }
    }
  }
}

}  // namespace fused_accum
