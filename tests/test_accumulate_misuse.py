"""GradAccumulator used in ways it must refuse clearly or follow: a param listed twice,
params added to the optimizer later, a removed accumulator, a state_dict that does not
fit, complex params."""

import re

import pytest
import torch
import torch.nn.functional as F

from fused_accum import FusedAdamW, GradAccumulator
from test_accumulate import feed, make_model, make_windows, run_reference

LR, MAX_NORM = 1e-2, 0.05


def square_loss(params):
    return sum((p.float() ** 2).sum() for p in params)


# ------------------------------------------------------------------ a param twice
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_param_listed_twice_is_refused_when_the_accumulator_is_made(dtype):
    a = torch.nn.Parameter(torch.randn(4, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(3, dtype=dtype))
    with pytest.warns(UserWarning, match="duplicate parameters"):  # torch only warns
        opt = FusedAdamW([a, b, a])
    with pytest.raises(ValueError, match=re.escape(
            "param_groups[0]['params'][2] is the same tensor as "
            "param_groups[0]['params'][0]")):
        GradAccumulator(opt, steps=2)
    assert opt._accumulator is None  # nothing was set up


def test_param_put_in_a_second_group_is_refused_at_the_next_call():
    # torch refuses it in add_param_group; editing param_groups directly gets past that.
    a, b = (torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16)) for _ in range(2))
    opt = FusedAdamW([{"params": [a]}, {"params": [b]}])
    acc = GradAccumulator(opt, steps=2)
    opt.param_groups[1]["params"].append(a)
    with pytest.raises(ValueError, match=re.escape(
            "param_groups[1]['params'][1] is the same tensor as "
            "param_groups[0]['params'][0]")):
        acc.backward(square_loss([a, b]))
    assert a.grad is None and b.grad is None  # refused before the backward


# ----------------------------------------------------------------- add_param_group
def two_part_model(dtype, seed=0):
    """A body trained from the start and a head unfrozen later, as in fine-tuning."""
    model = make_model(seed, dtype)
    body, head = model[0], model[2]
    head.requires_grad_(False)
    return model, body, head


@pytest.mark.parametrize("mid_window", [False, True], ids=["between_windows", "mid_window"])
def test_param_group_added_later_matches_torch(mid_window):
    """The head joins after two windows (or after the first micro-batch of the third):
    torch AdamW on one large batch per window, the head's gradient counting from the
    micro-batch after it was unfrozen, as loss/N accumulation in torch gives."""
    model, body, head = two_part_model(torch.float32)
    ref, ref_body, ref_head = two_part_model(torch.float32)
    opt = FusedAdamW(body.parameters(), lr=LR)
    ref_opt = torch.optim.AdamW(ref_body.parameters(), lr=LR)
    acc = GradAccumulator(opt, steps=3, max_grad_norm=MAX_NORM)
    windows = make_windows([4, 4, 4], windows=4)
    for w, window in enumerate(windows):
        for m, (x, y) in enumerate(window):
            if w == 2 and m == (1 if mid_window else 0):
                for part, o in ((head, opt), (ref_head, ref_opt)):
                    part.requires_grad_(True)
                    o.add_param_group({"params": list(part.parameters()), "lr": LR / 2})
            with acc.accumulate(model):
                acc.backward(F.mse_loss(model(x), y))
            stepped = acc.step()
            (F.mse_loss(ref(x), y) / len(window)).backward()
        assert stepped
        ref_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in ref.parameters() if p.grad is not None], MAX_NORM)
        ref_opt.step()
        ref_opt.zero_grad()
        torch.testing.assert_close(acc.grad_norm, ref_norm)
    assert ref_norm > 2 * MAX_NORM  # clipping is active in the last window
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def unfreeze_head_after_two_windows(dtype, remake, add_group):
    """Four windows of 2 micro-batches; the head is unfrozen before the third, and
    with `add_group` only then added to the optimizer. With `remake`, the accumulator
    is made again at that point. Returns the final params and the accumulator's
    state_dict in the middle of the last window."""
    model, body, head = two_part_model(dtype)
    opt = FusedAdamW((body if add_group else model).parameters(), lr=LR)
    acc = GradAccumulator(opt, steps=2, max_grad_norm=MAX_NORM)
    for w, window in enumerate(make_windows([3, 5], windows=4, dtype=dtype)):
        if w == 2:
            head.requires_grad_(True)
            if add_group:
                opt.add_param_group({"params": list(head.parameters())})
            if remake:
                acc.remove()
                acc = GradAccumulator(opt, steps=2, max_grad_norm=MAX_NORM)
        assert feed(model, acc, window[:1], weighted=False) is False
        if w == 3:
            saved = acc.state_dict()
        assert feed(model, acc, window[1:], weighted=False) is True
    return [p.detach().clone() for p in model.parameters()], saved


