// What a host-side Adam step does before its element loop, shared by the CPU
// kernel and the host run of the element functor so the two cannot disagree on
// when a step is skipped or how it is counted.
#pragma once

#include <atomic>
#include <optional>
#include <vector>

#include "../adam_args.h"
#include "../adam_element_op.h"
#include "../adam_rows.h"
#include "../metadata_prefetch.h"
#include "../parallel_rows.h"

namespace fused_accum {
namespace cpu {

// The value of an optional one-element tensor argument, read on the host.
inline double host_value_or(const std::optional<at::Tensor>& t, double fallback) {
  return t.has_value() ? t->item<double>() : fallback;
}

// The data of a tensor whose dtype, T, check_adam_call has established.
// data_ptr<T>() would check the dtype again, in a library call per tensor: a
// tenth of a step's own work with thousands of small params.
template <typename T>
T* checked_data(const at::Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// Rows whose metadata a checking thread asks for while it checks the rows before:
// far enough ahead to keep many misses in flight, near enough that the lines are
// still in cache when their turn comes. Against prefetching a thread's whole share
// first, 2-4% faster on 2000 params of 1024 elements and on 20000 of 64; 96 rows
// did as well as 32.
constexpr int64_t kPrefetchRows = 32;

// check_adam_call's row checks, split between threads (parallel_rows.h). A thread
// prefetches its rows' metadata a level at a time (metadata_prefetch.h), and once
// a block is checked, its storages and step counts, which the count, layout and
// pointer loops that follow read. A thread stops at its first failed row; then all
// rows are checked again in order, so that the error names the first bad row, as a
// serial check would.
inline void check_rows_in_parallel(const AdamCall& call, const char* op) {
  const AdamTensorLists& l = call.lists;
  const size_t n = l.params.size();
  std::atomic<bool> failed{false};
  // check_adam_lists has passed: a list holds n tensors, or none (max_exp_avg_sqs).
  const at::TensorList lists[] = {l.params,      l.grads,           l.exp_avgs,
                                  l.exp_avg_sqs, l.max_exp_avg_sqs, l.state_steps};
  const auto prefetch_rows = [&](int64_t from, int64_t to, auto prefetch) {
    if (from >= to) return;
    for (at::TensorList list : lists) {
      if (!list.empty()) prefetch(list.slice(from, to - from));
    }
  };
  parallel_for_rows(n, [&](int64_t begin, int64_t end) {
    const auto impls = [](at::TensorList t) { prefetch_impls(t); };
    prefetch_rows(begin, std::min(end, begin + kPrefetchRows), impls);
    for (int64_t block = begin; block < end; block += kPrefetchRows) {
      const int64_t block_end = std::min(end, block + kPrefetchRows);
      prefetch_rows(block_end, std::min(end, block_end + kPrefetchRows), impls);
      try {
        check_adam_rows(call, op, block, block_end);
      } catch (...) {
        failed = true;
        return;
      }
      prefetch_rows(block, block_end, [](at::TensorList t) { prefetch_storage_impls(t); });
      prefetch_data(l.state_steps.slice(block, block_end - block));
    }
  });
  if (failed) check_adam_rows(call, op, 0, n);
}

struct HostStep {
  std::vector<double> steps;  // each param's step count, after this step
  double lr;
  double grad_factor;
};

// Honours a skip (GradScaler's found_inf, or a non-finite window multiplier):
// nothing changes, except that a discarded accumulation window leaves clean
// buffers; returns nullopt. Otherwise counts the step of every param.
inline std::optional<HostStep> begin_host_step(const AdamCall& call) {
  const AdamTensorLists& l = call.lists;
  const double found_inf = host_value_or(call.found_inf, 0.0);
  const double grad_factor = host_value_or(call.grad_factor, 1.0);
  const bool window = call.grad_mode == GradMode::kScaleAndZero;
  if (adam_step_skipped(&found_inf, window ? &grad_factor : nullptr)) {
    if (window) {
      for (const at::Tensor& g : l.grads) g.zero_();
    }
    return std::nullopt;
  }
  HostStep step{std::vector<double>(l.state_steps.size()),
                host_value_or(call.lr_tensor, call.hyper.lr), grad_factor};
  parallel_for_rows(l.state_steps.size(), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* count = checked_data<float>(l.state_steps[i]);
      *count += 1.0f;
      step.steps[i] = static_cast<double>(*count);
    }
  });
  return step;
}

// A whole host-side Adam call: checks, the prologue above, staged rows, then
// update(param_tag, grad_tag, rows, step) with the storage types of the call.
template <typename Update>
void run_host_adam(const AdamCall& call, const char* op, const Update& update) {
  check_adam_lists(call, op);
  if (call.lists.params.empty()) return;
  check_rows_in_parallel(call, op);
  const std::optional<HostStep> step = begin_host_step(call);
  if (!step) return;
  DenseRows rows = adam_dense_rows(call, LayoutScan::kSplit);
  dispatch_adam_storage(call, [&](auto param_tag, auto grad_tag) {
    update(param_tag, grad_tag, rows, *step);
  });
  rows.finish();
}

}  // namespace cpu
}  // namespace fused_accum
