"""GradAccumulator(scaler=GradScaler) against torch's AMP recipe, window by window.

torch's recipe for gradient accumulation (AMP examples, "Gradient accumulation"), run
on a copy of the model: scaler.scale(loss / N).backward() for each micro-batch, then
scaler.unscale_(opt), clip_grad_norm_, scaler.step(opt), scaler.update(), zero_grad()
with torch.optim.AdamW(fused=True). Windows are N = 4 micro-batches and the scale
stays a power of two (but in one test), so dividing the loss by N (torch) and folding
1/N and 1/scale into the window multiplier (the accumulator) scale every gradient
exactly alike. The accumulator's scaled micro-batch grads are N times torch's (it
never divides a loss): the scales here keep both far from float16 overflow, so the
infs are injected.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from fused_accum import FusedAdamW, GradAccumulator

from test_accumulate import _snapshot
from test_adam_trajectories import storage_ulps
from test_torch_parity import (assert_bitwise, assert_same_training, make_batches,
                               make_model, params_of)
from test_torch_parity import one_intra_op_thread  # noqa: F401  (autouse, here too)

STEPS = 4
WINDOWS = 9
LR = 1e-2
# float16 params keep float16 moments (as torch does): a smaller lr keeps this model's
# float16 training from running away within the test's windows.
FP16_LR = 1e-3
# Injected non-finite micro-batches: window -> (micro-batch, factor on its loss). With
# growth_interval=2 the scale grows after windows 1 and 8 and backs off after 2, 4, 6.
BAD = {2: (0, float("inf")), 4: (3, float("inf")), 6: (1, float("nan"))}
SCALES = [2 ** 10, 2 ** 11, 2 ** 10, 2 ** 10, 2 ** 9, 2 ** 9, 2 ** 8, 2 ** 8, 2 ** 9]
# Below these models' window norms (asserted): the clip is active in every window.
TIGHT_MAX_NORM = 0.05


def make_scaler(**kwargs):
    return torch.amp.GradScaler("cpu", **{"init_scale": 2.0 ** 10, "growth_interval": 2,
                                          **kwargs})


def window_losses(model, window, bad):
    """The window's mean micro-batch losses in float32 (a float16 loss would round
    the scale itself to float16), one of them times inf or nan when `bad`."""
    losses = [F.mse_loss(model(x).float(), y.float()) for x, y in window]
    if bad is not None:
        at, factor = bad
        losses[at] = losses[at] * factor
    return losses


class TorchAmpRecipe:
    def __init__(self, model, max_norm, steps, lr, **scaler_kwargs):
        self.model, self.max_norm, self.steps = model, max_norm, steps
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=True)
        self.scaler = make_scaler(**scaler_kwargs)

    def backward(self, window, bad):
        for loss in window_losses(self.model, window, bad):
            self.scaler.scale(loss / self.steps).backward()

    def finish(self, clip_norm=None):
        """The window end; the clip uses `clip_norm` (test_fp32_windows_...). Returns
        the unscaled norm (float32 grads) or None."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = None
        if params[0].dtype == torch.float32:
            self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if self.max_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, clip_norm)
        # float16 grads: unscale_ refuses them, so torch's recipe cannot clip them; the
        # fused kernel unscales them in scaler.step.
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad()
        return norm


def our_window(model, acc, window, bad):
    results = []
    for loss in window_losses(model, window, bad):
        acc.backward(loss)
        results.append(acc.step())
    return results


def build(dtype, max_norm, steps=STEPS, lr=LR, **scaler_kwargs):
    model = make_model(dtype=dtype)
    ref = TorchAmpRecipe(copy.deepcopy(model), max_norm, steps, lr, **scaler_kwargs)
    opt = FusedAdamW(model.parameters(), lr=lr, weight_decay=0.1)
    acc = GradAccumulator(opt, steps=steps, max_grad_norm=max_norm,
                          scaler=make_scaler(**scaler_kwargs))
    return model, opt, acc, ref


def assert_same_scaler(acc, ref):
    ours, theirs = acc._scaler.state_dict(), ref.scaler.state_dict()
    assert ours == theirs
    return ours