@pytest.mark.parametrize("add_group", [True, False], ids=["add_param_group", "unfrozen"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_params_joining_later_equal_a_new_accumulator(dtype, add_group):
    """A param group added between windows, or a param of the optimizer that was
    frozen when the accumulator was made and is unfrozen, is stepped with the same
    bits as by an accumulator made again at that point; bf16 params get buffers in the
    same layout, so the accumulator's state_dict is interchangeable too."""
    joined, joined_state = unfreeze_head_after_two_windows(dtype, False, add_group)
    remade, remade_state = unfreeze_head_after_two_windows(dtype, True, add_group)
    assert not torch.equal(joined[-1], two_part_model(dtype)[0][2].bias)  # head stepped
    for p, q in zip(joined, remade):
        assert torch.equal(p, q)
    assert len(joined_state["buffers"]) == len(remade_state["buffers"])
    for b, c in zip(joined_state["buffers"], remade_state["buffers"]):
        assert torch.equal(b, c)
    assert joined_state["grads"].keys() == remade_state["grads"].keys()
    assert joined_state["touched"] == remade_state["touched"]


def test_low_precision_grad_of_a_param_added_mid_window_joins_its_buffer():
    a = torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    opt = FusedAdamW([a], lr=LR)
    acc = GradAccumulator(opt, steps=2)
    acc.backward(square_loss([a, b]))  # b is not the accumulator's yet: p.grad keeps it
    first = b.grad.float().clone()
    opt.add_param_group({"params": [b]})
    acc.backward(square_loss([a, b]))
    assert b.grad is None  # both micro-batches in b's float32 buffer
    torch.testing.assert_close(acc._buffers[b], first + 2 * b.detach().float(), rtol=0, atol=0)


def test_params_removed_from_the_optimizer_are_refused_at_the_next_call():
    model = make_model()
    opt = FusedAdamW(model.parameters(), lr=LR)
    acc = GradAccumulator(opt, steps=2)
    opt.param_groups[0]["params"].pop(1)
    with pytest.raises(RuntimeError, match=re.escape(
            "the optimizer's params changed since the GradAccumulator was made: "
            "param_groups[0]['params'][1] is not the param it holds there")):
        acc.backward(square_loss(model.parameters()))


# --------------------------------------------------------------------------- remove
@pytest.mark.parametrize("call", ["step", "flush", "backward", "accumulate", "state_dict",
                                  "load_state_dict"])
def test_removed_accumulator_refuses_every_call(call):
    model = make_model()
    opt = FusedAdamW(model.parameters(), lr=LR)
    acc = GradAccumulator(opt, steps=1)
    saved = acc.state_dict()
    x = torch.randn(2, 6)
    acc.backward(model(x).square().mean())
    before = [p.detach().clone() for p in model.parameters()]
    acc.remove()
    acc.remove()  # a second remove() is harmless, as in teardown code
    calls = {
        "step": acc.step, "flush": acc.flush, "state_dict": acc.state_dict,
        "backward": lambda: acc.backward(model(x).square().mean()),
        "accumulate": lambda: acc.accumulate(model).__enter__(),
        "load_state_dict": lambda: acc.load_state_dict(saved),
    }
    with pytest.raises(RuntimeError, match=re.escape(
            f"GradAccumulator.{call}() after remove(): the accumulator no longer "
            "follows its optimizer's gradients")):
        calls[call]()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    # The optimizer is back to plain use, and can be driven by a new accumulator.
    opt.step()
    GradAccumulator(opt, steps=1)


def test_remove_releases_the_buffers_and_leaves_fp32_window_sums_in_grad():
    model = make_model()
    model[2].to(torch.bfloat16)
    opt = FusedAdamW(model.parameters(), lr=LR)
    acc = GradAccumulator(opt, steps=3)
    acc.backward(model[2](model[0](torch.randn(2, 6)).bfloat16()).float().square().mean())
    fp32_grads = [p.grad.clone() for p in model[0].parameters()]
    acc.remove()
    assert acc._flats == {} and acc._buffers == {}
    assert all(p.grad is None for p in model[2].parameters())
    for p, g in zip(model[0].parameters(), fp32_grads):
        assert torch.equal(p.grad, g)


# -------------------------------------------------------------------- load_state_dict
def bf16_and_fp32_accumulator(fed=True):
    """77 bf16 elements in one buffer (params 0 and 1), two fp32 params (2 and 3);
    with `fed`, one micro-batch of a window of 3 in it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 11).to(torch.bfloat16),  # 66 + 11
                                torch.nn.Linear(11, 3))
    acc = GradAccumulator(FusedAdamW(model.parameters(), lr=LR), steps=3)
    if fed:
        x = torch.randn(2, 6, dtype=torch.bfloat16)
        acc.backward(model[1](model[0](x).float()).square().mean())
    return model, acc


def corrupt(name):
    """(change to a state_dict, the expected message)."""
    cases = {
        "buffer_shape": (lambda s: s["buffers"].__setitem__(0, torch.ones(1)),
                         "state_dict['buffers'][0] has shape (1,) and dtype torch.float32, "
                         "expected shape (77,) and dtype torch.float32"),
        "buffer_dtype": (lambda s: s["buffers"].__setitem__(0, s["buffers"][0].bfloat16()),
                         "state_dict['buffers'][0] has shape (77,) and dtype torch.bfloat16, "
                         "expected shape (77,) and dtype torch.float32"),
        "buffer_count": (lambda s: s["buffers"].append(torch.zeros(77)),
                         "state_dict['buffers'] holds 2 buffers, expected 1"),
        "missing_key": (lambda s: s.pop("touched"),
                        "state_dict is missing 'touched'"),
        "unexpected_key": (lambda s: s.__setitem__("extra", 1),
                           "state_dict has unexpected key 'extra'"),
        "grad_shape": (lambda s: s["grads"].__setitem__(2, torch.zeros(3, 1)),
                       "state_dict['grads'][2] has shape (3, 1) and dtype torch.float32, "
                       "expected shape (3, 11) and dtype torch.float32"),
        "grad_dtype": (lambda s: s["grads"].__setitem__(3, torch.zeros(3, dtype=torch.float64)),
                       "state_dict['grads'][3] has shape (3,) and dtype torch.float64, "
                       "expected shape (3,) and dtype torch.float32"),
        "grad_of_buffered_param": (lambda s: s["grads"].__setitem__(0, torch.zeros(11, 6)),
                                   "state_dict['grads'][0] is for param 0, whose window sum "
                                   "is kept in state_dict['buffers']"),
        "grad_index": (lambda s: s["grads"].__setitem__(4, torch.zeros(3)),
                       "state_dict['grads'] has index 4, expected indices of the 4 params"),
        "touched_index": (lambda s: s.__setitem__("touched", [0, 7]),
                          "state_dict['touched'] has index 7, expected indices of the 4 "
                          "params"),
        "micro_step": (lambda s: s.__setitem__("micro_step", 4),
                       "state_dict['micro_step'] is 4, expected an integer from 0 to 3"),
        "mode": (lambda s: s.__setitem__("mode", "sum"),
                 "state_dict['mode'] is 'sum', expected None, 'mean' or 'weighted'"),
    }
    return cases[name]


@pytest.mark.parametrize("name", ["buffer_shape", "buffer_dtype", "buffer_count",
                                  "missing_key", "unexpected_key", "grad_shape",
                                  "grad_dtype", "grad_of_buffered_param", "grad_index",
                                  "touched_index", "micro_step", "mode"])
def test_load_state_dict_refuses_a_state_that_does_not_fit(name):
    change, message = corrupt(name)
    model, acc = bf16_and_fp32_accumulator()
    state = acc.state_dict()
    change(state)
    other_model, other = bf16_and_fp32_accumulator(fed=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        other.load_state_dict(state)
    # Nothing was loaded.
    assert other.micro_step == 0 and not other._touched
    assert not any(flat.any() for flat in other._flats.values())
    assert all(p.grad is None for p in other_model.parameters())


def test_load_state_dict_takes_a_state_that_fits():
    model, acc = bf16_and_fp32_accumulator()
    state = acc.state_dict()
    other_model, other = bf16_and_fp32_accumulator(fed=False)
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()["buffers"][0], state["buffers"][0])
    assert other.micro_step == 1
    for p, q in zip(model[1].parameters(), other_model[1].parameters()):
        assert torch.equal(p.grad, q.grad)


# ------------------------------------------------------------------- complex params
class ComplexModel(torch.nn.Module):
    """A complex linear map, its real and imaginary parts fed to a real head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(6, 5, dtype=torch.complex64) * 0.4)
        self.b = torch.nn.Parameter(torch.randn(5, dtype=torch.complex64) * 0.1)
        self.head = torch.nn.Linear(10, 3)

    def forward(self, x):
        z = x.to(torch.complex64) @ self.w + self.b
        return self.head(torch.tanh(torch.cat([z.real, z.imag], dim=-1)))


@pytest.mark.parametrize("max_norm", [MAX_NORM, None], ids=["clipped", "unclipped"])
def test_complex_params_match_torch_adamw_and_clip_grad_norm(max_norm):
    model, ref = ComplexModel(), ComplexModel()
    opt = FusedAdamW(model.parameters(), lr=LR, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.1)
    acc = GradAccumulator(opt, steps=3, max_grad_norm=max_norm)
    for window in make_windows([4, 4, 4], windows=5):
        assert feed(model, acc, window, weighted=False) is True
        # torch's norm of a complex grad is sqrt(sum |z|^2).
        ref_norm = run_reference(ref, ref_opt, window, max_norm)
        torch.testing.assert_close(acc.grad_norm, ref_norm)
        if max_norm is not None:
            assert ref_norm > 2 * max_norm
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.dtype == q.dtype
        torch.testing.assert_close(p, q)
