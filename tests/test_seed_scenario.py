"""The weight-decay trap of the seed articles: a zero grad is a step, a None grad is not.

One optimizer holds B and C. After a first phase C's moments are zeroed, then C gets
zero grads (or no grads at all) while B keeps training.
"""

import pytest
import torch

from fused_accum import FusedAdam, FusedAdamW

PAIRS = {
    "adam_l2": (FusedAdam, torch.optim.Adam, dict(weight_decay=0.1)),
    "adamw": (FusedAdamW, torch.optim.AdamW, dict(weight_decay=0.1)),
}


def run_phases(opt_cls, kwargs, c_grad):
    gen = torch.Generator().manual_seed(0)
    b = torch.nn.Parameter(torch.randn(8, 5, generator=gen))
    c = torch.nn.Parameter(torch.randn(5, generator=gen))
    opt = opt_cls([b, c], lr=0.05, fused=True, **kwargs) if opt_cls in (
        torch.optim.Adam, torch.optim.AdamW) else opt_cls([b, c], lr=0.05, **kwargs)
    for _ in range(5):
        b.grad = torch.randn(b.shape, generator=gen)
        c.grad = torch.randn(c.shape, generator=gen)
        opt.step()
    opt.state[c]["exp_avg"].zero_()
    opt.state[c]["exp_avg_sq"].zero_()
    c_before = c.detach().clone()
    state_before = {k: v.clone() for k, v in opt.state[c].items()}
    for _ in range(5):
        b.grad = torch.randn(b.shape, generator=gen)
        c.grad = None if c_grad == "none" else torch.zeros_like(c)
        opt.step()
    return c, c_before, opt.state[c], state_before


@pytest.mark.parametrize("mode", list(PAIRS))
def test_zero_grad_moves_c_exactly_as_torch(mode):
    ours_cls, torch_cls, kwargs = PAIRS[mode]
    c, c_before, state, _ = run_phases(ours_cls, kwargs, "zero")
    ref_c, _, ref_state, _ = run_phases(torch_cls, kwargs, "zero")
    assert not torch.equal(c.detach(), c_before), "decay must still move C"
    # torch's default float32 tolerances: torch's own scalar tail (C has 5 elements)
    # may round the last bit differently from its vectorised loop.
    torch.testing.assert_close(c, ref_c)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state[key], ref_state[key])
    if mode == "adam_l2":
        # L2 decay flows into the moments: zero grads do not leave them at zero.
        assert state["exp_avg"].abs().sum() > 0


@pytest.mark.parametrize("mode", list(PAIRS))
def test_none_grad_leaves_c_and_its_state_alone(mode):
    ours_cls, _, kwargs = PAIRS[mode]
    c, c_before, state, state_before = run_phases(ours_cls, kwargs, "none")
    torch.testing.assert_close(c.detach(), c_before, rtol=0, atol=0)
    for key, value in state_before.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
