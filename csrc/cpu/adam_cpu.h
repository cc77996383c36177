#pragma once

#include "../adam_args.h"

namespace fused_accum {
namespace cpu {

void adam_cpu(const AdamCall& call, const char* op);

}  // namespace cpu
}  // namespace fused_accum
