// Where one tensor's elements of each Adam list start, as a CPU loop walks them.
#pragma once

namespace fused_accum {
namespace cpu {

template <typename P, typename G>
struct RowPointers {
  P* param;
  G* grad;
  P* exp_avg;
  P* exp_avg_sq;
  P* max_exp_avg_sq;  // null without amsgrad
};

}  // namespace cpu
}  // namespace fused_accum
