"""fused_accum: fused Adam/AdamW steps and gradient accumulation for PyTorch."""

from ._loader import build_info
from .accumulate import GradAccumulator
from .batchnorm import scale_batchnorm_momentum
from .optim import FusedAdam, FusedAdamW

__all__ = [
    "FusedAdam",
    "FusedAdamW",
    "GradAccumulator",
    "build_info",
    "scale_batchnorm_momentum",
]
