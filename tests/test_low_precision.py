"""Low-precision params: master weights, Kahan summation, stochastic rounding, state_dtype.

References are torch's own optimizers: torch.optim.Adam/AdamW(fused=True) stepping
float32 copies of the bf16/fp16 params with the same gradients upcast. A float32 master
equals that reference bit for bit outside torch's scalar tail (the last numel % W
elements of a tensor, W the elements of one of torch's CPU vectors), as the float32
trajectories of test_adam_trajectories do; in the tail it is held as they hold it.
"""

import io
import math

import pytest
import torch

from fused_accum import FusedAdam, FusedAdamW, GradAccumulator

from test_adam_trajectories import assert_equal_outside_torchs_scalar_tail, storage_ulps
from trajectory import make_grad_sequence, make_tensors, run

BF16, FP16 = torch.bfloat16, torch.float16
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

# Sizes with and without a scalar tail on AVX2 and AVX-512 (8 or 16 float32 lanes).
SHAPES = [(1000,), (37,), (4096,), (1,)]

MODES = {
    "adamw": (FusedAdamW, torch.optim.AdamW, dict(weight_decay=0.01)),
    "adam_l2": (FusedAdam, torch.optim.Adam, dict(weight_decay=0.01)),
}


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Small tensors: on a 2-core VM a second intra-op thread mostly waits (see
    test_torch_parity). Nothing here depends on the thread count: the kernels are
    element-wise and the stochastic rounding noise is keyed on the element index."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_float32_matches_torch_fused(ours, ref):
    """Bit for bit outside torch's scalar tail; in the tail within torch's default float32
    tolerance, as test_adam_trajectories holds float32 trajectories. (Its 4 ulp bound is
    for 20 steps: over 120 steps torch's scalar tail drifts further from its vector body
    in exp_avg_sq, whose beta2 = 0.999 keeps every rounding; measured up to 10 ulp,
    8.1e-7 relative, in this file's runs.)"""
    assert ours.dtype == ref.dtype == torch.float32
    ours, ref = ours.detach(), ref.detach()
    assert_equal_outside_torchs_scalar_tail(ours, ref)
    torch.testing.assert_close(ours, ref)


def assert_rounded_from(param, ref):
    """A 16-bit param equals the float32 reference rounded to nearest, outside torch's
    float32 scalar tail (compared as float32, so the tail is torch's float32 one); in the
    tail, where the float32 value may differ by an ulp, at most one 16-bit step away."""
    param, rounded = param.detach(), ref.detach().to(param.dtype)
    assert_equal_outside_torchs_scalar_tail(param.float(), rounded.float())
    assert int(storage_ulps(param, rounded).max()) <= 1


