"""The benchmark's roofline operator: it must really read and write all 7 streams
(so its time is a fair yardstick) and refuse malformed lists with a clear message."""

import pytest
import torch

import fused_accum  # noqa: F401  (registers torch.ops.fused_accum)

op = torch.ops.fused_accum_bench.stream_roofline_


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adds_grad_to_every_mutated_stream(dtype):
    shapes = [(3, 5), (70000,), (1,)]  # one tensor above the parallel grain
    p, g, m, v = ([torch.randn(s).to(dtype) for s in shapes] for _ in range(4))
    expected = [[(a.float() + b.float()).to(dtype) for a, b in zip(x, g)] for x in (p, m, v)]
    op(p, g, m, v)
    for got, want in zip((p, m, v), expected):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("break_it, message", [
    (lambda p, g, m, v: (p, g[:1], m, v), "g must hold 2 tensors"),
    (lambda p, g, m, v: (p, g, [m[0], m[1].double()], v), "m\\[1\\] must be Float"),
    (lambda p, g, m, v: (p, g, m, [v[0], torch.zeros(3)]), "v\\[1\\] must have shape"),
    (lambda p, g, m, v: (p, [g[0], torch.zeros(4, 2).t()], m, v),
     "g\\[1\\] must be contiguous"),
])
def test_malformed_lists_are_refused(break_it, message):
    p, g, m, v = ([torch.zeros(5), torch.zeros(2, 4)] for _ in range(4))
    with pytest.raises(RuntimeError, match=message):
        op(*break_it(p, g, m, v))
