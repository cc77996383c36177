"""The optimizers compared: ours, torch's three Adam implementations, optional peers."""

import contextlib
import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable

import torch

import fused_accum

from .tensors import nbytes

OURS = "ours"
LR = 1e-3
WEIGHT_DECAY = 1e-2


@dataclass(frozen=True)
class Algorithm:
    """Which update: AdamW (decoupled decay) or Adam with L2 decay in the gradient."""
    name: str
    ours: type
    torch_class: type
    decoupled: bool


ADAMW = Algorithm("AdamW", fused_accum.FusedAdamW, torch.optim.AdamW, decoupled=True)
ADAM_L2 = Algorithm("Adam+L2", fused_accum.FusedAdam, torch.optim.Adam, decoupled=False)


def _no_temporaries(params):
    return 0


def _largest_bytes(params):
    return max(p.numel() * p.element_size() for p in params)


def share_torch_state(optimizer, ours, params):
    """torch.optim keeps Adam's state as ours does (a float32 step tensor, exp_avg,
    exp_avg_sq): the same dicts, so both step counts advance together and every call,
    ours' or the variant's, does the same work on the same tensors."""
    for p in params:
        optimizer.state[p] = ours.state[p]


def share_moments_with_deepspeed(optimizer, ours, params):
    """DeepSpeedCPUAdam keeps its step count as a Python int beside the two moments:
    its own dicts, holding ours' moment tensors and a count that starts at ours'."""
    for p in params:
        state = ours.state[p]
        optimizer.state[p] = {"step": int(state["step"]), "exp_avg": state["exp_avg"],
                              "exp_avg_sq": state["exp_avg_sq"]}


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable  # make(params) -> optimizer
    # Bytes of temporaries a step allocates (from torch's implementations, checked
    # against the measured peak), so sets too big for memory are skipped, not swapped.
    temporaries: Callable = _no_temporaries
    # share(optimizer, ours, params) makes the variant step ours' state tensors, for
    # sets with room for one state only; None where its state has another layout.
    share_state: Callable | None = None


def variants(algorithm, device, peers=False):
    """The variants to time for `algorithm` on `device`, ours first."""
    hyper = dict(lr=LR, weight_decay=WEIGHT_DECAY)
    torch_class = algorithm.torch_class
    found = [
        Variant(OURS, lambda ps: algorithm.ours(ps, **hyper)),
        # One tensor at a time: a couple of temporaries the size of the largest tensor.
        Variant("torch for-loop", lambda ps: torch_class(ps, foreach=False, **hyper),
                lambda ps: 2 * _largest_bytes(ps), share_state=share_torch_state),
        # Whole-list temporaries: sqrt(v) always, plus g + wd*p for L2 decay.
        Variant("torch foreach", lambda ps: torch_class(ps, foreach=True, **hyper),
                lambda ps: (1 if algorithm.decoupled else 2) * nbytes(ps),
                share_state=share_torch_state),
        Variant("torch fused", lambda ps: torch_class(ps, fused=True, **hyper),
                share_state=share_torch_state),
    ]
    if peers:
        found += peer_variants(algorithm, device)
    return found


def deepspeed_available():
    return importlib.util.find_spec("deepspeed") is not None


def peer_variants(algorithm, device):
    """DeepSpeedCPUAdam when deepspeed is installed and the params are on the CPU."""
    if device.type != "cpu" or not deepspeed_available():
        return []

    def make(ps):
        # deepspeed's logger writes to stdout, which carries only the report.
        with contextlib.redirect_stdout(sys.stderr):
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            # The first one JIT-builds deepspeed's cpu_adam op (a C++ extension, no CUDA),
            # cached under ~/.cache/torch_extensions. Its state would be float32 for
            # bfloat16 params by default; in the params' dtype, as ours and torch's keep
            # it, the step moves the same bytes.
            return DeepSpeedCPUAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY,
                                    adamw_mode=algorithm.decoupled,
                                    fp32_optimizer_states=False)
    return [Variant("DeepSpeedCPUAdam", make, share_state=share_moments_with_deepspeed)]


def peers_skipped_reason(device):
    if not deepspeed_available():
        return "DeepSpeedCPUAdam skipped: deepspeed is not importable"
    if device.type != "cpu":
        return "DeepSpeedCPUAdam skipped: it steps CPU params only"
    return None