def checkpoint(obj, map_location=None):
    """obj through torch.save and torch.load, as a checkpoint file holds it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, map_location=map_location)


def bf16_ulp(x):
    """The spacing of bfloat16 values above |x| rounded to bfloat16."""
    a = x.abs().to(BF16)
    return (torch.nextafter(a, torch.full_like(a, math.inf)) - a).float()


# --------------------------------------------------------------------------------------
# 1. Master weights follow torch's float32 optimizer bit for bit


@pytest.mark.parametrize("amsgrad", [False, True], ids=["plain", "amsgrad"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [BF16, FP16], ids=["bf16", "fp16"])
def test_master_weights_equal_torchs_float32_run(dtype, mode, amsgrad):
    ours_cls, torch_cls, extra = MODES[mode]
    kwargs = dict(lr=1e-3, amsgrad=amsgrad, **extra)
    init = make_tensors(SHAPES, dtype, seed=1)
    grads = make_grad_sequence(init, 120, seed=2)
    params, opt = run(lambda ps: ours_cls(ps, master_weights=True, **kwargs), init, grads)
    ref_params, ref_opt = run(lambda ps: torch_cls(ps, fused=True, **kwargs), init, grads,
                              cast=torch.float32)
    # Our own float32 step of the same run: one formula, so equal in every element,
    # the tail included.
    f32_params, f32_opt = run(lambda ps: ours_cls(ps, **kwargs), init, grads,
                              cast=torch.float32)
    for p, q, r in zip(params, ref_params, f32_params):
        state, ref_state = opt.state[p], ref_opt.state[q]
        assert p.dtype == dtype
        assert set(state) == set(ref_state) | {"master_param"}
        assert state["step"].dtype == torch.float32 and float(state["step"]) == 120
        assert_float32_matches_torch_fused(state["master_param"], q)
        assert torch.equal(state["master_param"], r.detach())
        for key in MOMENTS:
            if key in ref_state:
                assert state[key].dtype == torch.float32, key
                assert_float32_matches_torch_fused(state[key], ref_state[key])
                assert torch.equal(state[key], f32_opt.state[r][key]), key
        assert_rounded_from(p, q)

    # Without master weights the same run drifts from the rounded float32 trajectory:
    # most updates (lr 1e-3) are below half a 16-bit ulp of these N(0, 1) params and are
    # lost or rounded. Measured: 84% (bf16) and 91% (fp16) of the elements differ.
    plain, _ = run(lambda ps: ours_cls(ps, **kwargs), init, grads)
    differing = sum(int((p.detach() != q.detach().to(dtype)).sum())
                    for p, q in zip(plain, ref_params))
    assert differing > 0.5 * sum(t.numel() for t in init), differing


def test_master_weights_leave_float32_and_float64_params_alone():
    for dtype in (torch.float32, torch.float64):
        init = make_tensors([(1000,), (37,)], dtype, seed=3)
        grads = make_grad_sequence(init, 10, seed=4)
        params, opt = run(lambda ps: FusedAdamW(ps, lr=1e-2, master_weights=True), init, grads)
        ref_params, ref_opt = run(lambda ps: FusedAdamW(ps, lr=1e-2), init, grads)
        for p, q in zip(params, ref_params):
            assert torch.equal(p, q)
            assert set(opt.state[p]) == set(ref_opt.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
            assert opt.state[p]["exp_avg"].dtype == dtype


# --------------------------------------------------------------------------------------
# 2. Stagnation: updates far below half an ulp


STAGNATION_N = 2 ** 18
STAGNATION_STEPS = 200
STAGNATION_LR = 1e-4


def stagnation_run(make_opt, dtype, n=STAGNATION_N):
    p = torch.nn.Parameter(torch.ones(n, dtype=dtype))
    opt = make_opt([p])
    for _ in range(STAGNATION_STEPS):
        p.grad = torch.ones_like(p)
        opt.step()
    return p.detach(), opt


def stagnation_optimizer(**options):
    # float32 moments for the write modes: with bf16 moments a constant gradient's
    # moments are themselves biased (the increments of exp_avg_sq round to a whole
    # bf16 spacing; measured in a float32 emulation: exp_avg_sq 0.195 instead of
    # 0.181 after 200 steps, movement 2.4% short), which would hide what the write
    # mode does to the param.
    return lambda ps: FusedAdamW(ps, lr=STAGNATION_LR, weight_decay=0.0, **options)


def test_stagnation_plain_bf16_stays_while_kahan_and_stochastic_rounding_move():
    # Every step moves the param by lr / (1 + eps) = 1e-4, far below half the bf16
    # spacing around 1.0 (2**-9 below, 2**-8 above). Every element of the float32 run
    # takes the same path: 64 of them stand for all.
    ref, _ = stagnation_run(
        lambda ps: torch.optim.AdamW(ps, lr=STAGNATION_LR, weight_decay=0.0, fused=True),
        torch.float32, n=64)
    assert bool((ref == ref[0]).all())
    movement = float(1 - ref[0])
    ref = ref[0]
    assert abs(movement - STAGNATION_STEPS * STAGNATION_LR) < 1e-2 * movement

    plain, _ = stagnation_run(stagnation_optimizer(), BF16)
    assert bool((plain == 1.0).all()), "plain bf16: every update is rounded away"
    assert float((plain.float() - ref).abs().min()) > 4 * float(bf16_ulp(ref).max())

    kahan, opt = stagnation_run(
        stagnation_optimizer(kahan_summation=True, state_dtype=torch.float32), BF16)
    assert kahan.dtype == BF16
    error = (kahan.float() - ref).abs()
    assert bool((error <= bf16_ulp(ref)).all()), float(error.max())
    compensation = opt.state[next(iter(opt.state))]["kahan_compensation"]
    assert compensation.dtype == BF16 and bool(compensation.any())

    torch.manual_seed(0)
    rounded, _ = stagnation_run(
        stagnation_optimizer(stochastic_rounding=True, state_dtype=torch.float32), BF16)
    # Statistical bound. The param stays in [0.5, 1], where the bf16 spacing is
    # u = 2**-8. Each step's stochastic rounding adds an error of mean 0 and variance
    # f (1 - f) u**2 <= u**2 / 4 (f: where the value falls between its neighbours);
    # the errors of successive steps are uncorrelated, so after K steps one element's
    # error has std <= sqrt(K) u / 2, and the mean over N independent elements has
    # std <= sqrt(K) u / 2 / sqrt(N) = sqrt(200) * 2**-9 / 512 = 5.4e-5. The tolerance,
    # 3% of the movement (6.0e-4), is 11 of those sigmas.
    u = 2.0 ** -8
    sigma = math.sqrt(STAGNATION_STEPS) * u / 2 / math.sqrt(STAGNATION_N)
    tolerance = 0.03 * movement
    assert tolerance > 10 * sigma
    assert bool((rounded >= 0.5).all() and (rounded <= 1.0).all())
    mean_movement = float((1 - rounded.double()).mean())
    assert abs(mean_movement - movement) < tolerance, (mean_movement, movement)
    # The spread per element, exactly: every step starts on a bf16 value and moves
    # by 1e-4, so f = 1e-4 / u = 0.0256 at every step and the variance after K steps
    # is K f (1 - f) u**2 (std 8.73e-3, well inside the bound above). The sample std
    # of 2**18 elements is within about 0.2% of it; 3% is many of those. Noise
    # repeated from one step to the next (a stream that ignored the step) or
    # rounding to nearest (no spread at all) misses it by far.
    f = STAGNATION_LR / u
    expected_std = math.sqrt(STAGNATION_STEPS * f * (1 - f)) * u
    std = float(rounded.double().std())
    assert abs(std - expected_std) < 0.03 * expected_std, (std, expected_std)


# --------------------------------------------------------------------------------------
# 3. Stochastic rounding: reproducible from torch.manual_seed, resumable


def sr_init():
    return make_tensors([(4096,), (1000,), (37,)], BF16, seed=5)


SR_GRADS = make_grad_sequence(sr_init(), 20, seed=6)


def sr_optimizer(ps):
    return FusedAdamW(ps, lr=1e-3, weight_decay=0.01, stochastic_rounding=True)


def sr_run(seed, grads=SR_GRADS):
    torch.manual_seed(seed)
    return run(sr_optimizer, sr_init(), grads)


def test_stochastic_rounding_repeats_with_torch_manual_seed():
    first, opt = sr_run(0)
    again, opt_again = sr_run(0)
    other, opt_other = sr_run(1)
    for p, q, r in zip(first, again, other):
        seed = opt.state[p]["stochastic_rounding_seed"]
        assert seed.dtype == torch.int64 and seed.dim() == 0
        assert torch.equal(seed, opt_again.state[q]["stochastic_rounding_seed"])
        assert not torch.equal(seed, opt_other.state[r]["stochastic_rounding_seed"])
        assert torch.equal(p, q)
    differing = sum(int((p != r).sum()) for p, r in zip(first, other))
    assert differing > 0.1 * sum(p.numel() for p in first), differing


def test_stochastic_rounding_resumes_the_same_stream_from_a_checkpoint():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(t.clone()) for t in sr_init()]
    opt = sr_optimizer(params)

    def steps(params, opt, grads):
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()

    steps(params, opt, SR_GRADS[:10])
    saved = checkpoint({"params": [p.detach() for p in params], "opt": opt.state_dict()})
    steps(params, opt, SR_GRADS[10:])

    torch.manual_seed(1234)  # the stream comes from the checkpoint, not from this
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    resumed_opt = sr_optimizer(resumed)
    resumed_opt.load_state_dict(saved["opt"])
    steps(resumed, resumed_opt, SR_GRADS[10:])
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed_opt.state[q][key]), key


def test_stochastic_rounding_does_not_depend_on_the_thread_count():
    # Tensors larger than one thread's share of the work (as in test_adam_trajectories'
    # LARGE_SHAPES): with two threads they are split, and the noise of an element is
    # still keyed on its index in its tensor.
    init = make_tensors([(70001,), (257, 301)], BF16, seed=35)
    grads = make_grad_sequence(init, 3, seed=36)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        results.append(run(sr_optimizer, init, grads)[0])
    torch.set_num_threads(1)
    for p, q in zip(*results):
        assert torch.equal(p, q)


def bf16_neighbours(x):
    """The bfloat16 values just below and just above float32 x (equal when x is one)."""
    nearest = x.to(BF16)
    as_float = nearest.float()
    down = torch.nextafter(nearest, torch.full_like(nearest, -math.inf))
    up = torch.nextafter(nearest, torch.full_like(nearest, math.inf))
    low = torch.where(as_float <= x, nearest, down)
    high = torch.where(as_float >= x, nearest, up)
    return low, high


def test_stochastic_rounding_picks_a_neighbour_of_the_float32_result_without_bias():
    # One step from zero moments with float32 moments: the float32 value before the
    # write is torch's float32 step (a size without a scalar tail: bit for bit), so the
    # param must be one of its two bf16 neighbours, rounded up with probability equal
    # to the value's position f between them.
    n = 2 ** 17
    init = make_tensors([(n,)], BF16, seed=7)
    grads = make_grad_sequence(init, 1, seed=8)
    torch.manual_seed(0)
    (p,), _ = run(lambda ps: FusedAdamW(ps, lr=1e-3, stochastic_rounding=True,
                                        state_dtype=torch.float32), init, grads)
    (ref,), _ = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), init, grads,
                    cast=torch.float32)
    ref = ref.detach()
    low, high = bf16_neighbours(ref)
    p = p.detach()
    assert bool(((p == low) | (p == high)).all())
    between = high != low
    f = ((ref - low.float()) / (high.float() - low.float()))[between]
    up = (p == high)[between].double()
    assert between.sum() > n // 2
    # Per bin of f, the share rounded up matches the mean f: binomial std per bin
    # <= 0.5 / sqrt(count); 6 sigmas. Round to nearest would give 0 and 1.
    for lo_f, hi_f in ((0.0, 0.5), (0.5, 1.0)):
        in_bin = (f >= lo_f) & (f < hi_f)
        count = int(in_bin.sum())
        assert count > 1000
        gap = abs(float(up[in_bin].mean()) - float(f[in_bin].double().mean()))
        assert gap < 6 * 0.5 / math.sqrt(count), (lo_f, gap)


# --------------------------------------------------------------------------------------
# 4. Kahan summation tracks the float32 run


def kahan_tracking(state_dtype):
    """200 AdamW steps (lr 1e-3) of bf16 params with |p| in [1, 1.5] that stay away
    from 0. Returns the largest relative errors against torch's float32 run of the
    param + compensation (Kahan) and of the plain bf16 param."""
    gen = torch.Generator().manual_seed(9)
    n = 5133
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    init = [((1 + 0.5 * torch.rand(n, generator=gen)) * sign).to(BF16)]
    grads = make_grad_sequence(init, 200, seed=10)
    kwargs = dict(lr=1e-3, weight_decay=0.01)
    (ref,), _ = run(lambda ps: torch.optim.AdamW(ps, fused=True, **kwargs), init, grads,
                    cast=torch.float32)
    (kahan,), opt = run(lambda ps: FusedAdamW(ps, kahan_summation=True,
                                               state_dtype=state_dtype, **kwargs), init, grads)
    (plain,), _ = run(lambda ps: FusedAdamW(ps, state_dtype=state_dtype, **kwargs), init, grads)
    compensation = opt.state[kahan]["kahan_compensation"]
    assert compensation.dtype == BF16
    assert kahan.dtype == BF16
    ref = ref.detach()
    value = kahan.detach().float() + compensation.float()
    return (float(((value - ref).abs() / ref.abs()).max()),
            float(((plain.detach().float() - ref).abs() / ref.abs()).max()))


def test_kahan_with_float32_moments_tracks_the_float32_run():
    # With float32 moments the only difference from the float32 run is the bf16
    # rounding of the compensation: at most 2**-9 of |compensation| <= 2**-9 |p| per
    # step, errors of random sign over 200 steps. A float32 emulation of this
    # algorithm measures 1.37e-4 (max over elements, relative); plain bf16 5.7e-2.
    kahan, plain = kahan_tracking(torch.float32)
    assert kahan < 3e-4, kahan
    assert plain > 30 * 3e-4, plain


def test_kahan_with_bf16_moments_tracks_the_float32_run():
    # bf16 moments (the default for bf16 params) add their own rounding, about 2**-9
    # of each update: emulation measures 4.7e-4 for Kahan, 5.7e-2 for plain bf16.
    kahan, plain = kahan_tracking(None)
    assert kahan < 1e-3, kahan
    assert plain > 30 * 1e-3, plain


# --------------------------------------------------------------------------------------
# 5. state_dtype


def test_float32_params_with_bf16_moments_stay_close_to_torchs_float32_run():
    init = make_tensors([(1000,), (37,), (4096,)], torch.float32, seed=11)
    grads = make_grad_sequence(init, 50, seed=12)
    params, opt = run(lambda ps: FusedAdamW(ps, lr=1e-3, state_dtype=BF16), init, grads)
    ref_params, ref_opt = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), init, grads)
    for p, q, p0 in zip(params, ref_params, init):
        state, ref_state = opt.state[p], ref_opt.state[q]
        assert p.dtype == torch.float32
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == BF16
        # bf16 keeps 8 significant bits: each step rounds the moments by up to 2**-9
        # relative, and exp_avg_sq (beta2 = 0.999) carries those errors through all 50
        # steps. A float32 emulation of bf16 moments, over 3 seeds and these shapes:
        # displacement error 3.0e-3 to 3.3e-3 (norm, relative to the displacement),
        # exp_avg 3.1e-3 to 4.2e-3 (norm, relative), exp_avg_sq 1.5e-2 to 3.1e-2
        # (largest element, relative). Bounds: about 3x, 2.5x and 2x those. A step
        # that ignored the moments, mis-corrected their bias or lost them to bf16
        # stagnation is off by O(1).
        moved, ref_moved = (p.detach() - p0), (q.detach() - p0)
        assert float((moved - ref_moved).norm() / ref_moved.norm()) < 1e-2
        m, ref_m = state["exp_avg"].float(), ref_state["exp_avg"]
        assert float((m - ref_m).norm() / ref_m.norm()) < 1e-2
        v, ref_v = state["exp_avg_sq"].float(), ref_state["exp_avg_sq"]
        assert float(((v - ref_v).abs() / ref_v).max()) < 6e-2


def test_bf16_params_with_float32_moments_keep_torchs_float32_moments():
    # AdamW's moments depend on the gradients only: with float32 moments they are the
    # float32 run's, bit for bit outside torch's scalar tail.
    init = make_tensors(SHAPES, BF16, seed=13)
    grads = make_grad_sequence(init, 20, seed=14)
    params, opt = run(lambda ps: FusedAdamW(ps, lr=1e-3, amsgrad=True,
                                            state_dtype=torch.float32), init, grads)
    _, ref_opt = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, amsgrad=True, fused=True),
                     init, grads, cast=torch.float32)
    for p, q in zip(params, ref_opt.param_groups[0]["params"]):
        assert p.dtype == BF16
        assert set(opt.state[p]) == {"step", *MOMENTS}
        for key in MOMENTS:
            assert_float32_matches_torch_fused(opt.state[p][key], ref_opt.state[q][key])


@pytest.mark.parametrize("state_dtype", [BF16, FP16, torch.float32], ids=str)
def test_master_weights_with_a_state_dtype(state_dtype):
    init = make_tensors(SHAPES, BF16, seed=15)
    grads = make_grad_sequence(init, 5, seed=16)
    params, opt = run(lambda ps: FusedAdamW(ps, master_weights=True, amsgrad=True,
                                            state_dtype=state_dtype), init, grads)
    for p in params:
        state = opt.state[p]
        assert state["master_param"].dtype == torch.float32
        assert all(state[key].dtype == state_dtype for key in MOMENTS)
        assert torch.equal(p.detach(), state["master_param"].to(BF16))


@pytest.mark.parametrize("dtype", [torch.float32, BF16, FP16], ids=str)
def test_state_dtype_none_keeps_the_params_dtype(dtype):
    init = make_tensors([(10,)], dtype, seed=17)
    (p,), opt = run(lambda ps: FusedAdamW(ps), init, make_grad_sequence(init, 1, seed=18))
    assert opt.state[p]["exp_avg"].dtype == opt.state[p]["exp_avg_sq"].dtype == dtype


# --------------------------------------------------------------------------------------
# 6. Checkpoints


def train(opt, params, steps, seed):
    """Steps with gradients of bf16 values (the same for bf16 and float32 params)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(BF16).to(p.device, p.dtype)
        opt.step()


