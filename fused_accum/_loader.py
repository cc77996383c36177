"""Loads the compiled extension, refusing a torch other than the one it was built for.

A mismatch would otherwise surface as an undefined-symbol trace from the dynamic loader.
"""

import torch

try:
    from . import _build_config
except ImportError as e:  # pragma: no cover - only in a source tree that was never built
    raise ImportError(
        "fused_accum is not built: run `pip install .` (or `make test`) first"
    ) from e


def _release(version):
    return version.split("+")[0]


if _release(torch.__version__) != _release(_build_config.TORCH_VERSION):
    raise ImportError(
        f"fused_accum was built against torch {_build_config.TORCH_VERSION} but torch "
        f"{torch.__version__} is installed; rebuild it with `pip install --no-build-isolation .`"
    )

from . import _C  # noqa: E402  (registers torch.ops.fused_accum.*)

build_info = _C.build_info
ParamGroupPlan = _C.ParamGroupPlan
