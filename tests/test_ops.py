"""The operators as the dispatcher sees them: opcheck, torch.compile, argument errors."""

import pytest
import torch

from fused_accum import FusedAdamW
from fused_accum._ops import ops

HYPER = dict(beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=True,
             maximize=False, decoupled_weight_decay=True)


def adam_lists(dtype=torch.float32, grad_dtype=None, n=3):
    shapes = [(5, 3), (0,), (17,)][:n]
    params = [torch.randn(s, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, dtype=grad_dtype or dtype) for s in shapes]
    states = [[torch.rand(s, dtype=dtype) for s in shapes] for _ in range(3)]
    steps = [torch.tensor(float(i + 1)) for i in range(len(shapes))]
    # master_params, compensations, rounding_seeds: none, params written in place.
    return [params, grads, *states, steps, [], [], []]


def low_precision_lists(write, state_dtype=torch.float32):
    """adam_lists for bfloat16 params written through `write`, moments in `state_dtype`."""
    lists = adam_lists(torch.bfloat16)
    lists[2:5] = [[t.to(state_dtype) for t in ts] for ts in lists[2:5]]
    params = lists[0]
    if write == "master":
        lists[6] = [p.float() for p in params]
    elif write == "kahan":
        lists[7] = [torch.zeros_like(p) for p in params]
    elif write == "stochastic":
        lists[8] = [torch.tensor(i * 7919, dtype=torch.int64) for i in range(len(params))]
    return lists


OPCHECK_CASES = {
    "adam_step_": lambda: (ops.adam_step_.default, adam_lists(), dict(lr=1e-3, **HYPER)),
    "adam_step_.tensor_lr": lambda: (ops.adam_step_.tensor_lr, adam_lists(),
                                     dict(lr=torch.tensor(1e-3), **HYPER,
                                          grad_scale=torch.tensor(4.0),
                                          found_inf=torch.tensor(0.0))),
    "adam_window_step_": lambda: (ops.adam_window_step_.default,
                                  adam_lists(torch.bfloat16, torch.float32),
                                  dict(grad_multiplier=torch.tensor(0.25), lr=1e-3, **HYPER)),
    "adam_window_step_.tensor_lr": lambda: (ops.adam_window_step_.tensor_lr, adam_lists(),
                                            dict(grad_multiplier=torch.tensor(0.5),
                                                 lr=torch.tensor(1e-3), **HYPER)),
    "adam_step_.master_weights": lambda: (ops.adam_step_.default, low_precision_lists("master"),
                                          dict(lr=1e-3, **HYPER)),
    "adam_step_.kahan": lambda: (ops.adam_step_.default,
                                 low_precision_lists("kahan", torch.bfloat16),
                                 dict(lr=1e-3, **HYPER)),
    "adam_window_step_.stochastic_rounding": lambda: (
        ops.adam_window_step_.default, low_precision_lists("stochastic", torch.float16),
        dict(grad_multiplier=torch.tensor(0.25), lr=1e-3, **HYPER)),
    "accumulate_": lambda: (ops.accumulate_.default,
                            [[torch.zeros(4, 3), torch.zeros(7)],
                             [torch.randn(4, 3, dtype=torch.bfloat16), torch.randn(7, dtype=torch.bfloat16)]],
                            dict(scale=0.5)),
    "sum_of_squares": lambda: (ops.sum_of_squares.default,
                               [[torch.randn(4, 3), torch.randn(5, dtype=torch.bfloat16)]], {}),
    "sum_of_squares.float64": lambda: (ops.sum_of_squares.default,
                                       [[torch.randn(4, 3), torch.randn(5, dtype=torch.float64)]],
                                       {}),
}


def test_every_operator_has_an_opcheck_case():
    names = {name for name in dir(torch.ops.fused_accum) if not name.startswith("_")}
    names -= {"name"}
    covered = {case.split(".")[0] for case in OPCHECK_CASES}
    assert names <= covered, names - covered


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    op, args, kwargs = OPCHECK_CASES[case]()
    torch.library.opcheck(op, args, kwargs)


def test_sum_of_squares_matches_torch():
    tensors = [torch.randn(1000, 33), torch.randn(70001), torch.randn(3, dtype=torch.bfloat16)]
    expected = sum(float(t.double().square().sum()) for t in tensors)
    assert float(ops.sum_of_squares(tensors)) == pytest.approx(expected, rel=1e-6)