def fresh_params(values):
    return [torch.nn.Parameter(v.detach().clone()) for v in values]


def test_torch_adamw_checkpoint_loads_into_master_weights():
    init = make_tensors([(64, 9), (37,)], BF16, seed=19)
    torch_params = fresh_params(init)
    torch_opt = torch.optim.AdamW(torch_params, lr=1e-3, fused=True)
    train(torch_opt, torch_params, 5, seed=20)
    saved = checkpoint(torch_opt.state_dict())

    params = fresh_params(torch_params)
    opt = FusedAdamW(params, lr=1e-3, master_weights=True)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["master_weights"] is True  # the optimizer's own options
    assert opt.param_groups[0]["state_dtype"] is None
    for p, q in zip(params, torch_params):
        state, torch_state = opt.state[p], torch_opt.state[q]
        assert state["master_param"].dtype == torch.float32
        assert torch.equal(state["master_param"], p.detach().float())
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], torch_state[key].float())

    # The next step is torch's float32 step from those values.
    ref = fresh_params([p.float() for p in params])
    ref_opt = torch.optim.AdamW(ref, lr=1e-3, fused=True)
    # A copy: torch's load_state_dict keeps a checkpoint tensor that needs no cast (the
    # float32 "step"), so two optimizers loaded from one dict would share it.
    ref_opt.load_state_dict(checkpoint(torch_opt.state_dict()))  # moments cast to float32
    train(opt, params, 1, seed=21)
    train(ref_opt, ref, 1, seed=21)
    for p, q in zip(params, ref):
        assert_float32_matches_torch_fused(opt.state[p]["master_param"], q)
        assert_rounded_from(p, q)


