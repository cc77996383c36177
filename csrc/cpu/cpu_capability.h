// Which of the per-instruction-set builds of the CPU loops runs (adam_kernel.h),
// as ATen chooses its CPU kernels: the best level that this CPU supports and
// this build compiled, or the one named by the environment variable
// FUSED_ACCUM_CPU_CAPABILITY (default, avx2 or avx512, case-insensitive), read
// once. A value that names no level, or a level this CPU or build lacks, is an
// error at the first CPU Adam step and in build_info(): running another level
// than the one asked for would hide the very thing the variable is set to test.
#pragma once

#include <vector>

#include "adam_kernel.h"

namespace fused_accum {
namespace cpu {

enum class CpuCapability { kDefault, kAvx2, kAvx512 };

// "default", "avx2", "avx512".
const char* cpu_capability_name(CpuCapability capability);

// Lowest first.
std::vector<CpuCapability> cpu_capabilities_supported();  // by this CPU (and its OS)
std::vector<CpuCapability> cpu_capabilities_compiled();   // into this build

// The level in use; throws std::runtime_error when FUSED_ACCUM_CPU_CAPABILITY
// is set to a value that cannot be honoured.
CpuCapability cpu_capability();

// The Adam element loops of that level.
AdamPieceKernel adam_piece_kernel();

}  // namespace cpu
}  // namespace fused_accum
