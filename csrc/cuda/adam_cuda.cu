// CUDA kernel of the Adam step operators: checks, float64 device copies of the
// scalar tensors, one small launch that counts the steps, then the update over
// chunks of all tensors, each element through AdamElementOp (the formula itself
// lives in adam_math.h only). Every state_step, rounding seed, lr tensor,
// grad_scale or multiplier and found_inf is read on the device: no host
// synchronisation, so a step can be captured in a CUDA graph.
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

// The moments' storage, chosen at run time: it is the same for a whole launch,
// so the switch on it costs next to nothing, and the kernel is not instantiated
// once per state dtype. kMath is float32 (float64 for float64 params, which
// keep float64 moments).
enum class MomentStorage : int { kMath = 0, kBFloat16 = 1, kHalf = 2 };

MomentStorage moment_storage_of(at::ScalarType state) {
  switch (state) {
    case at::kBFloat16:
      return MomentStorage::kBFloat16;
    case at::kHalf:
      return MomentStorage::kHalf;
    default:
      return MomentStorage::kMath;  // float32, or float64 with float64 params (checked)
  }
}

// Calls fn(S{}) with the moments' storage type S; T is the math type.
template <typename T, typename Fn>
__device__ __forceinline__ void with_moment_storage(MomentStorage storage, const Fn& fn) {
  if constexpr (std::is_same_v<T, double>) {
    fn(T{});
  } else if (storage == MomentStorage::kBFloat16) {
    fn(c10::BFloat16{});
  } else if (storage == MomentStorage::kHalf) {
    fn(c10::Half{});
  } else {
    fn(T{});
  }
}

// The ILP elements of one moment list a thread holds, in the math type T: loaded
// from the moments' storage S and stored back rounded to nearest, as the CPU
// kernel stores them (the element functor runs with S = T on these copies).
// The members mirror Lane's, with S given by the caller.
template <typename T>
struct MomentLane {
  void* ptr;  // the chunk's first element
  T v[kILP];

  template <typename S>
  __device__ __forceinline__ S* data() const {
    return static_cast<S*>(ptr);
  }
  template <typename S>
  __device__ __forceinline__ void load_vec(int64_t i) {
    Lane<S> lane{data<S>()};
    lane.load_vec(i);
#pragma unroll
    for (int k = 0; k < kILP; ++k) v[k] = static_cast<T>(lane.v[k]);
  }
  template <typename S>
  __device__ __forceinline__ void store_vec(int64_t i) {
    Lane<S> lane{data<S>()};
#pragma unroll
    for (int k = 0; k < kILP; ++k) lane.v[k] = static_cast<S>(v[k]);
    lane.store_vec(i);
  }
  template <typename S>
  __device__ __forceinline__ void load(int k, int64_t i, int64_t n) {
    if (i < n) v[k] = static_cast<T>(data<S>()[i]);
  }
  template <typename S>
  __device__ __forceinline__ void store(int k, int64_t i, int64_t n) {
    if (i < n) data<S>()[i] = static_cast<S>(v[k]);
  }
};

// Everything one thread holds for ILP elements of one tensor's chunk. The lists
// a call does not use are never touched: max_exp_avg_sq without AMSGRAD, master
// and compensation (16-bit params only) unless the write mode reads them, the
// param itself when a master holds the value.
template <typename P, typename GradStorage, typename T, bool AMSGRAD>
struct AdamLanes {
  static constexpr bool kNarrow = kNarrowStorage<P>;

  Lane<P> param;
  Lane<GradStorage> grad;
  MomentLane<T> exp_avg;
  MomentLane<T> exp_avg_sq;
  MomentLane<T> max_exp_avg_sq;  // ptr null without AMSGRAD
  Lane<float> master;            // ptr null unless ParamWrite::kFromMaster
  Lane<P> compensation;          // ptr null unless ParamWrite::kKahan
  MomentStorage moments;
  bool read_param;

