// setup.py compiles this file with -mavx2 -mfma -mf16c.
#define FUSED_ACCUM_CPU_ISA isa_avx2
#include "../adam_loops.h"