def test_master_weights_checkpoint_loads_into_torch_adamw():
    init = make_tensors([(64, 9), (37,)], BF16, seed=22)
    params = fresh_params(init)
    opt = FusedAdamW(params, lr=1e-3, master_weights=True)
    train(opt, params, 5, seed=23)
    saved = checkpoint(opt.state_dict())

    torch_params = fresh_params(params)
    torch_opt = torch.optim.AdamW(torch_params, lr=1e-3, fused=True)
    torch_opt.load_state_dict(saved)
    for p, q in zip(params, torch_params):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch_opt.state[q][key].dtype == BF16
            assert torch.equal(torch_opt.state[q][key], opt.state[p][key].to(BF16))
    train(torch_opt, torch_params, 1, seed=24)
    assert all(float(torch_opt.state[q]["step"]) == 6 for q in torch_params)
    assert all(torch.isfinite(q).all() for q in torch_params)


ROUND_TRIPS = {
    "master_weights": (BF16, dict(master_weights=True)),
    "master_weights_bf16_moments": (BF16, dict(master_weights=True, state_dtype=BF16)),
    "kahan": (BF16, dict(kahan_summation=True)),
    "kahan_fp16": (FP16, dict(kahan_summation=True)),
    "float32_moments_of_bf16_params": (BF16, dict(state_dtype=torch.float32)),
    "bf16_moments_of_float32_params": (torch.float32, dict(state_dtype=BF16)),
}