def test_sum_of_squares_of_float64_is_float64():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(300_001, generator=gen, dtype=torch.float64) * 1e3,
               torch.randn(7, generator=gen, dtype=torch.float64)]
    expected = float(torch.cat(tensors).square().sum())
    total = ops.sum_of_squares(tensors)
    assert total.dtype == torch.float64
    # Summed in another order than torch's: a few float64 ulp apart, not float32's.
    assert float(total) == pytest.approx(expected, rel=1e-13)
    assert ops.sum_of_squares([torch.randn(5), torch.randn(3, dtype=torch.bfloat16)]).dtype == \
        torch.float32


def test_accumulate_sums_in_float32():
    buffers = [torch.zeros(300, dtype=torch.float32)]
    grad = torch.full((300,), 1e-3, dtype=torch.bfloat16)
    for _ in range(1000):
        ops.accumulate_(buffers, [grad], scale=1.0)
    expected = 1000 * float(grad[0])
    torch.testing.assert_close(buffers[0], torch.full((300,), expected), rtol=1e-5, atol=0)


def test_compiled_step_matches_eager():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = FusedAdamW(model.parameters(), lr=0.01)
    ref_model = torch.nn.Linear(8, 4)
    ref_model.load_state_dict(model.state_dict())
    ref_opt = FusedAdamW(ref_model.parameters(), lr=0.01)
    compiled_step = torch.compile(opt.step, fullgraph=True)
    for _ in range(3):
        x = torch.randn(2, 8)
        for m, step in ((model, compiled_step), (ref_model, ref_opt.step)):
            m.zero_grad()
            m(x).sum().backward()
            step()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


BAD_CALLS = {
    "grads": (lambda l: l.__setitem__(1, l[1][:2]), "grads must hold 3 tensors"),
    "dtype": (lambda l: l[2].__setitem__(2, l[2][2].double()), r"exp_avgs\[2\] must be Float"),
    "state dtype": (lambda l: l[2].__setitem__(0, l[2][0].double()),
                    r"exp_avgs must have the params' dtype Float or be float32, bfloat16 or "
                    r"float16, got Double"),
    "exclusive": (lambda l: (l.__setitem__(6, [p.float() for p in l[0]]),
                             l.__setitem__(7, [torch.zeros_like(p) for p in l[0]])),
                  r"master_params \(3 tensors\), compensations \(3\) and rounding_seeds "
                  r"\(0\) are exclusive"),
    "master for float32": (lambda l: l.__setitem__(6, [p.clone() for p in l[0]]),
                           "master_params are for bfloat16 and float16 params, got Float"),
    "seeds": (lambda l: l.__setitem__(8, [torch.tensor(1)]), "rounding_seeds must hold 3 tensors"),
    "shape": (lambda l: l[3].__setitem__(2, torch.zeros(4)), r"exp_avg_sqs\[2\] must have shape"),
    "step": (lambda l: l[5].__setitem__(0, torch.tensor(1.0, dtype=torch.float64)),
             r"state_steps\[0\] must be a one-element float32 tensor"),
    "max_exp_avg_sqs": (lambda l: l.__setitem__(4, []), "max_exp_avg_sqs must hold 3 tensors"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_name_the_argument(case):
    spoil, message = BAD_CALLS[case]
    lists = adam_lists()
    spoil(lists)
    with pytest.raises(RuntimeError, match=message):
        ops.adam_step_(*lists, lr=1e-3, **HYPER)


def test_of_many_bad_rows_the_first_is_named_and_nothing_changes():
    # Enough rows for the checks to be split between threads. Every row of the
    # second half is bad, so the threads past the first fail at once, while the
    # first thread reaches its one bad row last: only the first row may be named.
    n = 512
    params = [torch.randn(8) for _ in range(n)]
    lists = [params, *([torch.randn(8) for _ in range(n)] for _ in range(4)),
             [torch.tensor(1.0) for _ in range(n)], [], [], []]
    for i in [n // 2 - 1, *range(n // 2, n)]:
        lists[3][i] = torch.zeros(3)
    before = [[t.clone() for t in ts] for ts in lists]
    with pytest.raises(RuntimeError, match=rf"exp_avg_sqs\[{n // 2 - 1}\] must have shape"):
        ops.adam_step_(*lists, lr=1e-3, **HYPER)
    for ts, saved in zip(lists, before):
        for t, s in zip(ts, saved):
            torch.testing.assert_close(t, s, rtol=0, atol=0)


def test_float32_grads_only_for_the_window_step():
    lists = adam_lists(torch.bfloat16, torch.float32)
    with pytest.raises(RuntimeError, match=r"grads\[0\] must have the params' dtype BFloat16, got Float"):
        ops.adam_step_(*lists, lr=1e-3, **HYPER)
