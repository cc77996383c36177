"""GradAccumulator against torch: one large batch through torch.optim + clip_grad_norm_."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from fused_accum import FusedAdam, FusedAdamW, GradAccumulator

WINDOWS = 6


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return model.to(dtype)


def make_windows(sizes, windows=WINDOWS, seed=1, dtype=torch.float32):
    """windows x micro-batches of (x, y); sizes[i] is the row count of micro-batch i."""
    gen = torch.Generator().manual_seed(seed)
    return [[(torch.randn(b, 6, generator=gen).to(dtype), torch.randn(b, 3, generator=gen).to(dtype))
             for b in sizes] for _ in range(windows)]


def feed(model, acc, batches, weighted):
    """Micro-batches through the accumulator, calling step() after each one as a
    training loop does; returns the last step()'s result."""
    stepped = False
    for x, y in batches:
        with acc.accumulate(model):
            out = model(x)
            if weighted:  # summed token losses and the token count
                acc.backward(F.mse_loss(out, y, reduction="sum"), weight=y.numel())
            else:
                acc.backward(F.mse_loss(out, y))
        stepped = acc.step()
    return stepped


def run_reference(model, opt, window, max_norm):
    """The large batch: mean over every token of the window, then clip and step."""
    x = torch.cat([x for x, _ in window])
    y = torch.cat([y for _, y in window])
    F.mse_loss(model(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
    opt.step()
    opt.zero_grad()
    return norm


OPTIMIZERS = {
    "adamw": (FusedAdamW, torch.optim.AdamW),
    "adam_l2": (FusedAdam, torch.optim.Adam),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("max_norm", [0.05, None], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("weighted,sizes", [(False, [5, 5, 5, 5]), (True, [3, 7, 2, 5])],
                         ids=["mean", "weighted"])
def test_windows_match_one_large_batch(opt_name, max_norm, weighted, sizes):
    fused_cls, torch_cls = OPTIMIZERS[opt_name]
    model, ref = make_model(), make_model()
    opt = fused_cls(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch_cls(ref.parameters(), lr=1e-2, weight_decay=0.1)
    acc = GradAccumulator(opt, steps=len(sizes), max_grad_norm=max_norm)
    for window in make_windows(sizes):
        assert feed(model, acc, window, weighted) is True
        ref_norm = run_reference(ref, ref_opt, window, max_norm)
        torch.testing.assert_close(acc.grad_norm, ref_norm)
        if max_norm is not None:
            assert ref_norm > 2 * max_norm  # clipping really is active
        assert acc.micro_step == 0
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    for p in model.parameters():
        # fp32 grads stay allocated and are zeroed by the step kernel.
        assert p.grad is not None and not p.grad.any()


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
def test_flush_steps_a_partial_window_normalised_by_what_it_holds(weighted):
    model, ref = make_model(), make_model()
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    acc = GradAccumulator(opt, steps=4, max_grad_norm=0.05)
    partial = make_windows([4, 4, 4] if not weighted else [2, 6, 3], windows=1)[0]
    assert feed(model, acc, partial, weighted) is False
    assert acc.micro_step == 3
    assert acc.flush() is True
    assert acc.flush() is False  # nothing left
    run_reference(ref, ref_opt, partial, 0.05)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_tensor_lr_uses_the_tensor_lr_overload():
    model, ref = make_model(), make_model()
    opt = FusedAdamW(model.parameters(), lr=torch.tensor(1e-2))
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    acc = GradAccumulator(opt, steps=2, max_grad_norm=1.0)
    for window in make_windows([4, 4], windows=3):
        feed(model, acc, window, weighted=False)
        run_reference(ref, ref_opt, window, 1.0)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_classic_loop_without_accumulator_matches_torch():
    model, ref = make_model(), make_model()
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for window in make_windows([5, 5, 5, 5]):
        for m, o in ((model, opt), (ref, ref_opt)):
            for x, y in window:
                (F.mse_loss(m(x), y) / len(window)).backward()
            o.step()
            o.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_bf16_params_accumulate_into_one_fp32_buffer_and_free_their_grads():
    model = make_model(dtype=torch.bfloat16)
    acc = GradAccumulator(FusedAdamW(model.parameters()), steps=2)
    (flat,) = acc._flats.values()
    assert flat.dtype == torch.float32 and flat.numel() == sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        assert acc._buffers[p].data_ptr() >= flat.data_ptr()  # a view into the one allocation
    x, y = make_windows([4], windows=1, dtype=torch.bfloat16)[0][0]
    with acc.accumulate(model):
        acc.backward(F.mse_loss(model(x), y))
    assert all(p.grad is None for p in model.parameters())
    assert flat.abs().sum() > 0
    acc.backward(F.mse_loss(model(x), y))
    assert acc.step() is True
    assert not flat.any()  # zeroed by the step kernel


def _distance(tensors, reference):
    return float(sum((t.double() - r).norm() ** 2 for t, r in zip(tensors, reference)) ** 0.5)


def test_bf16_fp32_buffer_is_far_closer_to_fp64_than_bf16_accumulation():
    micro = 64
    acc_model, plain, same_grads = (make_model(dtype=torch.bfloat16) for _ in range(3))
    fp64_model = make_model(dtype=torch.bfloat16).double()  # the same weights, in fp64
    acc = GradAccumulator(FusedAdamW(acc_model.parameters()), steps=micro)
    summed = [torch.zeros(p.shape, dtype=torch.float64) for p in same_grads.parameters()]
    for x, y in make_windows([8] * micro, windows=1, dtype=torch.bfloat16)[0]:
        acc.backward(F.mse_loss(acc_model(x), y))
        F.mse_loss(plain(x), y).backward()  # autograd sums into p.grad in bf16
        F.mse_loss(fp64_model(x.double()), y.double()).backward()
        # The same bf16 micro-batch grads summed in fp64: isolates the accumulation error.
        grads = torch.autograd.grad(F.mse_loss(same_grads(x), y), list(same_grads.parameters()))
        for s, g in zip(summed, grads):
            s += g.double()
    buffers = [acc._buffers[p] for p in acc_model.parameters()]
    bf16_sums = [p.grad for p in plain.parameters()]
    # Accumulation alone. Measured: fp32 buffer error exactly 0 (64 bf16 values sum
    # exactly in fp32's 24-bit significand here), bf16 accumulation error 0.25 on a
    # gradient of norm about 34; so the bound holds however small the buffer error is.
    buffer_err = _distance(buffers, summed)
    assert _distance(bf16_sums, summed) >= 10 * buffer_err
    assert _distance(bf16_sums, summed) > 0.05
    # Against the fp64 model's gradient, each micro-batch's bf16 forward/backward error
    # is in both and dominates the buffer's: measured ratio 4.3 (2.9 to 4.3 over seeds).
    fp64_grads = [p.grad for p in fp64_model.parameters()]
    assert _distance(bf16_sums, fp64_grads) >= 2 * _distance(buffers, fp64_grads)


def _snapshot(x):
    buf = io.BytesIO()
    torch.save(x, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only=True: a checkpoint loads with the safe default


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_mid_window_continues_bitwise(dtype):
    windows = make_windows([3, 5, 4, 2], windows=4, dtype=dtype)
    micro = [mb for w in windows for mb in w]

    def build():
        model = make_model(dtype=dtype)
        opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        return model, opt, GradAccumulator(opt, steps=4, max_grad_norm=0.05)

    model, _, acc = build()
    feed(model, acc, micro, weighted=True)
    cut = 4 * 2 + 3  # two windows and three micro-batches of the third
    first, opt, acc = build()
    feed(first, acc, micro[:cut], weighted=True)
    assert acc.micro_step == 3
    saved = _snapshot({"model": first.state_dict(), "opt": opt.state_dict(), "acc": acc.state_dict()})
    resumed, opt, acc = build()
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    acc.load_state_dict(saved["acc"])
    feed(resumed, acc, micro[cut:], weighted=True)
    for p, q in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_norm", [1.0, None], ids=["clipped", "unclipped"])
def test_non_finite_window_is_discarded_and_the_next_one_steps(dtype, max_norm):
    model, ref = make_model(dtype=dtype), make_model(dtype=dtype)
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    ref_opt = FusedAdamW(ref.parameters(), lr=1e-2)
    acc = GradAccumulator(opt, steps=2, max_grad_norm=max_norm)
    ref_acc = GradAccumulator(ref_opt, steps=2, max_grad_norm=max_norm)
    good, bad, after = make_windows([4, 4], windows=3, dtype=dtype)
    feed(model, acc, good, weighted=False)
    feed(ref, ref_acc, good, weighted=False)
    params = [p.clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())

    (x0, y0), (x1, y1) = bad
    acc.backward(F.mse_loss(model(x0), y0))
    acc.backward(F.mse_loss(model(x1), y1) * float("inf"))
    assert acc.step() is False
    assert not torch.isfinite(acc.grad_norm)
    assert acc.micro_step == 0
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    for k, s in opt.state_dict()["state"].items():
        for name, t in s.items():
            assert torch.equal(t, state["state"][k][name]), name
    for p in model.parameters():  # the discarded window leaves nothing behind
        g = acc._buffers.get(p, p.grad)
        assert g is None or not g.any()

    # The next window steps as if the bad one never happened.
    assert feed(model, acc, after, weighted=False) is True
    feed(ref, ref_acc, after, weighted=False)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_a_param_without_grad_in_a_window_is_skipped_like_torch():
    model = make_model()
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    acc = GradAccumulator(opt, steps=1)
    x, y = make_windows([4], windows=1)[0][0]
    feed(model, acc, [(x, y)], weighted=False)
    frozen = model[0].weight.clone()
    # Only the last layer gets a gradient now: the first keeps its weight, no decay.
    acc.backward(F.mse_loss(model[2](torch.tanh(model[0](x)).detach()), y))
    assert acc.step() is True
    assert torch.equal(model[0].weight, frozen)
    assert opt.state[model[0].weight]["step"].item() == 1


def _acc(steps=2, **kw):
    model = make_model()
    return model, GradAccumulator(FusedAdamW(model.parameters()), steps=steps, **kw)


def test_step_before_any_backward_is_an_error():
    _, acc = _acc()
    with pytest.raises(RuntimeError, match=r"step\(\) called before any backward"):
        acc.step()


@pytest.mark.parametrize("weight", [0, -3.0, float("nan")])
def test_non_positive_weight_is_refused(weight):
    model, acc = _acc()
    x, y = make_windows([2], windows=1)[0][0]
    with pytest.raises(ValueError, match="weight must be a positive"):
        acc.backward(F.mse_loss(model(x), y, reduction="sum"), weight=weight)
    assert acc.micro_step == 0


def test_mixing_mean_and_weighted_losses_in_a_window_is_refused():
    model, acc = _acc()
    x, y = make_windows([2], windows=1)[0][0]
    acc.backward(F.mse_loss(model(x), y))
    with pytest.raises(ValueError, match="cannot mix"):
        acc.backward(F.mse_loss(model(x), y, reduction="sum"), weight=6)


def test_backward_past_a_full_window_is_refused():
    model, acc = _acc(steps=1)
    x, y = make_windows([2], windows=1)[0][0]
    acc.backward(F.mse_loss(model(x), y))
    with pytest.raises(RuntimeError, match=r"window of 1 micro-batches is full: call step\(\)"):
        acc.backward(F.mse_loss(model(x), y))


def test_model_whose_params_are_not_the_optimizers_is_refused():
    _, acc = _acc()
    with pytest.raises(ValueError, match=r"4 trainable parameter\(s\) of the model are not in"):
        with acc.accumulate(make_model()):
            pass
    partial = make_model()
    acc = GradAccumulator(FusedAdamW(partial[2].parameters()), steps=2)
    with pytest.raises(ValueError, match=r"not in the accumulator's optimizer \(0.weight, 0.bias\)"):
        with acc.accumulate(partial):
            pass


def test_bad_constructor_arguments_are_refused():
    model = make_model()
    with pytest.raises(TypeError, match="needs a fused_accum.FusedAdam or FusedAdamW"):
        GradAccumulator(torch.optim.AdamW(model.parameters()), steps=2)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        GradAccumulator(FusedAdamW(model.parameters()), steps=0)
    with pytest.raises(ValueError, match="max_grad_norm must be positive"):
        GradAccumulator(FusedAdamW(model.parameters()), steps=2, max_grad_norm=0)
