"""The fused_accum operators, as torch.ops.fused_accum.

Schemas and kernels are C++ (csrc/ops.cpp, csrc/cpu, csrc/cuda). torch.compile and
FakeTensor trace through the C++ Meta kernels (csrc/no_data_kernels.cpp), which run
the same argument checks as the CPU and CUDA kernels and write nothing.
"""

import torch

from . import _loader  # noqa: F401  (loads the extension, which registers the operators)

ops = torch.ops.fused_accum
