"""What memory bandwidth allows: the yardstick for "fraction of the roofline".

CPU: the stream_roofline_ operator (csrc/cpu/roofline_cpu.cpp) moves the same 7
streams as an Adam step (read p, g, m, v; write p, m, v) over the same tensors, in
one parallel region, with one add per element: a step cannot be faster.
CUDA: device-to-device copy bandwidth of a large buffer, measured once per run.
"""

import functools

import torch

from .tensors import nbytes
from .timing import time_call

ADAM_STREAMS = 7  # read p, g, m, v; write p, m, v
_CUDA_COPY_BYTES = 1 << 30


def _stream_op():
    try:
        return torch.ops.fused_accum_bench.stream_roofline_
    except (AttributeError, RuntimeError) as e:
        raise RuntimeError(
            "torch.ops.fused_accum_bench.stream_roofline_ is missing: the installed extension "
            "predates it; rebuild with `pip install --no-build-isolation -e .`") from e


def stream_kernel(params, grads, repeats, warmup):
    """Times the 7-stream kernel over params/grads; returns (Samples, bytes per call).

    Allocates its own m and v (the size an optimizer's state will take, freed before
    the optimizers run) and adds to params, which only shifts their values.
    """
    op = _stream_op()
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    samples = time_call(lambda: op(params, grads, exp_avgs, exp_avg_sqs), params[0].device,
                        repeats, warmup)
    return samples, adam_bytes(params)


def copy_kernel(tensors, repeats, warmup):
    """Times copying tensors into fresh ones (2 streams); returns (Samples, bytes per call)."""
    targets = [torch.empty_like(t) for t in tensors]
    samples = time_call(lambda: torch._foreach_copy_(targets, tensors), tensors[0].device,
                        repeats, warmup)
    return samples, 2 * nbytes(tensors)


@functools.lru_cache(maxsize=None)
def cuda_copy_gbps(device, repeats, warmup):
    src = torch.empty(_CUDA_COPY_BYTES, dtype=torch.uint8, device=device)
    samples, moved = copy_kernel([src], repeats, warmup)
    return moved / samples.median / 1e6


def adam_bytes(params, streams=ADAM_STREAMS):
    """Bytes an Adam step over params must move: `streams` passes over the params."""
    return streams * nbytes(params)


def roofline_gbps(params, grads, repeats, warmup):
    """The attainable bandwidth for a step over these tensors on their device, GB/s."""
    device = params[0].device
    if device.type == "cuda":
        return cuda_copy_gbps(device, repeats, warmup)
    samples, moved = stream_kernel(params, grads, repeats, warmup)
    return moved / samples.median / 1e6
