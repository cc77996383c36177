// CPU implementation of the Adam step operators: every tensor of a call in one
// parallel region, the element update from adam_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../adam_args.h"
#include "../adam_math.h"
#include "../dense_rows.h"
#include "../grad_mode.h"
#include "adam_cpu.h"
#include "segments.h"

namespace fused_accum {
namespace cpu {
namespace {

enum Arg { kParams = 0, kGrads, kExpAvgs, kExpAvgSqs, kMaxExpAvgSqs };

template <typename P, typename G>
struct RowPointers {
  P* param;
  G* grad;
  P* exp_avg;
  P* exp_avg_sq;
  P* max_exp_avg_sq;
};

// The innermost loop. Written as a plain loop over restrict pointers so the
// compiler vectorises the inlined element update (see `make asm-check`).
template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradMode GRAD_MODE>
void adam_piece(const RowPointers<P, G>& row, int64_t begin, int64_t end,
                const AdamScalars<at::opmath_type<P>>& s,
                at::opmath_type<P> grad_factor) {
  using T = at::opmath_type<P>;
  P* __restrict__ param = row.param;
  G* __restrict__ grad = row.grad;
  P* __restrict__ exp_avg = row.exp_avg;
  P* __restrict__ exp_avg_sq = row.exp_avg_sq;
  P* __restrict__ max_exp_avg_sq = row.max_exp_avg_sq;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    T p = static_cast<T>(param[i]);
    T m = static_cast<T>(exp_avg[i]);
    T v = static_cast<T>(exp_avg_sq[i]);
    T max_v = AMSGRAD ? static_cast<T>(max_exp_avg_sq[i]) : T(0);
    const T g = take_grad<GRAD_MODE, T>(grad[i], grad_factor);
    adam_update<MODE, AMSGRAD, MAXIMIZE>(p, g, m, v, max_v, s);
    param[i] = static_cast<P>(p);
    exp_avg[i] = static_cast<P>(m);
    exp_avg_sq[i] = static_cast<P>(v);
    if (AMSGRAD) max_exp_avg_sq[i] = static_cast<P>(max_v);
  }
}

template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradMode GRAD_MODE>
void adam_all(const DenseRows& rows, const std::vector<double>& steps,
              const AdamHyperparams& h, double lr, double grad_factor) {
  using T = at::opmath_type<P>;
  const size_t n = rows.rows();
  std::vector<RowPointers<P, G>> pointers(n);
  std::vector<AdamScalars<T>> scalars(n);
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    pointers[i] = {rows.at(kParams, i).data_ptr<P>(), rows.at(kGrads, i).data_ptr<G>(),
                   rows.at(kExpAvgs, i).data_ptr<P>(), rows.at(kExpAvgSqs, i).data_ptr<P>(),
                   AMSGRAD ? rows.at(kMaxExpAvgSqs, i).data_ptr<P>() : nullptr};
    numels[i] = rows.at(kParams, i).numel();
    // Params of one group almost always share a step count: derive the bias
    // corrections once, not once per tensor.
    scalars[i] = (i > 0 && steps[i] == steps[i - 1])
                     ? scalars[i - 1]
                     : make_adam_scalars<T>(lr, h.beta1, h.beta2, h.weight_decay, h.eps,
                                            steps[i]);
  }
  const T factor = static_cast<T>(static_cast<float>(grad_factor));
  Segments(numels).parallel_for_each_piece([&](int64_t t, int64_t begin, int64_t end) {
    adam_piece<P, G, MODE, AMSGRAD, MAXIMIZE, GRAD_MODE>(pointers[t], begin, end,
                                                         scalars[t], factor);
  });
}

template <typename P, typename G>
void dispatch_flags(const DenseRows& rows, const std::vector<double>& steps,
                    const AdamHyperparams& h, double lr, GradMode grad_mode,
                    double grad_factor) {
#define FA_CASE(MODE, AMS, MAX, GM)                                                  \
  if (h.decay_mode == MODE && h.amsgrad == AMS && h.maximize == MAX &&             \
      grad_mode == GM) {                                                             \
    return adam_all<P, G, MODE, AMS, MAX, GM>(rows, steps, h, lr, grad_factor);     \
  }
#define FA_GRAD_MODES(MODE, AMS, MAX)               \
  FA_CASE(MODE, AMS, MAX, GradMode::kPlain)         \
  FA_CASE(MODE, AMS, MAX, GradMode::kUnscale)       \
  FA_CASE(MODE, AMS, MAX, GradMode::kScaleAndZero)
#define FA_MAXIMIZE(MODE, AMS)        \
  FA_GRAD_MODES(MODE, AMS, false)     \
  FA_GRAD_MODES(MODE, AMS, true)
  FA_MAXIMIZE(DecayMode::kL2, false)
  FA_MAXIMIZE(DecayMode::kL2, true)
  FA_MAXIMIZE(DecayMode::kDecoupled, false)
  FA_MAXIMIZE(DecayMode::kDecoupled, true)
#undef FA_MAXIMIZE
#undef FA_GRAD_MODES
#undef FA_CASE
  TORCH_CHECK(false, "fused_accum: unhandled Adam configuration");
}

double read_scalar(const std::optional<at::Tensor>& t, double fallback) {
  return t.has_value() ? t->item<double>() : fallback;
}

}  // namespace

void adam_cpu(const AdamCall& call, const char* op) {
  check_adam_call(call, op);
  const AdamTensorLists& l = call.lists;
  const size_t n = l.params.size();
  if (n == 0) return;

  // GradScaler found an inf or nan: no param, moment or step count changes.
  // An accumulation window is discarded all the same, so the next one starts clean.
  const bool skip = call.found_inf.has_value() && call.found_inf->item<double>() != 0.0;
  const double grad_factor = read_scalar(call.grad_factor, 1.0);
  const bool window = call.grad_mode == GradMode::kScaleAndZero;
  if (skip || (window && !std::isfinite(grad_factor))) {
    if (window) {
      for (const at::Tensor& g : l.grads) g.zero_();
    }
    return;
  }

  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    float* step = l.state_steps[i].data_ptr<float>();
    *step += 1.0f;
    steps[i] = static_cast<double>(*step);
  }
  const double lr = read_scalar(call.lr_tensor, call.hyper.lr);

  std::vector<at::TensorList> lists = {l.params, l.grads, l.exp_avgs, l.exp_avg_sqs};
  std::vector<bool> mutated = {true, call.grad_mode != GradMode::kPlain, true, true};
  if (call.hyper.amsgrad) {
    lists.push_back(l.max_exp_avg_sqs);
    mutated.push_back(true);
  }
  DenseRows rows(lists, mutated);

  const at::ScalarType grad_dtype = l.grads[0].scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, l.params[0].scalar_type(),
                                  "fused_accum_adam_cpu", [&] {
    if (grad_dtype == at::kFloat && !std::is_same_v<scalar_t, float>) {
      dispatch_flags<scalar_t, float>(rows, steps, call.hyper, lr, call.grad_mode, grad_factor);
    } else {
      dispatch_flags<scalar_t, scalar_t>(rows, steps, call.hyper, lr, call.grad_mode,
                                         grad_factor);
    }
  });
  rows.finish();
}

}  // namespace cpu
}  // namespace fused_accum
