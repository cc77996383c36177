"""Times one call: warm-up, then one sample per call, reported as median and spread.

Every sample is one call (a step takes milliseconds to seconds, far above the timer's
resolution), so the spread shows run-to-run noise rather than being averaged away.
"""

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Samples:
    """Per-call times in milliseconds."""
    ms: tuple

    @property
    def median(self):
        return statistics.median(self.ms)

    @property
    def q1(self):
        return self._quartiles()[0]

    @property
    def q3(self):
        return self._quartiles()[2]

    def gbps(self, bytes_per_call):
        """GB/s of moving bytes_per_call in the median time."""
        return bytes_per_call / self.median / 1e6

    @property
    def min(self):
        return min(self.ms)

    @property
    def max(self):
        return max(self.ms)

    def _quartiles(self):
        if len(self.ms) == 1:
            return (self.ms[0],) * 3
        # "inclusive": quartiles stay inside [min, max] for the few samples we take.
        return statistics.quantiles(self.ms, n=4, method="inclusive")


def time_call(fn, device, repeats, warmup):
    """Times fn alone: warmup + repeats calls, one sample per call after the warm-up."""
    return time_alternately([fn], device, repeats, warmup)[0]


def time_alternately(fns, device, repeats, warmup, refill_ms=0.0, setups=None):
    """Times several calls in turn, one sample of each per round, warmup rounds first;
    returns one Samples per call. A change in the machine's load during the run then
    reaches every call alike, so their ratio is steadier than from separate runs.

    refill_ms: before each timed call, untimed calls of the same fn run until they
    have taken this long (none when one call takes longer). The timed call then finds
    the caches as its own calls leave them, the steady state of a loop of steps and
    what torch.utils.benchmark's repeated calls measure, not as the other fns left
    them: for a step over a few tens of MB, one call before it is not enough.

    setups: None, or one entry per fn, None or a callable run untimed before each of
    that fn's calls (a window's micro-batches, say). On CUDA each sample is bracketed
    by events after a synchronize, so queued setup work is not counted and fn's
    kernels are.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if setups is None:
        setups = [None] * len(fns)
    if len(setups) != len(fns):
        raise ValueError(f"setups must hold one entry per fn: {len(fns)} fns, "
                         f"{len(setups)} setups")
    ms = [[] for _ in fns]
    last = [0.0 for _ in fns]  # each fn's latest call, ms

    def prepared_call(j):
        if setups[j] is not None:
            setups[j]()
        return _time_once(fns[j], device)

    for i in range(warmup + repeats):
        for j in range(len(fns)):
            refilled = 0.0
            while last[j] < refill_ms and refilled < refill_ms:
                refilled += prepared_call(j)
            last[j] = prepared_call(j)
            if i >= warmup:
                ms[j].append(last[j])
    return [Samples(tuple(m)) for m in ms]


def _time_once(fn, device):
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3
