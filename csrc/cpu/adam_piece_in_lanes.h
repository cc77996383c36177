// The CPU Adam loop for float32 and bfloat16 storage on AVX-512 machines: 16
// elements at a time through AdamElementOp instantiated on FloatLanes
// (float_lanes.h), with software prefetch (prefetch.h). Other storage types,
// and machines without AVX-512 BF16, take the compiler-vectorised loops in
// adam_cpu.cpp.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../adam_element_op.h"
#include "adam_row_pointers.h"
#include "float_lanes.h"
#include "prefetch.h"
#include "vectorizable_storage.h"

namespace fused_accum {
namespace cpu {

#ifdef FUSED_ACCUM_FLOAT_LANES

template <typename T>
constexpr bool kLanesStorage = std::is_same_v<T, float> || std::is_same_v<T, Bf16Bits>;

template <typename P, typename G>
constexpr bool kSteppedInLanes = kLanesStorage<P> && kLanesStorage<G>;

// The functor of a float-math step, on 16 lanes: same mode, flags and division.
template <typename FloatOp>
struct InLanes;
template <typename P, typename G, DecayMode MODE, bool AMSGRAD, bool MAXIMIZE,
          GradMode GRAD_MODE, ConstantDivision DIVISION>
struct InLanes<AdamElementOp<P, G, MODE, AMSGRAD, MAXIMIZE, GRAD_MODE, DIVISION>> {
  static_assert(std::is_same_v<typename MathType<P>::type, float>, "lanes hold float math");
  using type = AdamElementOp<FloatLanes, FloatLanes, MODE, AMSGRAD, MAXIMIZE, GRAD_MODE, DIVISION>;
};

// Steps elements [begin, end) of one tensor; the last partial 16 through masks.
// `next`: the tensor the loop goes on to when `end` is this one's end, else null.
template <bool AMSGRAD, bool WRITES_GRAD, typename FloatOp, typename P, typename G>
void adam_piece_in_lanes(const FloatOp& float_op, const RowPointers<P, G>& row, int64_t begin,
                         int64_t end, const RowPointers<P, G>* next) {
  using LanesOp = typename InLanes<FloatOp>::type;
  const LanesOp op{convert_scalars<FloatLanes>(float_op.scalars),
                   FloatLanes(float_op.grad_factor)};
  // Local restrict copies: through `row` the compiler reloads every pointer after each store.
  P* __restrict__ param_at = row.param;
  G* __restrict__ grad_at = row.grad;
  P* __restrict__ exp_avg_at = row.exp_avg;
  P* __restrict__ exp_avg_sq_at = row.exp_avg_sq;
  P* __restrict__ max_exp_avg_sq_at = row.max_exp_avg_sq;
  const RowPointers<P, G> following = next != nullptr ? *next : RowPointers<P, G>{};
  const int64_t ahead = prefetch_bytes_for((end - begin) * static_cast<int64_t>(sizeof(P)));
  const auto step_lanes = [&](int64_t i, auto lanes) {
    prefetch_ahead(param_at, i, end, following.param, ahead);
    prefetch_ahead(grad_at, i, end, following.grad, ahead);
    prefetch_ahead(exp_avg_at, i, end, following.exp_avg, ahead);
    prefetch_ahead(exp_avg_sq_at, i, end, following.exp_avg_sq, ahead);
    if constexpr (AMSGRAD) {
      prefetch_ahead(max_exp_avg_sq_at, i, end, following.max_exp_avg_sq, ahead);
    }
    FloatLanes param = load_lanes(param_at + i, lanes);
    FloatLanes grad = load_lanes(grad_at + i, lanes);
    FloatLanes exp_avg = load_lanes(exp_avg_at + i, lanes);
    FloatLanes exp_avg_sq = load_lanes(exp_avg_sq_at + i, lanes);
    if constexpr (AMSGRAD) {
      FloatLanes max_exp_avg_sq = load_lanes(max_exp_avg_sq_at + i, lanes);
      op(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq);
      store_lanes(max_exp_avg_sq, max_exp_avg_sq_at + i, lanes);
    } else {
      op(param, grad, exp_avg, exp_avg_sq);
    }
    store_lanes(param, param_at + i, lanes);
    if (WRITES_GRAD) store_lanes(grad, grad_at + i, lanes);
    store_lanes(exp_avg, exp_avg_at + i, lanes);
    store_lanes(exp_avg_sq, exp_avg_sq_at + i, lanes);
  };
  for_each_lanes(begin, end, step_lanes);
}

#else

template <typename P, typename G>
constexpr bool kSteppedInLanes = false;

// Declared only, for the discarded branch that names it: kSteppedInLanes is false.
template <bool AMSGRAD, bool WRITES_GRAD, typename FloatOp, typename P, typename G>
void adam_piece_in_lanes(const FloatOp& float_op, const RowPointers<P, G>& row, int64_t begin,
                         int64_t end, const RowPointers<P, G>* next);

#endif

}  // namespace cpu
}  // namespace fused_accum