@pytest.mark.parametrize("max_norm", [TIGHT_MAX_NORM, None], ids=["clipped", "unclipped"])
def test_fp32_windows_equal_torchs_amp_recipe_bitwise(max_norm):
    # Bitwise: the scaled grads of loss (ours) and loss / 4 (torch) differ by the exact
    # factor 4; torch multiplies them by inv_scale = 2**-k and the clip coefficient, we
    # by the one product 4**-1 * 2**-k * coefficient: the power-of-two factors are
    # exact, so both round once, on the same coefficient. The coefficient comes from
    # the norm, whose float32 sum may differ from torch's by an ulp (another order):
    # torch's clip takes our norm, and the norms are compared at float32 tolerance.
    model, opt, acc, ref = build(torch.float32, max_norm)
    scales = []
    for w in range(WINDOWS):
        window = make_batches(STEPS, seed=100 + w)
        stepped = our_window(model, acc, window, BAD.get(w))
        ref.backward(window, BAD.get(w))
        ref_norm = ref.finish(clip_norm=acc.grad_norm)
        assert stepped == [False] * (STEPS - 1) + [w not in BAD]
        if w in BAD:
            assert not torch.isfinite(acc.grad_norm) and not torch.isfinite(ref_norm)
        else:
            torch.testing.assert_close(acc.grad_norm, ref_norm)  # the unscaled norm
            if max_norm is not None:
                assert ref_norm > 2 * max_norm
        assert_same_training(opt, ref.opt)
        for p in model.parameters():  # the window's scaled sums are zeroed
            assert not p.grad.any()
        scales.append(assert_same_scaler(acc, ref)["scale"])
    assert opt.state[next(model.parameters())]["step"].item() == WINDOWS - len(BAD)
    assert scales == SCALES


def assert_next_to_torch_fused(opt, ref_opt):
    """float16 params and moments at most 1 storage ulp from torch's in at most 0.1%
    of the elements, and equal step counts: the bound of our float16 Adam step itself
    against torch's fused one on equal grads (test_low_precision_next_to_torch_fused;
    the bias correction is a multiplication there, a division in torch)."""
    differing, total = 0, 0
    for p, q in zip(params_of(opt), params_of(ref_opt)):
        ours, theirs = opt.state[p], ref_opt.state[q]
        assert torch.equal(ours["step"], theirs["step"])
        for a, b in [(p, q), (ours["exp_avg"], theirs["exp_avg"]),
                     (ours["exp_avg_sq"], theirs["exp_avg_sq"])]:
            assert a.dtype == b.dtype == torch.float16
            ulps = storage_ulps(a.detach(), b.detach())
            assert int(ulps.max()) <= 1
            differing += int((ulps > 0).sum())
            total += a.numel()
    assert differing <= 1e-3 * total, (differing, total)


def test_fp16_params_next_to_torchs_amp_recipe_when_its_fp16_sums_are_exact():
    # torch sums the micro-batches' float16 grads in float16; a window of the same
    # micro-batch twice makes that sum exact (g + g = 2g), so torch's fused step and
    # ours see the same unscaled gradient (2g / 2 / 2**k, exact) and only the Adam
    # steps themselves may differ. Measured: bitwise equal in every window.
    model, opt, acc, ref = build(torch.float16, None, steps=2)
    for w in range(WINDOWS):
        bad = None if w not in BAD else (BAD[w][0] % 2, BAD[w][1])
        window = make_batches(1, seed=100 + w, dtype=torch.float16) * 2
        assert our_window(model, acc, window, bad) == [False, w not in BAD]
        ref.backward(window, bad)
        ref.finish()
        assert all(p.grad is None for p in model.parameters())
        assert not any(flat.any() for flat in acc._flats.values())
        assert_next_to_torch_fused(opt, ref.opt)
        assert assert_same_scaler(acc, ref)["scale"] == SCALES[w]


