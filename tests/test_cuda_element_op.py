"""The CUDA kernel's per-element functor computes what the CPU kernel computes, bit for bit.

csrc/adam_element_op.h holds AdamElementOp, the functor the CUDA Adam kernel calls for
every element. The CPU build runs that same functor on the host as
torch.ops.fused_accum_testing.adam_step_* (csrc/cpu/adam_element_op_reference.cpp). If it
agrees exactly with the CPU kernel for every dtype and flag, the GPU path shares the CPU
path's math and rounding (the CUDA build disables fma contraction, as the CPU build does),
which is checked here on machines without a GPU.
"""

import itertools

import pytest
import torch

import fused_accum  # noqa: F401

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(3, 5), (0,), (1,), (4099,), (2, 3, 7)]


def make_state(dtype, amsgrad, grad_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    # master_params, compensations and rounding_seeds stay empty: params stepped in place.
    lists = {k: [] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs",
                             "max_exp_avg_sqs", "state_steps", "master_params",
                             "compensations", "rounding_seeds")}
    for shape in SHAPES:
        lists["params"].append(torch.randn(shape, generator=g).to(dtype))
        lists["grads"].append(torch.randn(shape, generator=g).to(grad_dtype or dtype))
        lists["exp_avgs"].append((0.1 * torch.randn(shape, generator=g)).to(dtype))
        lists["exp_avg_sqs"].append((0.01 * torch.rand(shape, generator=g)).to(dtype))
        if amsgrad:
            lists["max_exp_avg_sqs"].append((0.02 * torch.rand(shape, generator=g)).to(dtype))
        lists["state_steps"].append(torch.tensor(float(len(lists["state_steps"]) + 2)))
    return lists


def clone(lists):
    return {k: [t.clone() for t in v] for k, v in lists.items()}


def assert_bitwise_equal(a, b):
    for key in a:
        for x, y in zip(a[key], b[key]):
            assert torch.equal(x, y), key


def run_both(overload, lists, **kwargs):
    ours, reference = clone(lists), clone(lists)
    name, variant = overload
    getattr(getattr(torch.ops.fused_accum, name), variant)(**ours, **kwargs)
    getattr(getattr(torch.ops.fused_accum_testing, name), variant)(**reference, **kwargs)
    assert_bitwise_equal(ours, reference)
    return ours


HYPER = dict(beta1=0.9, beta2=0.999, weight_decay=0.05, eps=1e-8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("amsgrad, maximize, decoupled",
                         list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("grad_scale", [None, 4.0])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_adam_step_matches_cpu_kernel(dtype, amsgrad, maximize, decoupled, grad_scale,
                                      tensor_lr):
    lists = make_state(dtype, amsgrad)
    kwargs = dict(HYPER, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled,
                  lr=torch.tensor(1e-2) if tensor_lr else 1e-2,
                  grad_scale=None if grad_scale is None else torch.tensor(grad_scale))
    out = run_both(("adam_step_", "tensor_lr" if tensor_lr else "default"), lists, **kwargs)
    # The step really happened (an equality of two no-ops would prove nothing).
    assert not torch.equal(out["params"][0], lists["params"][0])
    assert out["state_steps"][0].item() == lists["state_steps"][0].item() + 1


@pytest.mark.parametrize("dtype, grad_dtype", [(torch.float32, None), (torch.float64, None),
                                               (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float32),
                                               (torch.float16, None)], ids=str)
@pytest.mark.parametrize("amsgrad, decoupled", [(False, True), (True, False)])
@pytest.mark.parametrize("multiplier", [0.25, float("inf")])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_window_step_matches_cpu_kernel(dtype, grad_dtype, amsgrad, decoupled, multiplier,
                                        tensor_lr):
    lists = make_state(dtype, amsgrad, grad_dtype)
    kwargs = dict(HYPER, amsgrad=amsgrad, maximize=False, decoupled_weight_decay=decoupled,
                  lr=torch.tensor(1e-2) if tensor_lr else 1e-2,
                  grad_multiplier=torch.tensor(multiplier))
    out = run_both(("adam_window_step_", "tensor_lr" if tensor_lr else "default"), lists,
                   **kwargs)
    assert all(not g.any() for g in out["grads"])  # the window's buffers are zeroed either way
    stepped = multiplier != float("inf")
    assert torch.equal(out["params"][0], lists["params"][0]) != stepped


@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_found_inf_matches_cpu_kernel(found_inf):
    lists = make_state(torch.float32, False)
    out = run_both(("adam_step_", "default"), lists, **HYPER, lr=1e-2, amsgrad=False,
                   maximize=False, decoupled_weight_decay=True,
                   grad_scale=torch.tensor(2.0), found_inf=torch.tensor(found_inf))
    assert torch.equal(out["state_steps"][0], lists["state_steps"][0]) == bool(found_inf)
