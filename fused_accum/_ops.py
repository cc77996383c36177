"""Fake (meta) implementations of the fused_accum operators.

The schemas are defined in C++ (csrc/ops.cpp), the kernels in csrc/cpu and csrc/cuda; these
tell torch.compile and FakeTensor what each operator returns without running it.
"""

import torch

from . import _loader  # noqa: F401  (loads the extension, which defines the schemas)

_ADAM_OVERLOADS = (
    "fused_accum::adam_step_",
    "fused_accum::adam_step_.tensor_lr",
    "fused_accum::adam_window_step_",
    "fused_accum::adam_window_step_.tensor_lr",
)


def _mutates_only(*args, **kwargs):
    return None


for _name in _ADAM_OVERLOADS:
    torch.library.register_fake(_name)(_mutates_only)

torch.library.register_fake("fused_accum::accumulate_")(_mutates_only)


@torch.library.register_fake("fused_accum::sum_of_squares")
def _sum_of_squares_fake(tensors):
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return torch.empty((), dtype=dtype, device=device)


ops = torch.ops.fused_accum
