// Turns the runtime flags of an Adam call into compile-time constants, so each
// kernel instance carries only the branches its configuration needs. Host code.
#pragma once

#include <type_traits>

#include "adam_args.h"

namespace fused_accum {

// Calls fn(mode, amsgrad, maximize, grad_mode), each an std::integral_constant.
template <typename Fn>
void dispatch_adam_flags(const AdamHyperparams& h, GradMode grad_mode, const Fn& fn) {
  auto with_bool = [](bool b, const auto& next) {
    if (b) {
      next(std::true_type{});
    } else {
      next(std::false_type{});
    }
  };
  auto with_grad_mode = [&](const auto& next) {
    switch (grad_mode) {
      case GradMode::kPlain:
        return next(std::integral_constant<GradMode, GradMode::kPlain>{});
      case GradMode::kUnscale:
        return next(std::integral_constant<GradMode, GradMode::kUnscale>{});
      case GradMode::kScaleAndZero:
        return next(std::integral_constant<GradMode, GradMode::kScaleAndZero>{});
    }
  };
  auto with_decay_mode = [&](const auto& next) {
    if (h.decay_mode == DecayMode::kL2) {
      next(std::integral_constant<DecayMode, DecayMode::kL2>{});
    } else {
      next(std::integral_constant<DecayMode, DecayMode::kDecoupled>{});
    }
  };
  with_decay_mode([&](auto mode) {
    with_bool(h.amsgrad, [&](auto amsgrad) {
      with_bool(h.maximize, [&](auto maximize) {
        with_grad_mode([&](auto grad) { fn(mode, amsgrad, maximize, grad); });
      });
    });
  });
}

}  // namespace fused_accum
