// The element loops of the CPU Adam step, seen from the code that calls them.
//
// The loops are compiled once per instruction set (cpu/isa/*.cpp, each with its
// own compiler flags) and the one to run is chosen when the extension loads
// (cpu_capability.h), as ATen chooses its CPU kernels. So that nothing compiled
// for one instruction set can end up in code run on a CPU without it, the loops
// see only what this header declares: plain pointers and numbers, no ATen. The
// ATen side (adam_cpu.cpp) checks the call, counts the steps, lays out the rows
// and splits the elements between threads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../adam_element_op.h"

namespace fused_accum {
namespace cpu {

// The element types a loop reads and writes.
enum class Storage : uint8_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// What is the same for every row of a call.
struct AdamKernelConfig {
  DecayMode mode;
  bool amsgrad;
  bool maximize;
  GradSource grad_source;
  ParamWrite write;
  Storage param;  // and compensation, with kKahan
  Storage grad;
  Storage state;  // exp_avg, exp_avg_sq, max_exp_avg_sq
};

// One tensor of each list. Pointers to unused streams are null.
struct AdamKernelRow {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;  // with amsgrad
  float* master;         // with ParamWrite::kFromMaster
  void* compensation;    // with ParamWrite::kKahan
  int64_t numel;
  uint32_t rounding_key;  // with ParamWrite::kStochastic: stochastic_rounding_key
  // The constants of this row's step in its math type: float, or double for
  // float64 params (only that one is filled in).
  AdamScalars<float> float_scalars;
  AdamScalars<double> double_scalars;
};

struct AdamKernelCall {
  AdamKernelConfig config;
  double grad_factor;  // grad_scale or window multiplier, as grad_factor_as reads it
  const AdamKernelRow* rows;
  size_t row_count;
};

// Steps elements [begin, end) of rows[row]. Called by many threads at once, on
// disjoint pieces.
using AdamPieceKernel = void (*)(const AdamKernelCall& call, size_t row, int64_t begin,
                                 int64_t end);

// One definition per instruction set, each in cpu/isa/.
namespace isa_default {
void adam_piece(const AdamKernelCall& call, size_t row, int64_t begin, int64_t end);
}
namespace isa_avx2 {
void adam_piece(const AdamKernelCall& call, size_t row, int64_t begin, int64_t end);
}
namespace isa_avx512 {
void adam_piece(const AdamKernelCall& call, size_t row, int64_t begin, int64_t end);
}

}  // namespace cpu
}  // namespace fused_accum