def test_fp16_window_gradient_is_the_exact_sum_that_torchs_recipe_rounds():
    # Distinct micro-batches: torch's float16 sum rounds (measured: about 85% of the
    # elements off the exact sum), the accumulator's float32 buffer holds the exact
    # sum of the float16 micro-batch grads but in the few elements where a float32
    # sum of 4 float16 values rounds (measured 0 to 2 of 4736 per window).
    # Each window starts torch's recipe from our params and moments, so that both
    # take the same micro-batch grads; scale, growth tracker and skips are compared
    # over the whole run.
    model, opt, acc, ref = build(torch.float16, None, lr=FP16_LR)
    probe = copy.deepcopy(model)
    for w in range(WINDOWS):
        ref.model.load_state_dict(model.state_dict())
        ref.opt.load_state_dict(opt.state_dict())
        for group in ref.opt.param_groups:
            group["fused"] = True  # our param groups hold fused=None
        probe.load_state_dict(model.state_dict())
        window = make_batches(STEPS, seed=100 + w, dtype=torch.float16)
        scale = acc._scaler.get_scale()
        exact = [torch.zeros(p.shape, dtype=torch.float64) for p in model.parameters()]
        for loss in window_losses(probe, window, None):
            for e, g in zip(exact, torch.autograd.grad(loss * scale, list(probe.parameters()))):
                e += g.double()
        for loss in window_losses(model, window, BAD.get(w)):
            acc.backward(loss)
        ours = [acc._buffers[p].double() for p in model.parameters()]
        ref.backward(window, BAD.get(w))
        theirs = [p.grad.double() * STEPS for p in ref.model.parameters()]
        assert acc.step() is (w not in BAD)
        ref.finish()
        assert_same_scaler(acc, ref)
        if w in BAD:
            continue
        ours_off = sum(int((o != e).sum()) for o, e in zip(ours, exact))
        theirs_off = sum(int((t != e).sum()) for t, e in zip(theirs, exact))
        total = sum(e.numel() for e in exact)
        assert ours_off <= 1e-3 * total and theirs_off > total / 2, (ours_off, theirs_off)
        norm = torch.cat([e.flatten() for e in exact]).norm() / (STEPS * scale)
        torch.testing.assert_close(acc.grad_norm.double(), norm, rtol=1e-6, atol=0)
    assert acc._scaler.get_scale() == SCALES[-1]


def test_non_power_of_two_scale_stays_within_float32_ulps_of_torchs_recipe():
    # init_scale=1000 and growth_factor=3: inv_scale rounds, and torch's two roundings
    # per element (grad * inv_scale, then * the clip coefficient) and the accumulator's
    # one differ in the last bit of the gradient. Measured after 5 windows: every
    # difference within 1.7 ulp of the tensor's largest magnitude (per element the
    # relative difference is larger where a moment is a cancelling sum).
    model, opt, acc, ref = build(torch.float32, TIGHT_MAX_NORM, init_scale=1000.0,
                                 growth_factor=3.0)
    for w in range(5):
        window = make_batches(STEPS, seed=100 + w)
        our_window(model, acc, window, BAD.get(w))
        ref.backward(window, BAD.get(w))
        ref.finish(clip_norm=acc.grad_norm)
        assert_same_scaler(acc, ref)
    assert acc._scaler.get_scale() == 750.0  # 1000 * 3, then halved twice
    for p, q in zip(params_of(opt), params_of(ref.opt)):
        for a, b in [(p, q)] + [(opt.state[p][k], ref.opt.state[q][k])
                                for k in ("exp_avg", "exp_avg_sq")]:
            ulp_of_largest = 2.0 ** -23 * float(b.detach().abs().max())
            torch.testing.assert_close(a, b, rtol=0, atol=4 * ulp_of_largest)


def test_weighted_windows_follow_torchs_recipe_on_the_total_weight():
    # Weighted losses: torch's recipe divides each summed loss by the window's total
    # weight (known here in advance), which rounds; hence float32 tolerances.
    model, opt, acc, ref = build(torch.float32, TIGHT_MAX_NORM)
    for w in range(4):
        window = [(x[:r], y[:r]) for (x, y), r in zip(make_batches(STEPS, seed=200 + w),
                                                    [1, 3, 2, 4])]
        total = sum(y.numel() for _, y in window)
        for i, (x, y) in enumerate(window):
            bad = float("inf") if (w, i) == (1, 2) else 1.0
            acc.backward(F.mse_loss(model(x), y, reduction="sum") * bad, weight=y.numel())
            ref_loss = F.mse_loss(ref.model(x), y, reduction="sum") * bad / total
            ref.scaler.scale(ref_loss).backward()
        assert acc.step() is (w != 1)
        ref.scaler.unscale_(ref.opt)
        norm = torch.nn.utils.clip_grad_norm_(ref.model.parameters(), TIGHT_MAX_NORM)
        ref.scaler.step(ref.opt)
        ref.scaler.update()
        ref.opt.zero_grad()
        if w != 1:
            torch.testing.assert_close(acc.grad_norm, norm)
        assert_same_scaler(acc, ref)
    for p, q in zip(model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q)


