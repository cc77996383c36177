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


def run_accumulator(model, acc, window, weighted):
    for x, y in window:
        with acc.accumulate(model):
            out = model(x)
            if weighted:  # summed token losses and the token count
                acc.backward(F.mse_loss(out, y, reduction="sum"), weight=y.numel())
            else:
                acc.backward(F.mse_loss(out, y))
    return acc.step()


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
        assert run_accumulator(model, acc, window, weighted) is True
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
    for x, y in partial:
        with acc.accumulate(model):
            if weighted:
                acc.backward(F.mse_loss(model(x), y, reduction="sum"), weight=y.numel())
            else:
                acc.backward(F.mse_loss(model(x), y))
        assert acc.step() is False
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
        run_accumulator(model, acc, window, weighted=False)
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
