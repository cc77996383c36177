// CUDA implementation of the Adam step operators.
#pragma once

#include "../adam_args.h"

namespace fused_accum {
namespace cuda {

// Every state_step, lr tensor, grad_scale/multiplier and found_inf is read on
// the device: no host synchronisation, so a step can be captured in a CUDA graph.
void adam_cuda(const AdamCall& call, const char* op);

}  // namespace cuda
}  // namespace fused_accum
