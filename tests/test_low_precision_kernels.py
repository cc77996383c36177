"""The CPU kernel's low-precision write modes and state dtypes, bit for bit against the
element functor.

The CPU kernel steps bfloat16 and float16 storage on vector lanes (csrc/cpu/adam_loops.h);
torch.ops.fused_accum_testing runs AdamElementOp (csrc/adam_element_op.h), the functor the
CUDA kernel calls, one element at a time. Equal bits for every write mode (master weights,
Kahan compensation, stochastic rounding), moment dtype, gradient source and flag show that
the lanes carry out the functor's math and rounding, and that the GPU path computes what
the CPU path computes.
"""

import itertools

import pytest
import torch

import fused_accum  # noqa: F401

# Sizes around the lane widths (8 and 16), a lone element, an empty tensor and a
# strided (non-dense) one that the kernel stages through a copy.
SHAPES = [(1,), (7,), (16,), (37,), (4099,), (0,), (33, 3)]
HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-8)
WRITES = ("in_place", "master", "kahan", "stochastic")


def make_lists(param_dtype, state_dtype, grad_dtype, write, amsgrad, seed=0):
    g = torch.Generator().manual_seed(seed)
    lists = {k: [] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs",
                             "state_steps", "master_params", "compensations",
                             "rounding_seeds")}
    for i, shape in enumerate(SHAPES):
        value = torch.randn(shape, generator=g)
        param = value.to(param_dtype)
        if len(shape) == 2:
            param = param.t().contiguous().t()  # strides unlike the other tensors'

        lists["params"].append(param)
        lists["grads"].append(torch.randn(shape, generator=g).to(grad_dtype))
        lists["exp_avgs"].append((0.1 * torch.randn(shape, generator=g)).to(state_dtype))
        lists["exp_avg_sqs"].append((0.01 * torch.rand(shape, generator=g)).to(state_dtype))
        if amsgrad:
            lists["max_exp_avg_sqs"].append(
                (0.02 * torch.rand(shape, generator=g)).to(state_dtype))
        lists["state_steps"].append(torch.tensor(float(i + 2)))
        if write == "master":
            lists["master_params"].append(value)
        elif write == "kahan":
            residual = value - param.float() if len(shape) < 2 else torch.zeros(shape)
            lists["compensations"].append(residual.to(param_dtype))
        elif write == "stochastic":
            lists["rounding_seeds"].append(
                torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64, generator=g))
    return lists


def clone(lists):
    return {k: [t.clone() for t in v] for k, v in lists.items()}


def bits(t):
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16)
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def assert_bitwise_equal(ours, reference):
    for key in ours:
        for i, (x, y) in enumerate(zip(ours[key], reference[key])):
            assert torch.equal(bits(x), bits(y)), f"{key}[{i}] differs"


def step_both(lists, window, grad_source_factor, decoupled, amsgrad, maximize, steps=3):
    ours, reference = clone(lists), clone(lists)
    for _ in range(steps):
        for library, state in ((torch.ops.fused_accum, ours),
                               (torch.ops.fused_accum_testing, reference)):
            kwargs = dict(lr=1e-2, **HYPER, weight_decay=0.05, amsgrad=amsgrad,
                          maximize=maximize, decoupled_weight_decay=decoupled)
            if window:
                library.adam_window_step_(**state, grad_multiplier=grad_source_factor,
                                          **kwargs)
            else:
                library.adam_step_(**state, grad_scale=grad_source_factor, **kwargs)
        assert_bitwise_equal(ours, reference)
    return ours


CONFIGS = [
    # (param dtype, state dtype, write mode)
    (torch.bfloat16, torch.bfloat16, "in_place"),
    (torch.float16, torch.float16, "in_place"),
    (torch.bfloat16, torch.float32, "in_place"),
    (torch.float32, torch.bfloat16, "in_place"),
    (torch.float32, torch.float16, "in_place"),
    (torch.bfloat16, torch.float32, "master"),
    (torch.float16, torch.float32, "master"),
    (torch.bfloat16, torch.bfloat16, "master"),
    (torch.bfloat16, torch.bfloat16, "kahan"),
    (torch.float16, torch.float32, "kahan"),
    (torch.bfloat16, torch.bfloat16, "stochastic"),
    (torch.bfloat16, torch.float16, "stochastic"),
]
CONFIG_IDS = [f"{p}-{s}-{w}".replace("torch.", "") for p, s, w in CONFIGS]


