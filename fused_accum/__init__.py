"""fused_accum: fused Adam/AdamW steps and gradient accumulation for PyTorch."""

from ._loader import build_info

__all__ = ["build_info"]
