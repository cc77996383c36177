"""What memory bandwidth allows: the yardstick for "fraction of the roofline".

CPU: the stream_roofline_ operator (csrc/cpu/roofline_cpu.cpp) moves the same 7
streams as an Adam step (read p, g, m, v; write p, m, v) in one parallel region, with
one add per element: a step cannot be faster. The tables' roofline runs it over one
contiguous buffer per stream holding as many elements as the tensor set, so it is
what the bytes cost with no per-tensor work at all; a step over thousands of small
tensors shows, against it, how much its per-tensor costs add.
CUDA: device-to-device copy bandwidth of a large float32 buffer, measured once per run
after the GPU has been kept busy long enough to leave its idle clocks.
"""

import functools
import time

import torch

from .tensors import nbytes
from .timing import time_call

ADAM_STREAMS = 7  # read p, g, m, v; write p, m, v
CUDA_COPY_BYTES = 1 << 30
# An idle GPU runs at a fraction of its clocks until load raises them. A byte-wise
# 1 GiB copy timed straight away measured an H200 at 1.9 TB/s, where a float32 copy
# of the step's own tensors reached 3.2 TB/s later in the same run.
CUDA_BUSY_SECONDS = 0.5
# Past a few hundred MB the bandwidth no longer depends on the size, so larger sets
# are measured on this many elements: 1 GB of buffers in float32, over three times the
# development machine's L3, and little enough to hold beside a 1B-param step's state.
FLAT_ELEMENTS_CAP = 1 << 26


def _stream_op():
    try:
        return torch.ops.fused_accum_bench.stream_roofline_
    except (AttributeError, RuntimeError) as e:
        raise RuntimeError(
            "torch.ops.fused_accum_bench.stream_roofline_ is missing: the installed extension "
            "predates it; rebuild with `pip install --no-build-isolation -e .`") from e


def copy_kernel(tensors, repeats, warmup):
    """Times copying tensors into fresh ones (2 streams); returns (Samples, bytes per call)."""
    targets = [torch.empty_like(t) for t in tensors]
    samples = time_call(lambda: torch._foreach_copy_(targets, tensors), tensors[0].device,
                        repeats, warmup)
    return samples, 2 * nbytes(tensors)


@functools.lru_cache(maxsize=None)
def cuda_copy_gbps(device, repeats, warmup):
    src = torch.empty(CUDA_COPY_BYTES // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    _keep_busy(lambda: dst.copy_(src), device, CUDA_BUSY_SECONDS)
    del dst
    samples, moved = copy_kernel([src], repeats, warmup)
    return samples.gbps(moved)


def _keep_busy(fn, device, seconds):
    torch.cuda.synchronize(device)
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        fn()
        torch.cuda.synchronize(device)


def adam_bytes(params, streams=ADAM_STREAMS):
    """Bytes an Adam step over params must move: `streams` passes over the params."""
    return streams * nbytes(params)


def flat_stream_call(params):
    """The 7-stream kernel over one buffer per stream of the set's size and dtype
    (capped at FLAT_ELEMENTS_CAP), ready to call: (call, bytes per call, bytes held)."""
    numel = min(sum(p.numel() for p in params), FLAT_ELEMENTS_CAP)
    p, g, m, v = ([torch.zeros(numel, dtype=params[0].dtype, device=params[0].device)]
                  for _ in range(4))
    return (lambda: _stream_op()(p, g, m, v)), adam_bytes(p), 4 * nbytes(p)


def flat_stream_kernel(params, repeats, warmup):
    """Times flat_stream_call's kernel; returns (Samples, bytes per call)."""
    call, moved, _ = flat_stream_call(params)
    return time_call(call, params[0].device, repeats, warmup), moved


def roofline_gbps(params, repeats, warmup):
    """The attainable bandwidth for a step over this many elements on their device, GB/s."""
    device = params[0].device
    if device.type == "cuda":
        return cuda_copy_gbps(device, repeats, warmup)
    samples, moved = flat_stream_kernel(params, repeats, warmup)
    return samples.gbps(moved)
