// The Adam update kernel: chunks of all tensors, each element through
// AdamElementOp (the formula itself lives in adam_math.h only). Instantiated
// once per decay mode in adam_update_l2.cu and adam_update_decoupled.cu, so the
// two halves compile in parallel.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <type_traits>
#include <vector>

#include "../adam_element_op.h"
#include "../adam_flag_dispatch.h"
#include "../adam_rows.h"
#include "multi_tensor_apply.cuh"

namespace fused_accum {
namespace cuda {

// Scalars of one call. The pointers are float64 device copies of the optional
// tensor arguments (null when absent), dereferenced by the kernels.
struct AdamDeviceArgs {
  double lr;
  const double* lr_tensor;
  const double* grad_factor;
  const double* found_inf;
  double beta1;
  double beta2;
  double weight_decay;
  double eps;
  bool window;  // grad_factor is a window multiplier; a non-finite one skips the step

  __device__ __forceinline__ bool skipped() const {
    return adam_step_skipped(found_inf, window ? grad_factor : nullptr);
  }
};

template <typename G>
struct ZeroOp {
  __device__ __forceinline__ void operator()(G& g) const { g = G(0.0f); }
};

template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradMode GRAD_MODE>
struct AdamChunk {
  // The element lists, then the step counts (one float per tensor).
  static constexpr int kDepth = AMSGRAD ? 6 : 5;
  static constexpr int kStepRow = kDepth - 1;
  using T = typename MathType<P>::type;
  // A plain step only reads the grads: never write them back.
  using GradStorage = std::conditional_t<GRAD_MODE == GradMode::kPlain, const G, G>;

  AdamDeviceArgs args;

  __device__ __forceinline__ void operator()(const ChunkMeta<kDepth>& meta, int slot,
                                             int64_t begin, int64_t count,
                                             int64_t /*global_block*/) const {
    GradStorage* grad = static_cast<GradStorage*>(meta.addresses[kGrads][slot]) + begin;
    if (args.skipped()) {
      // A discarded window still starts the next one from zero.
      if constexpr (GRAD_MODE == GradMode::kScaleAndZero) {
        ZeroOp<G> zero;
        for_each_element(count, zero, grad);
      }
      return;
    }
    // Already incremented by the step kernel, earlier on this stream.
    const double step = *static_cast<const float*>(meta.addresses[kStepRow][slot]);
    const double lr = args.lr_tensor != nullptr ? *args.lr_tensor : args.lr;
    AdamElementOp<P, G, MODE, AMSGRAD, MAXIMIZE, GRAD_MODE> op{
        make_adam_scalars<T>(lr, args.beta1, args.beta2, args.weight_decay, args.eps, step),
        grad_factor_as<T>(args.grad_factor != nullptr ? *args.grad_factor : 1.0)};
    P* param = static_cast<P*>(meta.addresses[kParams][slot]) + begin;
    P* exp_avg = static_cast<P*>(meta.addresses[kExpAvgs][slot]) + begin;
    P* exp_avg_sq = static_cast<P*>(meta.addresses[kExpAvgSqs][slot]) + begin;
    if constexpr (AMSGRAD) {
      P* max_exp_avg_sq = static_cast<P*>(meta.addresses[kMaxExpAvgSqs][slot]) + begin;
      for_each_element(count, op, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq);
    } else {
      for_each_element(count, op, param, grad, exp_avg, exp_avg_sq);
    }
  }
};

template <DecayMode MODE, typename P, typename G>
void launch_typed_update(const DenseRows& rows, const AdamCall& call,
                         const AdamDeviceArgs& args) {
  dispatch_adam_flags(call.hyper, call.grad_mode, [&](auto mode, auto amsgrad, auto maximize,
                                                      auto grad_mode) {
    constexpr GradMode GRAD_MODE = decltype(grad_mode)::value;
    if constexpr (decltype(mode)::value != MODE) {
      // The other decay mode lives in the other translation unit.
      TORCH_CHECK(false, "fused_accum: Adam update instantiated for the other decay mode");
    } else if constexpr (GRAD_MODE != GradMode::kScaleAndZero && !std::is_same_v<P, G>) {
      // check_adam_call allows float32 grads for other params in the window step only.
      TORCH_CHECK(false, "fused_accum: float32 grads for ", c10::CppTypeToScalarType<P>::value,
                  " params are only read by the window step");
    } else {
      using Chunk = AdamChunk<P, G, decltype(mode)::value, decltype(amsgrad)::value,
                              decltype(maximize)::value, GRAD_MODE>;
      std::array<std::vector<void*>, Chunk::kDepth> addresses;
      std::vector<int64_t> numels(rows.rows());
      for (size_t i = 0; i < rows.rows(); ++i) {
        for (int k = 0; k < Chunk::kStepRow; ++k) {
          addresses[k].push_back(rows.at(k, i).data_ptr());
        }
        addresses[Chunk::kStepRow].push_back(call.lists.state_steps[i].data_ptr());
        numels[i] = rows.at(kParams, i).numel();
      }
      apply_chunked<Chunk::kDepth>(addresses, numels, Chunk{args});
    }
  });
}

// Launches the update for the rows of a call whose decay mode is MODE, after
// the step counts were incremented on the same stream.
template <DecayMode MODE>
void launch_adam_update(const DenseRows& rows, const AdamCall& call,
                        const AdamDeviceArgs& args) {
  dispatch_adam_storage(call, [&](auto param_tag, auto grad_tag) {
    launch_typed_update<MODE, decltype(param_tag), decltype(grad_tag)>(rows, call, args);
  });
}

// Defined in adam_update_l2.cu and adam_update_decoupled.cu.
extern template void launch_adam_update<DecayMode::kL2>(const DenseRows&, const AdamCall&,
                                                        const AdamDeviceArgs&);
extern template void launch_adam_update<DecayMode::kDecoupled>(const DenseRows&,
                                                               const AdamCall&,
                                                               const AdamDeviceArgs&);

}  // namespace cuda
}  // namespace fused_accum