@pytest.mark.parametrize("param_dtype, state_dtype, write", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("amsgrad, maximize, decoupled",
                         list(itertools.product([False, True], [False, True], [False, True])))
def test_plain_and_unscaled_steps_match_the_element_functor(param_dtype, state_dtype, write,
                                                              amsgrad, maximize, decoupled):
    lists = make_lists(param_dtype, state_dtype, param_dtype, write, amsgrad)
    step_both(lists, False, None, decoupled, amsgrad, maximize)
    step_both(lists, False, torch.tensor(1024.0), decoupled, amsgrad, maximize)


@pytest.mark.parametrize("param_dtype, state_dtype, write", CONFIGS, ids=CONFIG_IDS)
def test_window_steps_on_float32_buffers_match_the_element_functor(param_dtype, state_dtype,
                                                                    write):
    lists = make_lists(param_dtype, state_dtype, torch.float32, write, amsgrad=True)
    ours = step_both(lists, True, torch.tensor(0.25), True, True, False, steps=1)
    assert all(not b.any() for b in ours["grads"])


def test_master_weights_write_the_master_rounded_to_nearest():
    lists = make_lists(torch.bfloat16, torch.float32, torch.bfloat16, "master", False)
    ours = step_both(lists, False, None, True, False, False)
    for param, master in zip(ours["params"], ours["master_params"]):
        assert torch.equal(param, master.to(torch.bfloat16))


def test_kahan_compensation_holds_what_rounding_lost():
    lists = make_lists(torch.bfloat16, torch.bfloat16, torch.bfloat16, "kahan", False)
    ours = step_both(lists, False, None, True, False, False)
    for param, compensation in zip(ours["params"], ours["compensations"]):
        # The compensation is below half a bfloat16 ulp of its param.
        ulp = torch.finfo(torch.bfloat16).eps * param.float().abs()
        assert (compensation.float().abs() <= ulp / 2 + 1e-30).all()


def test_stochastic_rounding_depends_on_seed_and_step_only():
    lists = make_lists(torch.bfloat16, torch.bfloat16, torch.bfloat16, "stochastic", False)
    first = step_both(lists, False, None, True, False, False, steps=1)
    again = step_both(lists, False, None, True, False, False, steps=1)
    assert_bitwise_equal(first, again)
    other = clone(lists)
    other["rounding_seeds"] = [s + 1 for s in other["rounding_seeds"]]
    other = step_both(other, False, None, True, False, False, steps=1)
    assert not torch.equal(first["params"][4], other["params"][4])


@pytest.mark.parametrize("threads", [1, 2])
def test_stochastic_rounding_is_independent_of_the_thread_count(threads):
    lists = make_lists(torch.bfloat16, torch.bfloat16, torch.bfloat16, "stochastic", False)
    big = torch.randn(300_000, generator=torch.Generator().manual_seed(5))
    lists = {k: v[:1] for k, v in lists.items()}
    lists["params"][0] = big.to(torch.bfloat16)
    lists["grads"][0] = torch.randn(300_000).to(torch.bfloat16)
    lists["exp_avgs"][0] = torch.zeros(300_000, dtype=torch.bfloat16)
    lists["exp_avg_sqs"][0] = torch.zeros(300_000, dtype=torch.bfloat16)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        step_both(lists, False, None, True, False, False, steps=2)
    finally:
        torch.set_num_threads(previous)


SPECIAL_VALUES = (float("nan"), float("inf"), -float("inf"), 3.0e38, -0.0)


def inject_special_values(lists, seed):
    """NaN, infinities and near-overflow values in every stream, at spots that fall in
    different lanes of a group, in the tail of a tensor and in lone elements."""
    g = torch.Generator().manual_seed(seed)
    for key in ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs",
                "master_params", "compensations"):
        for t in lists[key]:
            flat = t.view(-1) if t.is_contiguous() else None
            if flat is None or flat.numel() == 0:
                continue
            spots = torch.randint(0, flat.numel(), (max(1, flat.numel() // 200),), generator=g)
            for spot in spots.tolist():
                value = SPECIAL_VALUES[int(torch.randint(len(SPECIAL_VALUES), (), generator=g))]
                if key in ("exp_avg_sqs", "max_exp_avg_sqs") and value < 0:
                    value = float("nan")
                flat[spot] = value
    return lists


def assert_equal_bits_or_both_nan(ours, reference):
    for key in ours:
        for i, (x, y) in enumerate(zip(ours[key], reference[key])):
            if x.dtype in (torch.bfloat16, torch.float16):
                # torch's rounding makes every NaN the same bits, and so must the lanes.
                assert torch.equal(bits(x), bits(y)), f"{key}[{i}] differs"
            else:
                torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True,
                                           msg=f"{key}[{i}] differs")


@pytest.mark.parametrize("param_dtype, state_dtype, write", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_nan_and_infinities_round_as_the_element_functor_rounds_them(param_dtype, state_dtype,
                                                                    write, window, amsgrad):
    grad_dtype = torch.float32 if window else param_dtype
    lists = inject_special_values(
        make_lists(param_dtype, state_dtype, grad_dtype, write, amsgrad, seed=3), seed=4)
    ours, reference = clone(lists), clone(lists)
    for library, state in ((torch.ops.fused_accum, ours),
                           (torch.ops.fused_accum_testing, reference)):
        kwargs = dict(lr=1e-2, **HYPER, weight_decay=0.05, amsgrad=amsgrad, maximize=False,
                      decoupled_weight_decay=True)
        if window:
            library.adam_window_step_(**state, grad_multiplier=torch.tensor(0.5), **kwargs)
        else:
            library.adam_step_(**state, grad_scale=None, **kwargs)
    assert any(t.isnan().any() for t in ours["params"])
    assert_equal_bits_or_both_nan(ours, reference)