  __device__ __forceinline__ bool aligned() const {
    bool ok = Lane<P>::aligned(param.ptr) && Lane<GradStorage>::aligned(grad.ptr);
    with_moment_storage<T>(moments, [&](auto tag) {
      using S = decltype(tag);
      ok = ok && Lane<S>::aligned(exp_avg.template data<S>()) &&
           Lane<S>::aligned(exp_avg_sq.template data<S>()) &&
           (!AMSGRAD || Lane<S>::aligned(max_exp_avg_sq.template data<S>()));
    });
    if constexpr (kNarrow) {
      // A null pointer counts as aligned.
      ok = ok && Lane<float>::aligned(master.ptr) && Lane<P>::aligned(compensation.ptr);
    }
    return ok;
  }

  // Loads (STORE false) or stores every list in use: with VECTOR the vector of
  // ILP elements `index`, else elements index + threadIdx.x + k * blockDim.x
  // below n into (out of) slot k. The moments' storage is switched on once per
  // transfer, for all three moment lists.
  template <bool STORE, bool VECTOR>
  __device__ __forceinline__ void transfer(int64_t index, int64_t n) {
    const auto element = [&](int k) {
      return index + threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    };
    const auto plain = [&](auto& lane) {
      if constexpr (VECTOR) {
        STORE ? lane.store_vec(index) : lane.load_vec(index);
      } else {
#pragma unroll
        for (int k = 0; k < kILP; ++k) STORE ? lane.store(k, element(k), n)
                                             : lane.load(k, element(k), n);
      }
    };
    if (STORE || read_param) plain(param);
    plain(grad);  // stores are no-ops for read-only grads
    with_moment_storage<T>(moments, [&](auto tag) {
      using S = decltype(tag);
      const auto moment = [&](MomentLane<T>& lane) {
        if constexpr (VECTOR) {
          STORE ? lane.template store_vec<S>(index) : lane.template load_vec<S>(index);
        } else {
#pragma unroll
          for (int k = 0; k < kILP; ++k) STORE ? lane.template store<S>(k, element(k), n)
                                               : lane.template load<S>(k, element(k), n);
        }
      };
      moment(exp_avg);
      moment(exp_avg_sq);
      if constexpr (AMSGRAD) moment(max_exp_avg_sq);
    });
    if constexpr (kNarrow) {
      if (master.ptr != nullptr) plain(master);
      if (compensation.ptr != nullptr) plain(compensation);
    }
  }

  template <typename Op>
  __device__ __forceinline__ void apply(const Op& op, int k, uint32_t noise) {
    op(param.v[k], grad.v[k], exp_avg.v[k], exp_avg_sq.v[k],
       AMSGRAD ? &max_exp_avg_sq.v[k] : nullptr, &master.v[k], &compensation.v[k], noise);
  }
};

// Steps elements [0, n) of a chunk through op, over the block's threads, in the
// pattern of for_each_element (multi_tensor_apply.cuh): one vector load per list
// and thread where every list allows it (every chunk but a tensor's last, for
// aligned storage), ILP coalesced strided loads otherwise. With stochastic rounding each element gets rounding_noise(base, its index in its
// tensor); `first` is the low 32 bits of the chunk's first index.
template <typename Op, typename Lanes>
__device__ __forceinline__ void step_elements(int64_t n, const Op& op, Lanes lanes,
                                              bool stochastic, uint32_t base, uint32_t first) {
  const auto noise_of = [&](int64_t i) {
    return stochastic ? rounding_noise(base, first + static_cast<uint32_t>(i)) : 0u;
  };
  if (n % kILP == 0 && lanes.aligned()) {
    for (int64_t i = threadIdx.x; i < n / kILP; i += blockDim.x) {
      lanes.template transfer<false, true>(i, n);
#pragma unroll
      for (int k = 0; k < kILP; ++k) lanes.apply(op, k, noise_of(i * kILP + k));
      lanes.template transfer<true, true>(i, n);
    }
    return;
  }
  for (int64_t base_index = 0; base_index < n;
       base_index += static_cast<int64_t>(blockDim.x) * kILP) {
    lanes.template transfer<false, false>(base_index, n);
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      const int64_t i = base_index + threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (i < n) lanes.apply(op, k, noise_of(i));
    }
    lanes.template transfer<true, false>(base_index, n);
  }
}

