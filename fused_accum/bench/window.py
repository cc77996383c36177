"""The end of an accumulation window, ours and torch's timed in turns.

Each sample first runs a window's micro-batches untimed (forward and backward of a
model holding the params), then times only what ends the window:
torch: clip_grad_norm_(foreach) + AdamW(fused=True).step() + zero_grad(set_to_none=False);
ours: GradAccumulator.step() on the last micro-batch (norm pass + fused step pass that
also zeroes the grads). Each steps its own copy of the params, so the two can be timed
alternately (timing.time_alternately) and a change in the machine's speed reaches both.
"""

from dataclasses import dataclass
from typing import Callable

import torch

import fused_accum

from .memory import peak_extra_bytes
from .results import Row
from .roofline import adam_bytes
from .timing import time_alternately
from .variants import LR, OURS, WEIGHT_DECAY

MICRO_BATCHES = 2  # the window's length does not change the cost of its end
MAX_GRAD_NORM = 1.0
# Least traffic a window end needs: read g for the norm, then read p, g, m, v and
# write p, m, v and g (zeroed).
WINDOW_STREAMS = 9


class ParamModel(torch.nn.Module):
    """A model owning the params whose loss touches every one of them cheaply."""

    def __init__(self, params):
        super().__init__()
        self.params = torch.nn.ParameterList(params)

    def forward(self):
        return sum(p.sum() for p in self.params)


@dataclass
class WindowEnd:
    """One implementation's window end, ready to time."""
    name: str
    end_window: Callable   # the timed call
    micro_batches: Callable  # run untimed before each call: fills the window
    close: Callable        # hands the params back without grads or hooks


def time_window_ends(ends, params, settings, roofline=None):
    """Rows of the window ends in `ends`, timed alternately over same-sized param sets.

    `roofline`: None, or flat_stream_call's (call, bytes per call, bytes held), timed in
    the same turns, which gives every row its roofline."""
    calls = [e.end_window for e in ends] + ([] if roofline is None else [roofline[0]])
    setups = [e.micro_batches for e in ends] + ([] if roofline is None else [None])
    timed = time_alternately(calls, settings.device, settings.repeats, settings.warmup,
                             setups=setups)
    row_roofline = None if roofline is None else timed[-1].gbps(roofline[1])
    rows = []
    for end, samples in zip(ends, timed):
        end.micro_batches()
        peak = peak_extra_bytes(end.end_window, settings.device)
        rows.append(Row(end.name, samples, adam_bytes(params, WINDOW_STREAMS), peak,
                        row_roofline))
    return rows


def torch_window(params):
    """torch's best recipe's window end."""
    model = ParamModel(params)
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)

    def micro_batches():
        for _ in range(MICRO_BATCHES):
            (model() / MICRO_BATCHES).backward()

    def end_window():
        torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    return WindowEnd("torch fused", end_window, micro_batches,
                     lambda: optimizer.zero_grad(set_to_none=True))


def ours_window(params):
    """GradAccumulator's window end."""
    model = ParamModel(params)
    optimizer = fused_accum.FusedAdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    accumulator = fused_accum.GradAccumulator(optimizer, steps=MICRO_BATCHES,
                                              max_grad_norm=MAX_GRAD_NORM)

    def micro_batches_but_last_step():
        for i in range(MICRO_BATCHES):
            with accumulator.accumulate(model):
                accumulator.backward(model())
            if i < MICRO_BATCHES - 1 and accumulator.step():
                raise RuntimeError("GradAccumulator.step() stepped before its window was full")

    def end_window():
        if not accumulator.step():
            raise RuntimeError("GradAccumulator.step() did not complete the window")

    def close():
        accumulator.remove()
        for p in params:
            p.grad = None

    return WindowEnd(OURS, end_window, micro_batches_but_last_step, close)
