"""A bfloat16 step rounds its results as torch does, special values included.

The CPU kernel rounds float results to bfloat16 16 at a time, with one instruction
where the CPU has AVX512-BF16 (csrc/cpu/float_lanes.h). That instruction flushes
subnormals and keeps NaN payloads, unlike torch's rounding, so lanes holding either
must be rounded the integer way: in a whole group of 16 and in a tensor's last,
partial one, which is stored through a mask. The reference is the same
element update run one element at a time with c10::BFloat16 storage
(torch.ops.fused_accum_testing), so any difference is a rounding difference.
"""

import pytest
import torch

import fused_accum  # noqa: F401

SUBNORMAL = 2.0 ** -130  # below bfloat16's smallest normal, 2**-126
N = 8 * 16 + 7  # whole groups of 16 and a partial one
SPECIAL = (40, N - 3)  # in a whole group and in the partial one


def state_with(special):
    """bf16 step lists where the elements at SPECIAL hold a special value."""
    g = torch.Generator().manual_seed(7)
    p = torch.randn(N, generator=g)
    grad = torch.randn(N, generator=g)
    m = 0.1 * torch.randn(N, generator=g)
    v = 0.01 * torch.rand(N, generator=g)
    at = list(SPECIAL)
    if special == "subnormal":
        # grad and m zero: p and v only decay, and stay subnormal
        p[at], grad[at], m[at], v[at] = SUBNORMAL, 0.0, 0.0, SUBNORMAL
    elif special == "nan":
        grad[at] = float("nan")
    elif special == "inf":
        grad[at] = float("inf")
    elif special == "overflow":
        p[at] = torch.finfo(torch.bfloat16).max  # the decoupled decay rounds back up to it
    lists = dict(params=[p], grads=[grad], exp_avgs=[m], exp_avg_sqs=[v])
    lists = {k: [t.to(torch.bfloat16) for t in ts] for k, ts in lists.items()}
    lists["max_exp_avg_sqs"] = []
    lists["state_steps"] = [torch.tensor(3.0)]
    lists.update(master_params=[], compensations=[], rounding_seeds=[])
    return lists


def bits(t):
    return t.view(torch.int16)


@pytest.mark.parametrize("special", ["none", "subnormal", "nan", "inf", "overflow"])
@pytest.mark.parametrize("decoupled", [True, False])
def test_bf16_step_rounds_like_torch(special, decoupled):
    lists = state_with(special)
    ours = {k: [t.clone() for t in ts] for k, ts in lists.items()}
    reference = {k: [t.clone() for t in ts] for k, ts in lists.items()}
    kwargs = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8,
                  amsgrad=False, maximize=False, decoupled_weight_decay=decoupled)
    torch.ops.fused_accum.adam_step_(**ours, **kwargs)
    torch.ops.fused_accum_testing.adam_step_(**reference, **kwargs)
    for key in ("params", "exp_avgs", "exp_avg_sqs"):
        assert torch.equal(bits(ours[key][0]), bits(reference[key][0])), key
    out_p, out_v = ours["params"][0].float(), ours["exp_avg_sqs"][0].float()
    # The special value reached the rounding, so the lanes fell back where they must.
    for i in SPECIAL:
        if special == "subnormal":
            assert 0 < out_v[i] < torch.finfo(torch.bfloat16).tiny
            if decoupled:  # with L2 decay the decay flows into m and moves p a lot more
                assert 0 < out_p[i] < torch.finfo(torch.bfloat16).tiny
        elif special == "nan":
            assert bits(ours["params"][0])[i] == 0x7FC0  # torch's one NaN
        elif special == "inf":
            assert torch.isinf(out_v[i])
        elif special == "overflow" and decoupled:
            assert out_p[i] == torch.finfo(torch.bfloat16).max