// The moments' storage and the write mode are runtime members (uniform per
// launch); DIVISION follows them (division_for), so 16-bit params have two
// instances per flag set and float32/float64 params one.
template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradSource GRAD_SOURCE, ConstantDivision DIVISION>
struct AdamChunk {
  // Rows: the four element lists; max_exp_avg_sqs with AMSGRAD; for 16-bit
  // params one row whose meaning follows the write mode (the master or the
  // compensation, an element list; the rounding seed, one int64 per tensor;
  // null in place); then the step counts (one float per tensor).
  static constexpr bool kHasWriteRow = kNarrowStorage<P>;
  static constexpr int kMaxRow = 4;
  static constexpr int kWriteRow = AMSGRAD ? 5 : 4;
  static constexpr int kStepRow = kWriteRow + (kHasWriteRow ? 1 : 0);
  static constexpr int kDepth = kStepRow + 1;
  using T = typename MathType<P>::type;
  // The functor runs on copies of the moments in the math type.
  using Op = AdamElementOp<P, G, T, MODE, AMSGRAD, MAXIMIZE, GRAD_SOURCE, DIVISION>;
  // A plain step only reads the grads: never write them back.
  using GradStorage = std::conditional_t<GRAD_SOURCE == GradSource::kPlain, const G, G>;

  AdamDeviceArgs args;
  MomentStorage moments;
  ParamWrite write;

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
    const Op op{
        make_adam_scalars<T>(lr, args.beta1, args.beta2, args.weight_decay, args.eps, step),
        grad_factor_as<T>(args.grad_factor != nullptr ? *args.grad_factor : 1.0, GRAD_SOURCE),
        write};
    AdamLanes<P, GradStorage, T, AMSGRAD> lanes{
        {static_cast<P*>(meta.addresses[kParams][slot]) + begin},
        {grad},
        {meta.addresses[kExpAvgs][slot]},
        {meta.addresses[kExpAvgSqs][slot]},
        {AMSGRAD ? meta.addresses[kMaxRow][slot] : nullptr},
        {nullptr},
        {nullptr},
        moments,
        write != ParamWrite::kFromMaster};
    // The moment lanes start at the chunk's first element too.
    with_moment_storage<T>(moments, [&](auto tag) {
      using S = decltype(tag);
      lanes.exp_avg.ptr = lanes.exp_avg.template data<S>() + begin;
      lanes.exp_avg_sq.ptr = lanes.exp_avg_sq.template data<S>() + begin;
      if constexpr (AMSGRAD) {
        lanes.max_exp_avg_sq.ptr = lanes.max_exp_avg_sq.template data<S>() + begin;
      }
    });
    bool stochastic = false;
    uint32_t base = 0;
    if constexpr (kHasWriteRow) {
      void* extra = meta.addresses[kWriteRow][slot];
      if (write == ParamWrite::kFromMaster) {
        lanes.master.ptr = static_cast<float*>(extra) + begin;
      } else if (write == ParamWrite::kKahan) {
        lanes.compensation.ptr = static_cast<P*>(extra) + begin;
      } else if (write == ParamWrite::kStochastic) {
        // A chunk never straddles a multiple of 2^32 elements (the chunk size
        // divides it): one base serves all its elements.
        stochastic = true;
        base = rounding_base(
            stochastic_rounding_key(*static_cast<const int64_t*>(extra), step), begin);
      }
    }
    step_elements(count, op, lanes, stochastic, base, static_cast<uint32_t>(begin));
  }
};
static_assert((int64_t{1} << 32) % launch_plan::kChunkSize == 0,
              "a chunk must not straddle a multiple of 2^32 elements (rounding_base)");

