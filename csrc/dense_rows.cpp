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
    : originals_(lists), mutated_(mutated), staged_(lists.size()) {
  const size_t rows = lists.empty() ? 0 : lists[0].size();
  staged_index_.assign(rows, -1);
  for (size_t i = 0; i < rows; ++i) {
    if (shares_dense_layout(lists, i)) continue;
    staged_index_[i] = static_cast<int64_t>(staged_rows_.size());
    staged_rows_.push_back(i);
    for (size_t k = 0; k < lists.size(); ++k) staged_[k].push_back(lists[k][i].contiguous());
  }
}

void DenseRows::finish() {
  for (size_t j = 0; j < staged_rows_.size(); ++j) {
    for (size_t k = 0; k < originals_.size(); ++k) {
      const at::Tensor& original = originals_[k][staged_rows_[j]];
      const at::Tensor& staged = staged_[k][j];
      if (mutated_[k] && !staged.is_same(original)) {
        original.copy_(staged);
      }
    }
  }
}

}  // namespace fused_accum
