// setup.py compiles this file with AVX2's flags and -mavx512f -mavx512bw -mavx512vl -mavx512dq.
#define FUSED_ACCUM_CPU_ISA isa_avx512
#include "../adam_loops.h"