// The rows AdamChunk reads, for every tensor: the four element lists, then
// max_exp_avg_sqs with amsgrad, then (with `write_row`) the master, the
// compensation, the rounding seed or null as the write mode says, then the step
// counts. Host code instantiated per depth, not per kernel.
template <int DEPTH>
std::array<std::vector<void*>, DEPTH> adam_addresses(const DenseRows& rows,
                                                     const AdamOptionalRows& optional,
                                                     const AdamCall& call, bool write_row) {
  const ParamWrite write = call.param_write();
  const bool amsgrad = optional.max_exp_avg_sq >= 0;
  TORCH_INTERNAL_ASSERT(4 + amsgrad + write_row + 1 == DEPTH);
  std::array<std::vector<void*>, DEPTH> addresses;
  for (auto& list : addresses) list.reserve(rows.rows());
  for (size_t i = 0; i < rows.rows(); ++i) {
    int k = 0;
    for (; k <= kExpAvgSqs; ++k) addresses[k].push_back(rows.at(k, i).data_ptr());
    if (amsgrad) addresses[k++].push_back(rows.at(optional.max_exp_avg_sq, i).data_ptr());
    if (write_row) {
      void* extra = nullptr;
      if (write == ParamWrite::kFromMaster) {
        extra = rows.at(optional.master, i).data_ptr();
      } else if (write == ParamWrite::kKahan) {
        extra = rows.at(optional.compensation, i).data_ptr();
      } else if (write == ParamWrite::kStochastic) {
        extra = const_cast<void*>(call.lists.rounding_seeds[i].const_data_ptr());
      }
      addresses[k++].push_back(extra);
    }
    addresses[k].push_back(call.lists.state_steps[i].data_ptr());
  }
  return addresses;
}

template <typename P, typename G>
void launch_typed_update(const DenseRows& rows, const AdamOptionalRows& optional,
                         const AdamCall& call, const AdamDeviceArgs& args) {
  const ParamWrite write = call.param_write();
  const MomentStorage moments = moment_storage_of(call.lists.exp_avgs[0].scalar_type());
  std::vector<int64_t> numels(rows.rows());
  for (size_t i = 0; i < rows.rows(); ++i) numels[i] = rows.at(kParams, i).numel();
  dispatch_adam_flags(call, [&](auto mode, auto amsgrad, auto maximize, auto grad_source) {
    constexpr GradSource GRAD_SOURCE = decltype(grad_source)::value;
    if constexpr (GRAD_SOURCE != GradSource::kWindowBuffer && !std::is_same_v<P, G>) {
      // check_adam_call allows float32 grads for other params in the window step only.
      TORCH_CHECK(false, "fused_accum: float32 grads for ", c10::CppTypeToScalarType<P>::value,
                  " params are only read by the window step");
    } else {
      constexpr int kDepth = AdamChunk<P, G, decltype(mode)::value, decltype(amsgrad)::value,
                                       decltype(maximize)::value, GRAD_SOURCE,
                                       ConstantDivision::kExact>::kDepth;
      const auto addresses = adam_addresses<kDepth>(rows, optional, call, kNarrowStorage<P>);
      const auto launch = [&](auto division) {
        using Chunk = AdamChunk<P, G, decltype(mode)::value, decltype(amsgrad)::value,
                                decltype(maximize)::value, GRAD_SOURCE,
                                decltype(division)::value>;
        apply_chunked<kDepth>(addresses, numels, Chunk{args, moments, write});
      };
      if constexpr (kNarrowStorage<P>) {
        dispatch_division(true, write, launch);
      } else {
        // float32 and float64 params are stepped in place, with exact division.
        launch(std::integral_constant<ConstantDivision, ConstantDivision::kExact>{});
      }
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

  // Staged before the first write: a failed allocation leaves the steps uncounted.
  AdamOptionalRows optional;
  DenseRows rows = adam_dense_rows(call, &optional);
  increment_steps(l.state_steps, args);
  dispatch_adam_storage(call, [&](auto param_tag, auto grad_tag) {
    launch_typed_update<decltype(param_tag), decltype(grad_tag)>(rows, optional, call, args);
  });
  rows.finish();
}

}  // namespace

}  // namespace cuda
}  // namespace fused_accum

TORCH_LIBRARY_IMPL(fused_accum, CUDA, m) {
  fused_accum::register_adam_impls<fused_accum::cuda::adam_cuda>(m);
}
