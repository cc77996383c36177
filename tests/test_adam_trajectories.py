"""20-step trajectories of FusedAdam/FusedAdamW against torch.optim.Adam/AdamW."""

import itertools

import pytest
import torch

from fused_accum import FusedAdam, FusedAdamW

from conftest import FLOAT32_ULPS_VS_TORCH_FUSED
from trajectory import (assert_same_trajectory, make_grad_sequence, make_tensors,
                        max_ulp_float32, run)

STEPS = 20
# 0 elements, 1, odd sizes, a 3-d one, and one larger than a thread's share of work.
SHAPES = [(0,), (1,), (7, 13), (33,), (2, 3, 5), (61, 67)]
# Larger than a thread's share of the work (segments.h kParallelGrain): split between threads.
LARGE_SHAPES = [(257, 301), (5,), (70001,)]

MODES = {
    "adam_l2": (FusedAdam, torch.optim.Adam, {}),
    "adam_decoupled": (FusedAdam, torch.optim.Adam, {"decoupled_weight_decay": True}),
    "adamw": (FusedAdamW, torch.optim.AdamW, {}),
}


def configs():
    for mode, amsgrad, maximize, wd, tensor_lr in itertools.product(
            MODES, [False, True], [False, True], [0.0, 0.1], [False, True]):
        yield pytest.param(mode, amsgrad, maximize, wd, tensor_lr,
                           id=f"{mode}-ams{int(amsgrad)}-max{int(maximize)}-wd{wd}-tlr{int(tensor_lr)}")


def factories(mode, amsgrad, maximize, wd, tensor_lr, lr_dtype=torch.float32, **torch_flags):
    ours_cls, torch_cls, extra = MODES[mode]

    def kwargs():
        # A float64 tensor lr for float64 params: torch's for-loop does its scalar math in
        # the tensor lr's dtype, so a float32 lr would cost it float64 precision.
        lr = torch.tensor(0.01, dtype=lr_dtype) if tensor_lr else 0.01
        return dict(lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, amsgrad=amsgrad,
                    maximize=maximize, **extra)

    return (lambda ps: ours_cls(ps, **kwargs()),
            lambda ps: torch_cls(ps, **kwargs(), **torch_flags))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,amsgrad,maximize,wd,tensor_lr", list(configs()))
def test_matches_torch_full_precision(dtype, mode, amsgrad, maximize, wd, tensor_lr):
    init = make_tensors(SHAPES, dtype, seed=1)
    grads = make_grad_sequence(init, STEPS, seed=2)
    lr_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ours, torch_loop = factories(mode, amsgrad, maximize, wd, tensor_lr, lr_dtype, foreach=False)
    _, torch_fused = factories(mode, amsgrad, maximize, wd, tensor_lr, lr_dtype, fused=True)
    our_run = run(ours, init, grads)
    assert_same_trajectory(our_run, run(torch_loop, init, grads))
    fused_run = run(torch_fused, init, grads)
    assert_same_trajectory(our_run, fused_run)
    # What the README says: bit for bit in every element torch's fused kernel computes
    # in its vectorised loop; only its scalar tail (the last elements of a tensor that
    # do not fill one of its vectors) may round differently.
    for ours_p, torch_p in zip(our_run[0], fused_run[0]):
        assert_equal_outside_torchs_scalar_tail(ours_p.detach(), torch_p.detach())
    if dtype == torch.float32:
        ulps = max(max_ulp_float32(a.detach(), b.detach())
                   for a, b in zip(our_run[0], fused_run[0]))
        FLOAT32_ULPS_VS_TORCH_FUSED["max"] = max(FLOAT32_ULPS_VS_TORCH_FUSED["max"] or 0, ulps)
        assert ulps <= 4


def torchs_vector_elements(dtype):
    """Elements in one vector of torch's CPU kernels: 64 bytes with AVX-512, else 32."""
    vector_bytes = 64 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 32
    return vector_bytes // torch.empty((), dtype=dtype).element_size()


def assert_equal_outside_torchs_scalar_tail(ours, theirs):
    n = ours.numel()
    body = n - n % torchs_vector_elements(ours.dtype)
    differ = (ours.flatten() != theirs.flatten()).nonzero().flatten()
    assert bool((differ >= body).all()), (n, body, differ[differ < body][:10].tolist())


def max_error(params, reference):
    return max(float((p.detach().double() - r.detach()).abs().max()) if p.numel() else 0.0
               for p, r in zip(params, reference))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode,amsgrad,maximize,wd,tensor_lr", list(configs()))
