// What every Adam backend does before its element loop: stage the rows it will
// walk, and pick the storage types of params and grads.
#pragma once

#include <ATen/Dispatch.h>

#include <type_traits>
#include <vector>

#include "adam_args.h"
#include "dense_rows.h"

namespace fused_accum {

// The lists of a row, in the order adam_dense_rows stages them.
enum AdamRow { kParams = 0, kGrads, kExpAvgs, kExpAvgSqs, kMaxExpAvgSqs };

// Row i: params[i], grads[i], exp_avgs[i], exp_avg_sqs[i] (and max_exp_avg_sqs[i]
// with amsgrad), dense or staged. Grads are written only when the step rewrites them.
inline DenseRows adam_dense_rows(const AdamCall& call, LayoutScan scan) {
  const AdamTensorLists& l = call.lists;
  std::vector<at::TensorList> lists = {l.params, l.grads, l.exp_avgs, l.exp_avg_sqs};
  std::vector<bool> mutated = {true, call.grad_mode != GradMode::kPlain, true, true};
  if (call.hyper.amsgrad) {
    lists.push_back(l.max_exp_avg_sqs);
    mutated.push_back(true);
  }
  return DenseRows(lists, mutated, scan);
}

// Calls fn(P{}, G{}) with the param and grad storage types of a checked call:
// G is P, or float for the float32 accumulation buffers of other params.
template <typename Fn>
void dispatch_adam_storage(const AdamCall& call, const Fn& fn) {
  const at::ScalarType grad_dtype = call.lists.grads[0].scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, call.lists.params[0].scalar_type(),
                                  "fused_accum_adam", [&] {
    if (grad_dtype == at::kFloat && !std::is_same_v<scalar_t, float>) {
      fn(scalar_t{}, float{});
    } else {
      fn(scalar_t{}, scalar_t{});
    }
  });
}

}  // namespace fused_accum
