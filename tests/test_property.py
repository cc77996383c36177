"""Random configurations and shapes against torch.optim.Adam (for-loop and fused)."""

import torch
from hypothesis import given, settings, strategies as st

from fused_accum import FusedAdam

from trajectory import assert_same_trajectory, make_grad_sequence, make_tensors, run

shapes = st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
                  min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(
    shape_list=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    lr=st.floats(1e-4, 0.5),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.3]),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    decoupled=st.booleans(),
    steps=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_random_configurations(shape_list, dtype, lr, beta1, beta2, eps, weight_decay,
                               amsgrad, maximize, decoupled, steps, seed):
    kwargs = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                  amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
    init = make_tensors(shape_list, dtype, seed)
    grads = make_grad_sequence(init, steps, seed + 1)
    ours = run(lambda ps: FusedAdam(ps, **kwargs), init, grads)
    assert_same_trajectory(ours, run(lambda ps: torch.optim.Adam(ps, **kwargs, foreach=False),
                                     init, grads))
    assert_same_trajectory(ours, run(lambda ps: torch.optim.Adam(ps, **kwargs, fused=True),
                                     init, grads))