def test_low_precision_error_at_most_twice_torch(dtype, mode, amsgrad, maximize, wd, tensor_lr):
    # The flash-attention rule: against a float64 run of the same problem, our error
    # in a low-precision dtype is at most twice torch's own error in that dtype.
    init = make_tensors(SHAPES, dtype, seed=3)
    grads = make_grad_sequence(init, STEPS, seed=4)
    ours, torch_fused = factories(mode, amsgrad, maximize, wd, tensor_lr, fused=True)
    _, torch_loop = factories(mode, amsgrad, maximize, wd, tensor_lr, foreach=False)
    reference, _ = run(torch_loop, init, grads, cast=torch.float64)
    our_params, our_opt = run(ours, init, grads)
    torch_params, _ = run(torch_fused, init, grads)
    our_error = max_error(our_params, reference)
    torch_error = max_error(torch_params, reference)
    assert our_error <= 2 * torch_error + 1e-12, (our_error, torch_error)
    for p in our_params:  # states stay in the param's dtype, as torch keeps them
        assert all(our_opt.state[p][k].dtype == dtype
                   for k in ("exp_avg", "exp_avg_sq") if k in our_opt.state[p])


def storage_ulps(a, b):
    """Per element, how many representable 16-bit values lie between a and b."""
    def ordered(t):  # sign-magnitude bits to a monotone integer scale
        bits = t.view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(a) - ordered(b)).abs()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", list(MODES))
def test_low_precision_next_to_torch_fused(dtype, mode):
    # For 16-bit storage the bias correction is a multiplication by its reciprocal
    # (adam_math.h, ConstantDivision), not torch's division: the float math moves
    # by about an ulp, which the rounding to 16 bits almost always absorbs.
    init = make_tensors([(50_000,), (30_011,)], dtype, seed=5)
    grads = make_grad_sequence(init, STEPS, seed=6)
    ours, torch_fused = factories(mode, False, False, 0.1, False, fused=True)
    our_params, our_opt = run(ours, init, grads)
    torch_params, torch_opt = run(torch_fused, init, grads)
    differing, total = 0, 0
    for a, b in zip(our_params, torch_params):
        pairs = [(a.detach(), b.detach())] + [(our_opt.state[a][k], torch_opt.state[b][k])
                                              for k in ("exp_avg", "exp_avg_sq")]
        for x, y in pairs:
            ulps = storage_ulps(x, y)
            assert int(ulps.max()) <= 1
            differing += int((ulps > 0).sum())
            total += x.numel()
    assert differing <= total * 1e-4, (differing, total)


@pytest.mark.parametrize("mode", list(MODES))
def test_tensors_split_between_threads(mode):
    init = make_tensors(LARGE_SHAPES, torch.float32, seed=12)
    grads = make_grad_sequence(init, STEPS, seed=13)
    ours, torch_fused = factories(mode, True, False, 0.1, False, fused=True)
    assert_same_trajectory(run(ours, init, grads), run(torch_fused, init, grads))


def test_many_small_tensors():
    init = make_tensors([(17,)] * 1200 + [(3, 5)] * 30, torch.float32, seed=5)
    grads = make_grad_sequence(init, STEPS, seed=6)
    ours, torch_fused = factories("adamw", False, False, 0.1, False, fused=True)
    assert_same_trajectory(run(ours, init, grads), run(torch_fused, init, grads))


LAYOUTS = {
    "transposed": lambda t: t.t().contiguous().t() if t.dim() == 2 else t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t,
    "strided_slice": lambda t: torch.cat([t, t], dim=-1)[..., ::2] if t.dim() >= 1 else t,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", list(MODES))
def test_non_contiguous_params(layout, mode):
    shapes = [(6, 9), (2, 3, 4, 5), (11,), (40, 3)]
    init = make_tensors(shapes, torch.float32, seed=7)
    grads = make_grad_sequence(init, STEPS, seed=8)
    ours, torch_loop = factories(mode, True, False, 0.1, False, foreach=False)
    our_params, our_opt = run(ours, init, grads, layout=LAYOUTS[layout])
    assert_same_trajectory((our_params, our_opt), run(torch_loop, init, grads, layout=LAYOUTS[layout]))
    for p, p0 in zip(our_params, init):
        assert p.stride() == LAYOUTS[layout](p0.clone()).stride(), "the step keeps the layout"


def test_complex_params_step_as_torch():
    init = make_tensors([(5, 3), (8,)], torch.complex64, seed=9)
    grads = make_grad_sequence(init, STEPS, seed=10)
    ours, torch_loop = factories("adamw", True, False, 0.1, False, foreach=False)
    assert_same_trajectory(run(ours, init, grads), run(torch_loop, init, grads))


def test_grad_none_params_are_skipped_and_zero_grads_still_decay():
    init = make_tensors([(4, 4), (4, 4)], torch.float32, seed=11)
    for ours_cls, extra in ((FusedAdamW, {}), (FusedAdam, {"weight_decay": 0.1})):
        a, b = (torch.nn.Parameter(t.clone()) for t in init)
        opt = ours_cls([a, b], lr=0.1, **extra)
        a.grad = torch.zeros_like(a)
        b.grad = None
        opt.step()
        assert b not in opt.state, "a param without grad gets no state"
        torch.testing.assert_close(b.detach(), init[1], rtol=0, atol=0)
        assert not torch.equal(a.detach(), init[0]), "a zero grad still decays the weight"
        assert float(opt.state[a]["step"]) == 1.0