def assert_same_state(opt, params, other, other_params):
    for p, q in zip(params, other_params):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == other.state[q].keys()
        for key, value in opt.state[p].items():
            assert value.dtype == other.state[q][key].dtype, key
            assert value.device == q.device, key
            assert torch.equal(value, other.state[q][key]), key


@pytest.mark.parametrize("config", list(ROUND_TRIPS))
def test_round_trip_keeps_every_state_tensor_and_dtype(config):
    dtype, options = ROUND_TRIPS[config]
    init = make_tensors([(64, 9), (37,), (1,)], dtype, seed=25)
    params = fresh_params(init)
    opt = FusedAdamW(params, lr=1e-2, amsgrad=True, **options)
    train(opt, params, 5, seed=26)
    saved = checkpoint({"params": [p.detach() for p in params], "opt": opt.state_dict()})

    loaded = fresh_params(saved["params"])
    loaded_opt = FusedAdamW(loaded, lr=1e-2, amsgrad=True, **options)
    loaded_opt.load_state_dict(saved["opt"])
    assert_same_state(opt, params, loaded_opt, loaded)
    if "master_weights" in options:
        # The check above is not vacuous: the masters are not their params upcast.
        assert any(not torch.equal(opt.state[p]["master_param"], p.detach().float())
                   for p in params)
    if "kahan_summation" in options:
        assert any(opt.state[p]["kahan_compensation"].any() for p in params)
    train(opt, params, 3, seed=27)
    train(loaded_opt, loaded, 3, seed=27)
    assert_same_state(opt, params, loaded_opt, loaded)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_master_weights_checkpoint_across_devices(device):
    init = make_tensors([(64, 9), (37,)], BF16, seed=28)
    params = fresh_params(init)
    opt = FusedAdamW(params, lr=1e-2, master_weights=True)
    train(opt, params, 5, seed=29)
    saved = checkpoint({"params": [p.detach() for p in params], "opt": opt.state_dict()},
                       map_location=device)

    moved = fresh_params(saved["params"])
    moved_opt = FusedAdamW(moved, lr=1e-2, master_weights=True)
    moved_opt.load_state_dict(saved["opt"])
    for p, q in zip(params, moved):
        assert q.device.type == device
        for key, value in opt.state[p].items():
            loaded = moved_opt.state[q][key]
            assert loaded.dtype == value.dtype, key
            assert loaded.device == q.device, key
            assert torch.equal(loaded.cpu(), value), key
    train(moved_opt, moved, 1, seed=30)
    for q in moved:
        master = moved_opt.state[q]["master_param"]
        assert master.dtype == torch.float32 and master.device == q.device
        assert torch.equal(q.detach(), master.to(BF16))
    # And back to the CPU.
    back = checkpoint(moved_opt.state_dict(), map_location="cpu")
    cpu_params = fresh_params([q.detach().cpu() for q in moved])
    cpu_opt = FusedAdamW(cpu_params, lr=1e-2, master_weights=True)
    cpu_opt.load_state_dict(back)
    for p, q in zip(cpu_params, moved):
        master = moved_opt.state[q]["master_param"]
        assert torch.equal(cpu_opt.state[p]["master_param"], master.cpu())


