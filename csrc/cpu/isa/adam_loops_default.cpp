// setup.py compiles this file for baseline x86-64 (any other CPU: its compiler's default).
#define FUSED_ACCUM_CPU_ISA isa_default
#include "../adam_loops.h"
