"""Operators check every argument before they write anything.

Each case builds a call with one bad argument at the end (the last row, the last
optional tensor), snapshots every input, and requires an error that names the
argument and its index with every input unchanged bit for bit, state steps included.
"""

import math
import re

import pytest
import torch

import fused_accum
from fused_accum import FusedAdamW
from fused_accum._ops import ops

HYPER = dict(beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=True,
             maximize=False, decoupled_weight_decay=True)
SHAPES = [(5, 3), (4,), (17,)]

# The positions of the Adam lists in a call.
LISTS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps",
         "master_params", "compensations", "rounding_seeds")


def adam_lists(dtype=torch.float32, write=None):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    state_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    states = [[torch.rand(s, generator=gen).to(state_dtype) for s in SHAPES] for _ in range(3)]
    steps = [torch.tensor(float(i + 1)) for i in range(len(SHAPES))]
    lists = [params, grads, *states, steps, [], [], []]
    if write == "master":
        lists[6] = [p.float() for p in params]
    elif write == "kahan":
        lists[7] = [torch.zeros_like(p) for p in params]
    elif write == "stochastic":
        lists[8] = [torch.tensor(7 * i + 1) for i in range(len(params))]
    return lists


def snapshot(obj):
    """Clones of every tensor in nested lists/dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [snapshot(v) for v in obj]
    return obj


def assert_unchanged(obj, saved):
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "meta":
            torch.testing.assert_close(obj, saved, rtol=0, atol=0, equal_nan=True)
        return
    if isinstance(obj, dict):
        for k in obj:
            assert_unchanged(obj[k], saved[k])
        return
    if isinstance(obj, (list, tuple)):
        assert len(obj) == len(saved)
        for a, b in zip(obj, saved):
            assert_unchanged(a, b)


def refused_unchanged(call, args, kwargs, message):
    saved = snapshot([args, kwargs])
    with pytest.raises(RuntimeError, match=message):
        call(*args, **kwargs)
    assert_unchanged([args, kwargs], saved)


ADAM_CALLS = {
    "adam_step_": lambda lists, **kw: (ops.adam_step_.default, lists, dict(lr=1e-3, **HYPER, **kw)),
    "adam_step_.tensor_lr": lambda lists, **kw: (
        ops.adam_step_.tensor_lr, lists,
        dict(lr=torch.tensor(1e-3), **HYPER, grad_scale=torch.tensor(2.0),
             found_inf=torch.tensor(0.0), **kw)),
    "adam_window_step_": lambda lists, **kw: (
        ops.adam_window_step_.default, lists,
        dict(grad_multiplier=torch.tensor(0.5), lr=1e-3, **HYPER, found_inf=torch.tensor(0.0),
             **kw)),
    "adam_window_step_.tensor_lr": lambda lists, **kw: (
        ops.adam_window_step_.tensor_lr, lists,
        dict(grad_multiplier=torch.tensor(0.5), lr=torch.tensor(1e-3), **HYPER, **kw)),
}


# ------------------------------------------------------------- devices: meta among CPU

def meta_like(t):
    return torch.empty_like(t, device="meta")


@pytest.mark.parametrize("overload", list(ADAM_CALLS))
@pytest.mark.parametrize("name", ["params", "grads", "exp_avgs", "exp_avg_sqs",
                                  "max_exp_avg_sqs", "state_steps"])
def test_adam_refuses_a_meta_tensor_among_cpu_tensors(overload, name):
    lists = adam_lists()
    k = LISTS.index(name)
    lists[k][2] = meta_like(lists[k][2])
    op, args, kwargs = ADAM_CALLS[overload](lists)
    refused_unchanged(op, args, kwargs, rf"{name}\[2\] must be on cpu.*got meta")


@pytest.mark.parametrize("write,name", [("master", "master_params"),
                                        ("kahan", "compensations"),
                                        ("stochastic", "rounding_seeds")])
def test_adam_refuses_a_meta_tensor_in_an_optional_list(write, name):
    lists = adam_lists(torch.bfloat16, write)
    k = LISTS.index(name)
    lists[k][2] = meta_like(lists[k][2])
    refused_unchanged(ops.adam_step_.default, lists, dict(lr=1e-3, **HYPER),
                      rf"{name}\[2\] must be on cpu.*got meta")


@pytest.mark.parametrize("overload,name", [("adam_step_.tensor_lr", "lr"),
                                           ("adam_step_.tensor_lr", "grad_scale"),
                                           ("adam_step_.tensor_lr", "found_inf"),
                                           ("adam_window_step_", "grad_multiplier"),
                                           ("adam_window_step_", "found_inf")])
def test_adam_refuses_a_meta_scalar_tensor(overload, name):
    op, args, kwargs = ADAM_CALLS[overload](adam_lists())
    kwargs[name] = meta_like(kwargs[name])
    refused_unchanged(op, args, kwargs, rf"{name} must be on cpu like the params, got meta")


def test_accumulate_refuses_a_meta_tensor_among_cpu_tensors():
    buffers = [torch.zeros(3), torch.zeros(4)]
    grads = [torch.ones(3), torch.ones(4)]
    refused_unchanged(ops.accumulate_.default, [buffers, [grads[0], meta_like(grads[1])]], {},
                      r"grads\[1\] must be on cpu, got meta")
    refused_unchanged(ops.accumulate_.default, [[buffers[0], meta_like(buffers[1])], grads], {},
                      r"buffers\[1\] must be on cpu, got meta")


def test_accumulate_names_the_buffer_a_grad_must_match():
    refused_unchanged(ops.accumulate_.default, [[torch.zeros(3), torch.zeros(4)],
                                                [torch.ones(3), torch.ones(5)]], {},
                      re.escape("grads[1] must have shape [4] like buffers[1], got [5]"))


def test_sum_of_squares_refuses_a_meta_tensor_among_cpu_tensors():
    with pytest.raises(RuntimeError, match=r"tensors\[1\] must be on cpu, got meta"):
        ops.sum_of_squares([torch.ones(3), torch.empty(2, device="meta")])


def test_all_meta_tensors_give_the_result_shape_only():
    total = ops.sum_of_squares([torch.empty(3, device="meta"),
                                torch.empty(2, dtype=torch.float64, device="meta")])
    assert (total.device.type, total.dtype, total.shape) == ("meta", torch.float64, ())


# ----------------------------------------------- every check before the first write

def expanded_like(t):
    return torch.zeros(1, dtype=t.dtype).expand(t.shape)


@pytest.mark.parametrize("overload", list(ADAM_CALLS))
@pytest.mark.parametrize("name", ["params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"])
def test_adam_refuses_an_expanded_written_tensor_before_writing(overload, name):
    lists = adam_lists()
    k = LISTS.index(name)
    lists[k][2] = expanded_like(lists[k][2])
    op, args, kwargs = ADAM_CALLS[overload](lists)
    refused_unchanged(op, args, kwargs, rf"{name}\[2\] is written, but some of its elements "
                                        r"share memory")


@pytest.mark.parametrize("overload", ["adam_step_.tensor_lr", "adam_window_step_"])
def test_adam_refuses_expanded_grads_it_writes(overload):
    # Unscaled grads are written back and window buffers zeroed; plain grads are
    # only read, so an expanded one is fine there.
    lists = adam_lists()
    lists[1][2] = expanded_like(lists[1][2])
    op, args, kwargs = ADAM_CALLS[overload](lists)
    refused_unchanged(op, args, kwargs, r"grads\[2\] is written, but some of its elements")


def test_adam_reads_expanded_plain_grads():
    lists = adam_lists()
    lists[1][2] = torch.full((1,), 0.5).expand(SHAPES[2])
    expected = adam_lists()
    expected[1][2] = torch.full(SHAPES[2], 0.5)
    ops.adam_step_(*lists, lr=1e-3, **HYPER)
    ops.adam_step_(*expected, lr=1e-3, **HYPER)
    assert_unchanged(lists, expected)


# (list the alias goes in, or "lr"; its row; the tensor it aliases), the message.
ALIASES = {
    "exp_avg is a param": ((2, 2, lambda l: l[0][2]),
                           r"params\[2\] and exp_avgs\[2\]|exp_avgs\[2\] and params\[2\]"),
    "one step for two params": ((5, 2, lambda l: l[5][0]),
                                r"state_steps\[0\] and state_steps\[2\]|"
                                r"state_steps\[2\] and state_steps\[0\]"),
    "moment overlaps another row's param": (
        (3, 1, lambda l: l[0][0].view(-1)[4:8]),
        r"params\[0\] and exp_avg_sqs\[1\]|exp_avg_sqs\[1\] and params\[0\]"),
    "lr is a step": (("lr", None, lambda l: l[5][1]),
                     r"state_steps\[1\] and lr|lr and state_steps\[1\]"),
}


@pytest.mark.parametrize("case", list(ALIASES))
def test_adam_refuses_written_tensors_that_share_memory(case):
    (where, row, source), message = ALIASES[case]
    lists = adam_lists()
    op, args, kwargs = ADAM_CALLS["adam_step_.tensor_lr"](lists)
    if where == "lr":
        kwargs["lr"] = source(lists)
    else:
        lists[where][row] = source(lists)
    refused_unchanged(op, args, kwargs, message)


def test_adam_refuses_a_param_given_twice():
    lists = adam_lists()
    for k in range(6):
        lists[k].append(lists[k][0] if k == 0 else lists[k][0].clone())
    refused_unchanged(ops.adam_step_.default, lists, dict(lr=1e-3, **HYPER),
                      r"params\[0\] and params\[3\]|params\[3\] and params\[0\]")


def test_plain_grads_may_share_memory():
    lists = adam_lists()
    lists[1][1] = lists[1][2][:4]  # read only: the same numbers as a copy
    expected = adam_lists()
    expected[1][1] = expected[1][2][:4].clone()
    ops.adam_step_(*lists, lr=1e-3, **HYPER)
    ops.adam_step_(*expected, lr=1e-3, **HYPER)
    assert_unchanged(lists, expected)


def test_interleaved_views_are_refused():
    # Views with gaps: memory spans are compared, not single elements.
    lists = adam_lists()
    base = torch.zeros(34)
    lists[2][2], lists[3][2] = base[0::2], base[1::2]
    refused_unchanged(ops.adam_step_.default, lists, dict(lr=1e-3, **HYPER), "share memory")


def test_accumulate_refuses_buffers_sharing_memory():
    grads = [torch.ones(3), torch.ones(4)]
    buffer = torch.zeros(8)
    refused_unchanged(ops.accumulate_.default, [[buffer[:3], buffer[2:6]], grads], {},
                      r"buffers\[0\] and buffers\[1\] share memory")
    refused_unchanged(ops.accumulate_.default, [[torch.zeros(3), torch.zeros(1).expand(4)],
                                                grads], {},
                      r"buffers\[1\] is written, but some of its elements share memory")
    refused_unchanged(ops.accumulate_.default, [[buffer[:3], buffer[3:7]],
                                                [grads[0], buffer[:4]]], {},
                      r"buffers\[0\] and grads\[1\] share memory")


def test_eager_step_refuses_a_bad_group_before_stepping_any():
    # Two groups of params (float32, float64) go to two operator calls; the
    # second's bad state must stop the first too.
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4)),
              torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
    opt = FusedAdamW(params, lr=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.state[params[1]]["exp_avg"] = torch.zeros(1, dtype=torch.float64).expand(3)
    saved = snapshot([list(params), [p.grad for p in params], [opt.state[p] for p in params]])
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] is written, but some of its"):
        opt.step()
    assert_unchanged([list(params), [p.grad for p in params], [opt.state[p] for p in params]],
                     saved)


# ------------------------------------------------------------ accumulation precision

def test_accumulate_float64_keeps_float64_precision():
    gen = torch.Generator().manual_seed(0)
    buffers = [torch.ones(5, dtype=torch.float64), torch.randn(300, generator=gen,
                                                               dtype=torch.float64)]
    grads = [torch.full((5,), 1e-12, dtype=torch.float64),
             torch.randn(300, generator=gen, dtype=torch.float64)]
    scale = 0.1
    expected = [b + scale * g for b, g in zip(buffers, grads)]  # rounded as the kernel rounds
    ops.accumulate_(buffers, grads, scale=scale)
    for b, e in zip(buffers, expected):
        torch.testing.assert_close(b, e, rtol=0, atol=0)
    assert float(buffers[0][0]) > 1.0


def test_scale_must_be_finite():
    for scale in (math.inf, -math.inf, math.nan):
        refused_unchanged(ops.accumulate_.default, [[torch.zeros(3)], [torch.ones(3)]],
                          dict(scale=scale), "scale must be finite, got")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scale_beyond_float32_is_refused_for_float32_math(dtype):
    buffers = [torch.zeros(3)] if dtype == torch.float32 else [torch.zeros(3, dtype=dtype)]
    refused_unchanged(ops.accumulate_.default, [buffers, [torch.ones(3, dtype=dtype)]],
                      dict(scale=-1e39), re.escape("scale -1e+39 overflows float32"))


def test_float64_buffers_take_any_finite_scale():
    buffers = [torch.zeros(3, dtype=torch.float64)]
    grads = [torch.full((3,), 1e-30, dtype=torch.float64)]
    ops.accumulate_(buffers, grads, scale=1e39)
    torch.testing.assert_close(buffers[0], 1e39 * grads[0], rtol=0, atol=0)


# --------------------------------------------------------------------- empty lists

def test_empty_lists_are_a_no_op():
    for overload in ADAM_CALLS:
        op, args, kwargs = ADAM_CALLS[overload]([[] for _ in LISTS])
        assert op(*args, **kwargs) is None
    ops.adam_step_(*[[] for _ in LISTS], lr=1e-3, **HYPER)
    ops.accumulate_([], [], scale=2.0)


def test_sum_of_squares_of_no_tensors_is_zero():
    total = ops.sum_of_squares([])
    # As clip_grad_norm_ answers for no grads.
    expected = torch.nn.utils.clip_grad_norm_([], 1.0)
    assert (total.dtype, total.device, total.shape) == (expected.dtype, expected.device, ())
    assert float(total) == float(expected) == 0.0


def test_empty_lists_are_still_checked():
    with pytest.raises(RuntimeError, match="scale must be finite"):
        ops.accumulate_([], [], scale=math.inf)
    lists = [[] for _ in LISTS]
    with pytest.raises(RuntimeError, match="grad_scale must hold one element, got 2"):
        ops.adam_step_(*lists, lr=1e-3, **HYPER, grad_scale=torch.ones(2))
    with pytest.raises(RuntimeError, match="max_exp_avg_sqs must be empty when amsgrad=False"):
        ops.adam_step_(*lists[:4], [torch.zeros(1)], *lists[5:], lr=1e-3,
                       **{**HYPER, "amsgrad": False})


@pytest.mark.parametrize("name", ["fused_accum::adam_step_", "fused_accum::adam_window_step_",
                                  "fused_accum::accumulate_", "fused_accum::sum_of_squares"])
def test_real_tensors_keep_their_backend_kernels(name):
    # The kernel for calls without tensors fills every backend slot without a
    # kernel of its own; CPU, CUDA (where built) and Meta keep theirs.
    registered = torch._C._dispatch_dump(name)
    assert re.search(r"CompositeExplicitAutograd\[alias\]: registered at \S*no_data_kernels.cpp",
                     registered), registered
    table = dict(line.split(": ", 1) for line in
                 torch._C._dispatch_dump_table(name).splitlines() if ": " in line)
    assert "no_data_kernels.cpp" in table["Undefined"]
    assert "no_data_kernels.cpp" in table["Meta"]
    cpu_source = {"adam": "adam_cpu.cpp", "accumulate_": "accumulate_cpu.cpp",
                  "sum_of_squares": "sum_of_squares_cpu.cpp"}
    assert next(f for op, f in cpu_source.items() if op in name) in table["CPU"]
    if fused_accum.build_info()["cuda"]:
        assert "cuda.cu" in table["CUDA"], table["CUDA"]


# -------------------------------------------------------------- checks at trace time

def test_fake_tensors_run_the_same_checks():
    from torch._subclasses.fake_tensor import FakeTensorMode

    lists = adam_lists()
    lists[3][2] = torch.zeros(4)
    with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[2\] must have shape \[17\]"):
        ops.adam_step_(*lists, lr=1e-3, **HYPER)
    with FakeTensorMode() as mode:
        fake = [[mode.from_tensor(t) for t in ts] for ts in lists]
        with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[2\] must have shape \[17\]"):
            ops.adam_step_(*fake, lr=1e-3, **HYPER)
        with pytest.raises(RuntimeError, match=r"grads\[1\] must be BFloat16, got Float"):
            ops.accumulate_([mode.from_tensor(torch.zeros(3, dtype=torch.bfloat16))] * 2,
                            [mode.from_tensor(torch.zeros(3, dtype=torch.bfloat16)),
                             mode.from_tensor(torch.zeros(3))])
        total = ops.sum_of_squares([mode.from_tensor(torch.zeros(3, dtype=torch.float64))])
        assert (total.dtype, total.device.type) == (torch.float64, "cpu")
        # Inside a Meta kernel every fake tensor is on meta: mixed devices are refused
        # by FakeTensor itself before the kernel runs, in torch's words.
        with pytest.raises(RuntimeError, match="found at least two devices, cpu and meta"):
            ops.sum_of_squares([mode.from_tensor(torch.zeros(3)),
                                mode.from_tensor(torch.empty(3, device="meta"))])


def test_compiled_bad_call_fails_at_trace_time():
    lists = adam_lists()
    lists[2][2] = torch.zeros(2, dtype=torch.float32)

    def step(lists):
        ops.adam_step_(*lists, lr=1e-3, **HYPER)

    saved = snapshot(lists)
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError,
                       match=r"exp_avgs\[2\] must have shape \[17\] like params\[2\]"):
        torch.compile(step, backend="eager", fullgraph=True)(lists)
    assert_unchanged(lists, saved)