# --------------------------------------------------------------------------------------
# 7. Errors, and options per param group


def bf16_param():
    return torch.nn.Parameter(torch.zeros(4, dtype=BF16))


@pytest.mark.parametrize("cls", [FusedAdam, FusedAdamW])
@pytest.mark.parametrize("first,second", [("master_weights", "kahan_summation"),
                                          ("master_weights", "stochastic_rounding"),
                                          ("kahan_summation", "stochastic_rounding")])
def test_write_modes_are_exclusive(cls, first, second):
    with pytest.raises(ValueError, match=f"{first} and {second} are exclusive"):
        cls([bf16_param()], **{first: True, second: True})
    with pytest.raises(ValueError, match=f"{first} and {second} are exclusive"):
        cls([{"params": [bf16_param()], first: True, second: True}])
    # A group's option joins the optimizer's default.
    with pytest.raises(ValueError, match=f"{first} and {second} are exclusive"):
        cls([{"params": [bf16_param()], second: True}], **{first: True})
    opt = cls([bf16_param()])
    with pytest.raises(ValueError, match=f"{first} and {second} are exclusive"):
        opt.add_param_group({"params": [bf16_param()], first: True, second: True})


@pytest.mark.parametrize("value", [1, 0, None, "yes"], ids=repr)
@pytest.mark.parametrize("option", ["master_weights", "kahan_summation", "stochastic_rounding"])
def test_non_bool_write_mode_is_refused(option, value):
    with pytest.raises(ValueError, match=option):
        FusedAdamW([bf16_param()], **{option: value})
    with pytest.raises(ValueError, match=option):
        FusedAdamW([{"params": [bf16_param()], option: value}])


