// CUDA kernel of the Adam step operators: checks, float64 device copies of the
// scalar tensors, one small launch that counts the steps, then the update over
// chunks of all tensors, each element through AdamElementOp (the formula itself
// lives in adam_math.h only). Every state_step, lr tensor, grad_scale or
// multiplier and found_inf is read on the device: no host synchronisation, so a
// step can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <type_traits>
#include <vector>

#include "../adam_call.h"
#include "../adam_element_op.h"
#include "multi_tensor_apply.cuh"

namespace fused_accum {
namespace cuda {
namespace {

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
          GradSource GRAD_SOURCE>
struct AdamChunk {
  // The element lists, then the step counts (one float per tensor).
  static constexpr int kDepth = AMSGRAD ? 6 : 5;
  static constexpr int kStepRow = kDepth - 1;
  using T = typename MathType<P>::type;
  // A plain step only reads the grads: never write them back.
  using GradStorage = std::conditional_t<GRAD_SOURCE == GradSource::kPlain, const G, G>;

  AdamDeviceArgs args;

  __device__ __forceinline__ void operator()(const ChunkMeta<kDepth>& meta, int slot,
                                             int64_t begin, int64_t count,
                                             int64_t /*global_block*/) const {
    GradStorage* grad = static_cast<GradStorage*>(meta.addresses[kGrads][slot]) + begin;
    if (args.skipped()) {
      // A discarded window still starts the next one from zero.
      if constexpr (GRAD_SOURCE == GradSource::kWindowBuffer) {
        ZeroOp<G> zero;
        for_each_element(count, zero, grad);
      }
      return;
    }
    // Already incremented by the step kernel, earlier on this stream.
    const double step = *static_cast<const float*>(meta.addresses[kStepRow][slot]);
    const double lr = args.lr_tensor != nullptr ? *args.lr_tensor : args.lr;
    AdamElementOp<P, G, MODE, AMSGRAD, MAXIMIZE, GRAD_SOURCE> op{
        make_adam_scalars<T>(lr, args.beta1, args.beta2, args.weight_decay, args.eps, step),
        grad_factor_as<T>(args.grad_factor != nullptr ? *args.grad_factor : 1.0, GRAD_SOURCE)};
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

template <typename P, typename G>
void launch_typed_update(const DenseRows& rows, const AdamCall& call,
                         const AdamDeviceArgs& args) {
  dispatch_adam_flags(call, [&](auto mode, auto amsgrad, auto maximize, auto grad_source) {
    constexpr GradSource GRAD_SOURCE = decltype(grad_source)::value;
    if constexpr (GRAD_SOURCE != GradSource::kWindowBuffer && !std::is_same_v<P, G>) {
      // check_adam_call allows float32 grads for other params in the window step only.
      TORCH_CHECK(false, "fused_accum: float32 grads for ", c10::CppTypeToScalarType<P>::value,
                  " params are only read by the window step");
    } else {
      using Chunk = AdamChunk<P, G, decltype(mode)::value, decltype(amsgrad)::value,
                              decltype(maximize)::value, GRAD_SOURCE>;
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

struct IncrementStepOp {
  AdamDeviceArgs args;
  __device__ __forceinline__ void operator()(float& step) const {
    if (!args.skipped()) step += 1.0f;
  }
};

// Absent optional scalars stay undefined; present ones become float64 on the
// device (a no-op for float64), so kernels read one type whatever was passed.
at::Tensor as_device_double(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->to(at::kDouble).contiguous() : at::Tensor();
}

const double* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<double>() : nullptr;
}

void increment_steps(at::TensorList state_steps, const AdamDeviceArgs& args) {
  std::array<std::vector<void*>, 1> addresses;
  for (const at::Tensor& step : state_steps) addresses[0].push_back(step.data_ptr());
  const std::vector<int64_t> numels(state_steps.size(), 1);
  apply_chunked<1>(addresses, numels, ElementwiseChunk<IncrementStepOp, float>{{args}});
}

void adam_cuda(const AdamCall& call) {
  check_adam_call(call);
  const char* op = call.op;
  const AdamTensorLists& l = call.lists;
  if (l.params.empty()) return;
  TORCH_CHECK(l.params[0].is_cuda(), op, ": params must be CUDA tensors here, got ",
              l.params[0].device());
  const c10::cuda::CUDAGuard guard(l.params[0].device());

  const at::Tensor lr_tensor = as_device_double(call.lr_tensor);
  const at::Tensor grad_factor = as_device_double(call.grad_factor);
  const at::Tensor found_inf = as_device_double(call.found_inf);
  const AdamHyperparams& h = call.hyper;
  const AdamDeviceArgs args{h.lr,
                            data_or_null(lr_tensor),
                            data_or_null(grad_factor),
                            data_or_null(found_inf),
                            h.beta1,
                            h.beta2,
                            h.weight_decay,
                            h.eps,
                            call.grad_source == GradSource::kWindowBuffer};

  increment_steps(l.state_steps, args);

  DenseRows rows = adam_dense_rows(call);
  dispatch_adam_storage(call, [&](auto param_tag, auto grad_tag) {
    launch_typed_update<decltype(param_tag), decltype(grad_tag)>(rows, call, args);
  });
  rows.finish();
}

}  // namespace

}  // namespace cuda
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CUDA, m) {
  fused_accum::register_adam_impls<fused_accum::cuda::adam_cuda>(m);
}