def test_flush_of_a_partial_window_updates_the_scaler():
    model, _, acc, _ = build(torch.float32, None)
    scaler = acc._scaler
    for w, bad in enumerate([None, (1, float("inf"))]):
        for loss in window_losses(model, make_batches(2, seed=300 + w), bad):
            acc.backward(loss)
        assert acc.flush() is (bad is None)
    # Clean (tracker 1), then an inf: back off, tracker reset.
    assert scaler.state_dict()["scale"] == 2.0 ** 9
    assert scaler.state_dict()["_growth_tracker"] == 0
    assert acc.flush() is False  # an empty window is no window: no update
    assert scaler.state_dict()["scale"] == 2.0 ** 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_resume_mid_window_with_the_scaler_saved_alongside(dtype):
    micro = [mb for w in range(3) for mb in make_batches(STEPS, seed=400 + w, dtype=dtype)]

    def run(model, acc, batches):
        for x, y in batches:
            acc.backward(F.mse_loss(model(x).float(), y.float()))
            acc.step()

    lr = LR if dtype == torch.float32 else FP16_LR
    model, _, acc, _ = build(dtype, TIGHT_MAX_NORM, lr=lr)
    run(model, acc, micro)
    cut = STEPS + 2
    first, opt, acc, _ = build(dtype, TIGHT_MAX_NORM, lr=lr)
    run(first, acc, micro[:cut])
    saved = _snapshot({"model": first.state_dict(), "opt": opt.state_dict(),
                       "acc": acc.state_dict(), "scaler": acc._scaler.state_dict()})
    resumed, opt, acc, _ = build(dtype, TIGHT_MAX_NORM, lr=lr)
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    acc.load_state_dict(saved["acc"])
    acc._scaler.load_state_dict(saved["scaler"])
    run(resumed, acc, micro[cut:])
    for p, q in zip(resumed.parameters(), model.parameters()):
        assert_bitwise(p, q)
    # A window of scaled grads does not load into an accumulator without a scaler.
    plain = GradAccumulator(FusedAdamW(make_model(dtype=dtype).parameters()), steps=STEPS)
    with pytest.raises(ValueError, match="window of scaled gradients"):
        plain.load_state_dict(saved["acc"])


def test_a_disabled_scaler_is_no_scaler():
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", enabled=False)):
        model = make_model()
        acc = GradAccumulator(FusedAdamW(model.parameters(), lr=LR), steps=STEPS,
                              max_grad_norm=TIGHT_MAX_NORM, scaler=scaler)
        assert acc._scaler is None
        our_window(model, acc, make_batches(STEPS, seed=500), None)
        results.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*results):
        assert_bitwise(p, q)


def test_the_deprecated_cuda_grad_scaler_is_a_grad_scaler():
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated; disabled without CUDA
        scaler = torch.cuda.amp.GradScaler()
    acc = GradAccumulator(FusedAdamW(model.parameters()), steps=STEPS, scaler=scaler)
    assert (acc._scaler is scaler) is scaler.is_enabled()


@pytest.mark.parametrize("scaler", [object(), "cpu", 2.0 ** 16])
def test_a_scaler_that_is_not_a_grad_scaler_is_refused(scaler):
    model = make_model()
    with pytest.raises(TypeError, match=r"scaler must be a torch.amp.GradScaler or None, got"):
        GradAccumulator(FusedAdamW(model.parameters()), steps=STEPS, scaler=scaler)


def test_scaler_step_stays_refused_when_the_accumulator_holds_the_scaler():
    model, opt, acc, _ = build(torch.float32, None)
    x, y = make_batches(1, seed=600)[0]
    acc.backward(F.mse_loss(model(x), y))
    with pytest.raises(RuntimeError, match=r"pass the GradScaler to the accumulator"):
        acc._scaler.step(opt)
    assert acc.micro_step == 1 and acc._scaler.get_scale() == 2.0 ** 10