@pytest.mark.parametrize("value", [torch.float64, torch.int32, "bfloat16", torch.complex64],
                         ids=str)
def test_invalid_state_dtype_is_refused(value):
    with pytest.raises(ValueError, match="state_dtype"):
        FusedAdamW([bf16_param()], state_dtype=value)
    with pytest.raises(ValueError, match="state_dtype"):
        FusedAdam([{"params": [bf16_param()], "state_dtype": value}])


@pytest.mark.parametrize("state_dtype", [torch.float32, BF16], ids=str)
def test_float64_params_with_a_state_dtype_are_refused(state_dtype):
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="state_dtype"):
        opt = FusedAdamW([p], state_dtype=state_dtype)
        p.grad = torch.ones_like(p)
        opt.step()
    assert torch.equal(p, torch.zeros(4, dtype=torch.float64))


def test_stochastic_rounding_of_fp16_params_is_refused_at_the_first_step():
    p = torch.nn.Parameter(torch.ones(4, dtype=FP16))
    opt = FusedAdamW([p], stochastic_rounding=True)  # accepted
    opt.step()  # no gradient, no state
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        opt.step()
    assert torch.equal(p, torch.ones(4, dtype=FP16))


@pytest.mark.parametrize("options", [dict(master_weights=True), dict(kahan_summation=True),
                                     dict(stochastic_rounding=True),
                                     dict(state_dtype=torch.float32)], ids=str)
def test_differentiable_with_a_low_precision_option_is_refused(options):
    with pytest.raises(ValueError, match="differentiable"):
        FusedAdamW([bf16_param()], differentiable=True, **options)
    with pytest.raises(ValueError, match="differentiable"):
        FusedAdam([{"params": [bf16_param()], "differentiable": True, **options}])


def test_master_weights_for_one_param_group_only():
    init = make_tensors([(1000,), (37,), (64, 3), (5,)], BF16, seed=31)
    grads = make_grad_sequence(init, 30, seed=32)

    def split(ps):
        return FusedAdamW([{"params": ps[:2], "master_weights": True}, {"params": ps[2:]}],
                          lr=1e-3)

    params, opt = run(split, init, grads)
    masters, master_opt = run(lambda ps: FusedAdamW(ps, lr=1e-3, master_weights=True),
                              init, grads)
    plain, plain_opt = run(lambda ps: FusedAdamW(ps, lr=1e-3), init, grads)
    assert opt.param_groups[0]["master_weights"] is True
    assert opt.param_groups[1]["master_weights"] is False
    for i, p in enumerate(params):
        expected, expected_opt = ((masters[i], master_opt) if i < 2
                                  else (plain[i], plain_opt))
        assert torch.equal(p, expected)
        assert opt.state[p].keys() == expected_opt.state[expected].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, expected_opt.state[expected][key]), (i, key)
    assert "master_param" in opt.state[params[0]] and "master_param" not in opt.state[params[2]]


# --------------------------------------------------------------------------------------
# 8. GradAccumulator: the window step reads the float32 buffers


@pytest.mark.parametrize("max_norm", [None, 0.5], ids=["unclipped", "clipped"])
def test_window_step_with_master_weights_equals_torchs_float32_step(max_norm):
    """Micro-batch losses sum(p * c) with bf16 c give p.grad = c exactly (as in
    test_torch_parity's exactly summable grads). The accumulator sums them into its
    float32 buffers; the reference sums the same values in float32 in the same order,
    divides by 4 (exact: a power of two) and clips with the accumulator's norm as
    clip_grads_with_norm_ does, then steps torch's float32 fused AdamW. Our kernel
    multiplies the buffer by clip_coef * (1/4), rounded once; that product is exact,
    so both see the same float32 gradient, and the masters equal the reference bit for
    bit outside torch's scalar tail. Reading bf16-rounded gradients would not."""
    steps, windows = 4, 6
    init = make_tensors([(1000,), (37,), (64, 9)], BF16, seed=33)
    params = fresh_params(init)
    opt = FusedAdamW(params, lr=1e-3, weight_decay=0.01, master_weights=True)
    acc = GradAccumulator(opt, steps=steps, max_grad_norm=max_norm)
    ref = fresh_params([t.float() for t in init])
    ref_opt = torch.optim.AdamW(ref, lr=1e-3, weight_decay=0.01, fused=True)
    gen = torch.Generator().manual_seed(34)
    beyond_bf16 = False
    for _ in range(windows):
        sums = [torch.zeros(t.shape) for t in init]
        for _ in range(steps):
            cs = [torch.randn(t.shape, generator=gen).to(BF16) for t in init]
            acc.backward(sum((p * c).sum() for p, c in zip(params, cs)))
            for s, c in zip(sums, cs):
                s += c.float()
            stepped = acc.step()
        assert stepped is True
        for q, s in zip(ref, sums):
            q.grad = s / steps
            beyond_bf16 |= not torch.equal(s.to(BF16).float(), s)
        if max_norm is not None:
            ref_norm = torch.nn.utils.get_total_norm([q.grad for q in ref])
            torch.testing.assert_close(acc.grad_norm, ref_norm)
            assert acc.grad_norm > 2 * max_norm  # the clip is active
            torch.nn.utils.clip_grads_with_norm_(ref, max_norm, acc.grad_norm)
        ref_opt.step()
        ref_opt.zero_grad()
    assert beyond_bf16, "some window sums need more than bf16's precision"
    for p, q in zip(params, ref):
        assert p.grad is None
        assert_float32_matches_torch_fused(opt.state[p]["master_param"], q)
        for key in ("exp_avg", "exp_avg_sq"):
            assert_float32_matches_torch_fused(opt.state[p][key], ref_opt.state[q][key])
        assert_rounded_from(p, q)
