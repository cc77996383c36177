"""The CUDA kernels against torch's fused CUDA Adam, against our CPU kernels, under CUDA
graph capture, and on a second device. Needs a GPU: skipped (with the reason) without one.
"""

import itertools

import pytest
import torch

import fused_accum

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the CUDA kernels are compiled here but can only run on a GPU")

ops = torch.ops.fused_accum
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Odd sizes, an empty tensor, one above a 65536-element chunk, one of several chunks.
SHAPES = [(3, 5), (0,), (1,), (65537,), (4, 70001), (129,)]
HYPER = dict(beta1=0.9, beta2=0.999, weight_decay=0.05, eps=1e-8)
# The lists torch's fused kernels take, then ours adds: how the params are written.
TORCH_LISTS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps")
WRITE_LISTS = ("master_params", "compensations", "rounding_seeds")
LISTS = TORCH_LISTS + WRITE_LISTS


def make_state(device, dtype, amsgrad, grad_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    lists = {k: [] for k in LISTS}  # the write lists stay empty: params stepped in place
    for shape in SHAPES:
        lists["params"].append(torch.randn(shape, generator=g).to(device, dtype))
        lists["grads"].append(torch.randn(shape, generator=g).to(device, grad_dtype or dtype))
        lists["exp_avgs"].append((0.1 * torch.randn(shape, generator=g)).to(device, dtype))
        lists["exp_avg_sqs"].append((0.01 * torch.rand(shape, generator=g)).to(device, dtype))
        if amsgrad:
            lists["max_exp_avg_sqs"].append(
                (0.02 * torch.rand(shape, generator=g)).to(device, dtype))
        lists["state_steps"].append(torch.tensor(3.0, device=device))
    return lists


def copy_to(lists, device):
    return {k: [t.detach().to(device, copy=True) for t in v] for k, v in lists.items()}


def assert_lists_close(actual, expected, **tolerances):
    for key in actual:
        for i, (a, e) in enumerate(zip(actual[key], expected[key])):
            torch.testing.assert_close(a.cpu(), e.cpu(), msg=f"{key}[{i}]", **tolerances)


def assert_lists_equal(actual, expected):
    for key in actual:
        for i, (a, e) in enumerate(zip(actual[key], expected[key])):
            assert torch.equal(a, e), f"{key}[{i}] differs"


def run_torch_fused(lists, lr, scale, steps, amsgrad, maximize, decoupled):
    fused = torch._fused_adamw_ if decoupled else torch._fused_adam_
    for _ in range(steps):
        # torch.optim counts the steps in Python before calling its fused kernel.
        torch._foreach_add_(lists["state_steps"], 1)
        fused(*(lists[k] for k in TORCH_LISTS), lr=lr, **HYPER, amsgrad=amsgrad, maximize=maximize,
              grad_scale=scale)


def max_error(tensors, reference):
    return max((float((t.double() - r).abs().max()) for t, r in zip(tensors, reference)
                if t.numel()), default=0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("amsgrad, maximize, decoupled",
                         list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("grad_scale", [None, 8.0])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_adam_step_matches_torch_fused_cuda(dtype, amsgrad, maximize, decoupled, grad_scale,
                                            tensor_lr):
    ours = make_state("cuda", dtype, amsgrad)
    theirs = copy_to(ours, "cuda")
    sixteen_bit = dtype in (torch.float16, torch.bfloat16)
    exact = {k: [t.clone() if k == "state_steps" else t.double() for t in v]
             for k, v in ours.items()} if sixteen_bit else None
    lr = torch.tensor(1e-2, device="cuda") if tensor_lr else 1e-2
    scale = None if grad_scale is None else torch.tensor(grad_scale, device="cuda")
    steps, flags = 3, dict(amsgrad=amsgrad, maximize=maximize)
    for _ in range(steps):
        ops.adam_step_(**ours, lr=lr, **HYPER, **flags, decoupled_weight_decay=decoupled,
                       grad_scale=scale)
    run_torch_fused(theirs, lr, scale, steps, amsgrad, maximize, decoupled)
    # torch's CUDA kernel writes the first moment as b1*m + (1-b1)*g, ours (like
    # torch's CPU kernels) as a lerp: equal up to rounding, not bit for bit.
    if not sixteen_bit:
        assert_lists_close(ours, theirs)
        return
    # In 16-bit storage that rounding moves stored values by an ulp or two now and then,
    # as far from torch's own CPU kernel as from ours (measured on an H200), beyond what
    # the default tolerances allow. So the rule is the flash-attention one, as on the
    # CPU (test_adam_trajectories.py): against a float64 run of the same problem, our
    # error is at most twice that of torch's kernel in the same dtype.
    run_torch_fused(exact, lr, scale, steps, amsgrad, maximize, decoupled)
    for key in ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        our_error = max_error(ours[key], exact[key])
        torch_error = max_error(theirs[key], exact[key])
        assert our_error <= 2 * torch_error + 1e-12, (key, our_error, torch_error)
    assert_lists_equal({"state_steps": ours["state_steps"]},
                       {"state_steps": theirs["state_steps"]})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("amsgrad, maximize, decoupled",
                         list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("grad_scale", [None, 8.0])
def test_adam_step_matches_our_cpu_kernel(dtype, amsgrad, maximize, decoupled, grad_scale):
    on_gpu = make_state("cuda", dtype, amsgrad)
    on_cpu = copy_to(on_gpu, "cpu")
    kwargs = dict(HYPER, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
    for _ in range(3):
        ops.adam_step_(**on_gpu, lr=1e-2, **kwargs, grad_scale=None if grad_scale is None
                       else torch.tensor(grad_scale, device="cuda"))
        ops.adam_step_(**on_cpu, lr=1e-2, **kwargs, grad_scale=None if grad_scale is None
                       else torch.tensor(grad_scale))
    # Same element functor and no contraction on either side; only the double-precision
    # pow of the bias corrections may differ in its last bit between libm and CUDA.
    tight = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.float64: dict(rtol=1e-14,
                                                                           atol=1e-15)}
    assert_lists_close(on_gpu, on_cpu, **tight.get(dtype, {}))


@pytest.mark.parametrize("dtype, grad_dtype", [(torch.float32, None), (torch.float64, None),
                                               (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float32),
                                               (torch.bfloat16, None)], ids=str)
@pytest.mark.parametrize("multiplier", [0.25, float("inf"), float("nan")])
@pytest.mark.parametrize("found_inf", [None, 0.0, 1.0])
def test_window_step_matches_our_cpu_kernel(dtype, grad_dtype, multiplier, found_inf):
    on_gpu = make_state("cuda", dtype, amsgrad=False, grad_dtype=grad_dtype)
    on_cpu = copy_to(on_gpu, "cpu")
    before = copy_to(on_gpu, "cpu")
    for device, lists in (("cuda", on_gpu), ("cpu", on_cpu)):
        ops.adam_window_step_(
            **lists, grad_multiplier=torch.tensor(multiplier, device=device), lr=1e-2, **HYPER,
            amsgrad=False, maximize=False, decoupled_weight_decay=True,
            found_inf=None if found_inf is None else torch.tensor(found_inf, device=device))
    assert_lists_close(on_gpu, on_cpu)
    assert all(not g.any() for g in on_gpu["grads"])
    skipped = bool(found_inf) or multiplier != 0.25
    assert torch.equal(on_gpu["state_steps"][0].cpu(), before["state_steps"][0]) == skipped
    assert torch.equal(on_gpu["params"][0].cpu(), before["params"][0]) == skipped


def test_non_dense_rows_are_updated_in_place():
    # A transposed param with a contiguous grad: the row is staged and written back.
    dense = make_state("cuda", torch.float32, amsgrad=False)
    strided = copy_to(dense, "cuda")
    strided["params"][0] = strided["params"][0].t().contiguous().t()
    kwargs = dict(lr=1e-2, **HYPER, amsgrad=False, maximize=False, decoupled_weight_decay=True)
    ops.adam_step_(**dense, **kwargs)
    ops.adam_step_(**strided, **kwargs)
    assert_lists_equal(strided, dense)


def capture_adam_step(lists, **kwargs):
    """A CUDA graph of adam_step_.tensor_lr on `lists`, after a warm-up run on a copy."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.adam_step_.tensor_lr(**copy_to(lists, "cuda"), **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.adam_step_.tensor_lr(**lists, **kwargs)
    return graph


def test_cuda_graph_capture_and_replay_of_a_full_step():
    eager = make_state("cuda", torch.float32, amsgrad=True)
    captured = copy_to(eager, "cuda")
    lr = torch.tensor(1e-2, device="cuda")
    scale = torch.tensor(2.0, device="cuda")
    found_inf = torch.tensor(0.0, device="cuda")
    kwargs = dict(**HYPER, amsgrad=True, maximize=False, decoupled_weight_decay=True,
                  grad_scale=scale, found_inf=found_inf)
    # The step reads lr, grad_scale, found_inf and the step counts on the device: capture
    # fails on any host synchronisation, and replays see the values written in between.
    graph = capture_adam_step(captured, lr=lr, **kwargs)
    new_grads = [torch.randn_like(g) for g in eager["grads"]]
    for replay, lr_value in enumerate([1e-2, 5e-3, 1e-3]):
        lr.fill_(lr_value)
        found_inf.fill_(1.0 if replay == 1 else 0.0)
        for dst_eager, dst_captured, src in zip(eager["grads"], captured["grads"], new_grads):
            dst_eager.copy_(src * (replay + 1))
            dst_captured.copy_(src * (replay + 1))
        ops.adam_step_.tensor_lr(**eager, lr=lr, **kwargs)
        graph.replay()
    torch.cuda.synchronize()
    assert_lists_equal(captured, eager)
    assert captured["state_steps"][0].item() == 3.0 + 2  # the skipped replay did not count


def test_sum_of_squares_under_graph_capture_reads_current_values():
    tensors = [torch.randn(s, device="cuda") for s in SHAPES]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.sum_of_squares(tensors)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total = ops.sum_of_squares(tensors)
    for t in tensors:
        t.mul_(2.0)
    graph.replay()
    torch.testing.assert_close(total, ops.sum_of_squares(tensors), rtol=0, atol=0)


def test_state_on_another_device_is_named():
    lists = make_state("cuda", torch.float32, amsgrad=False)
    lists["state_steps"][1] = lists["state_steps"][1].cpu()
    with pytest.raises(RuntimeError, match=r"state_steps\[1\] must be on cuda"):
        ops.adam_step_(**lists, lr=1e-2, **HYPER, amsgrad=False, maximize=False,
                       decoupled_weight_decay=True)


@pytest.mark.parametrize("buffer_dtype, grad_dtype", [(torch.float32, torch.float32),
                                                      (torch.float32, torch.bfloat16),
                                                      (torch.float16, torch.float16),
                                                      (torch.float64, torch.float64)], ids=str)
def test_accumulate_matches_our_cpu_kernel(buffer_dtype, grad_dtype):
    g = torch.Generator().manual_seed(1)
    buffers = [torch.randn(s, generator=g).to(buffer_dtype) for s in SHAPES]
    grads = [torch.randn(s, generator=g).to(grad_dtype) for s in SHAPES]
    gpu_grads = [x.cuda() for x in grads]
    on_gpu = [b.cuda() for b in buffers]
    ops.accumulate_(on_gpu, gpu_grads, scale=0.5)
    ops.accumulate_(buffers, grads, scale=0.5)
    # float(b) + 0.5 * float(g) rounded once, no contraction on either side: equal bits.
    for gpu, ref in zip(on_gpu, buffers):
        assert torch.equal(gpu.cpu(), ref)


def test_sum_of_squares_mixed_dtypes_is_deterministic():
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(s, generator=g).to(d) for s, d in
               zip(SHAPES, itertools.cycle(DTYPES))]
    tensors.append(torch.randn(300, 70, generator=g).t())  # not dense in memory order
    expected = ops.sum_of_squares(tensors)
    on_gpu = [t.cuda() for t in tensors]
    first = ops.sum_of_squares(on_gpu)
    assert first.device.type == "cuda" and first.dim() == 0
    torch.testing.assert_close(first.cpu(), expected, rtol=1e-6, atol=0)
    for _ in range(3):
        assert torch.equal(ops.sum_of_squares(on_gpu), first)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_params_on_the_second_device():
    on_first = make_state("cuda:0", torch.float32, amsgrad=False)
    on_second = copy_to(on_first, "cuda:1")
    kwargs = dict(lr=1e-2, **HYPER, amsgrad=False, maximize=False, decoupled_weight_decay=True)
    with torch.cuda.device(0):
        ops.adam_step_(**on_first, **kwargs)
        ops.adam_step_(**on_second, **kwargs)  # the op must switch to the tensors' device
        assert torch.cuda.current_device() == 0
        total = ops.sum_of_squares(on_second["params"])
    assert total.device == torch.device("cuda:1")
    assert_lists_equal(copy_to(on_second, "cuda:0"), on_first)


def test_fused_adamw_on_cuda_params_matches_torch():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in [(7, 3), (65537,)]]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = fused_accum.FusedAdamW(ours, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, fused=True)
    for _ in range(5):
        for a, b in zip(ours, theirs):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


# ------------------------------------------- write modes and moment dtypes, against the CPU
# The CUDA kernel runs the element functor the CPU kernel is checked against
# (test_cuda_element_op.py) on float32 copies of the moments, loaded from and stored back
# to their real dtype. With float32 math, IEEE division and square root on both sides and
# no contraction, every bit must agree, the stochastic rounding's included (a counter-based
# hash of seed, step and index). The one input that is not computed alike is the float64
# pow in the per-step constants (libm against CUDA's), which are then rounded to float32:
# a difference would need a last-bit error to cross a float32 rounding boundary.

WRITE_MODES = {"in_place": None, "master": "master_params", "kahan": "compensations",
               "stochastic": "rounding_seeds"}
# Seeds of either sign and above 2^32: both halves enter the key.
SEEDS = [0, -1, 2**40 + 3, 12345, -(2**62), 987654321]


def make_write_state(dtype, mode, amsgrad, state_dtype=None, grad_dtype=None, seed=0):
    """CPU lists for one write mode; the last row is a transposed view in every list.

    A row whose tensors all share one dense layout is stepped in place, in memory order;
    element indices (the stochastic rounding's counters) must be read alike there too.
    """
    g = torch.Generator().manual_seed(seed)
    state_dtype = state_dtype or dtype
    lists = {k: [] for k in LISTS}
    shapes = SHAPES + [(33, 64)]
    for row, shape in enumerate(shapes):
        def layout(t, row=row):
            return t.t() if row == len(shapes) - 1 else t

        def rand(scale=1.0, uniform=False):
            return scale * (torch.rand if uniform else torch.randn)(shape, generator=g)

        # The value Adam steps, in float32; the param holds its rounding.
        value = rand()
        param = value.to(dtype)
        lists["params"].append(layout(param))
        lists["grads"].append(layout(rand().to(grad_dtype or dtype)))
        lists["exp_avgs"].append(layout(rand(0.1).to(state_dtype)))
        lists["exp_avg_sqs"].append(layout(rand(0.01, uniform=True).to(state_dtype)))
        if amsgrad:
            lists["max_exp_avg_sqs"].append(layout(rand(0.02, uniform=True).to(state_dtype)))
        lists["state_steps"].append(torch.tensor(3.0))
        if mode == "master":
            lists["master_params"].append(layout(value.clone()))
        elif mode == "kahan":
            lists["compensations"].append(layout((value - param.float()).to(dtype)))
        elif mode == "stochastic":
            seed_value = SEEDS[row % len(SEEDS)]
            # One element, 0-d or not.
            lists["rounding_seeds"].append(torch.tensor(seed_value) if row % 2 else
                                           torch.tensor([seed_value]))
    return lists


def assert_bits_equal(on_gpu, on_cpu):
    for key in on_gpu:
        for i, (a, e) in enumerate(zip(on_gpu[key], on_cpu[key])):
            assert a.dtype == e.dtype and a.shape == e.shape, f"{key}[{i}]"
            assert torch.equal(a.cpu(), e), (
                f"{key}[{i}] differs in {int((a.cpu() != e).sum())} of {e.numel()} elements")


def step_both(on_gpu, on_cpu, steps=3, window=False, **kwargs):
    """Runs the same steps on both devices; scalar tensor arguments are given on the CPU."""
    op = ops.adam_window_step_ if window else ops.adam_step_
    for _ in range(steps):
        for device, lists in (("cuda", on_gpu), ("cpu", on_cpu)):
            args = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in kwargs.items()}
            if window:
                # A window ends with the buffers zeroed: give each step new ones.
                for i, b in enumerate(lists["grads"]):
                    b.copy_(torch.linspace(-1, 1, b.numel()).view(b.shape) * (i + 1))
            overload = op.tensor_lr if isinstance(args["lr"], torch.Tensor) else op.default
            overload(**lists, **args)


FLAG_SETS = [dict(amsgrad=False, maximize=False, decoupled_weight_decay=True),
             dict(amsgrad=True, maximize=False, decoupled_weight_decay=False),
             dict(amsgrad=True, maximize=True, decoupled_weight_decay=True)]
MODE_DTYPES = [(torch.bfloat16, "master"), (torch.float16, "master"),
               (torch.bfloat16, "kahan"), (torch.float16, "kahan"),
               (torch.bfloat16, "stochastic"), (torch.bfloat16, "in_place"),
               (torch.float16, "in_place")]


@pytest.mark.parametrize("dtype, mode", MODE_DTYPES, ids=str)
@pytest.mark.parametrize("state_dtype", [None, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize("flags", FLAG_SETS, ids=["adamw", "amsgrad", "amsgrad-maximize"])
@pytest.mark.parametrize("grad_scale", [None, 8.0])
def test_write_modes_match_our_cpu_kernel_bit_for_bit(dtype, mode, state_dtype, flags,
                                                      grad_scale):
    on_cpu = make_write_state(dtype, mode, flags["amsgrad"], state_dtype)
    on_gpu = copy_to(on_cpu, "cuda")
    before = copy_to(on_cpu, "cpu")
    scale = None if grad_scale is None else torch.tensor(grad_scale)
    step_both(on_gpu, on_cpu, lr=1e-2, **HYPER, **flags, grad_scale=scale)
    assert_bits_equal(on_gpu, on_cpu)
    # The steps happened, and wrote what the mode writes.
    assert not torch.equal(on_cpu["params"][0], before["params"][0])
    assert on_cpu["state_steps"][0].item() == 6.0
    written = WRITE_MODES[mode]
    if written in ("master_params", "compensations"):
        assert not torch.equal(on_cpu[written][3], before[written][3])
    if written == "rounding_seeds":
        assert_bits_equal({written: on_gpu[written]}, {written: before[written]})


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize("flags", FLAG_SETS, ids=["adamw", "amsgrad", "amsgrad-maximize"])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_float32_params_with_narrow_moments_match_our_cpu_kernel(state_dtype, flags,
                                                                 tensor_lr):
    on_cpu = make_write_state(torch.float32, "in_place", flags["amsgrad"], state_dtype)
    on_gpu = copy_to(on_cpu, "cuda")
    lr = torch.tensor(1e-2) if tensor_lr else 1e-2
    step_both(on_gpu, on_cpu, lr=lr, **HYPER, **flags, grad_scale=torch.tensor(4.0))
    assert_bits_equal(on_gpu, on_cpu)


@pytest.mark.parametrize("dtype, mode", MODE_DTYPES, ids=str)
@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=str)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("multiplier", [0.25, float("inf")])
def test_window_step_write_modes_with_float32_buffers(dtype, mode, state_dtype, amsgrad,
                                                      multiplier):
    on_cpu = make_write_state(dtype, mode, amsgrad, state_dtype, grad_dtype=torch.float32)
    on_gpu = copy_to(on_cpu, "cuda")
    before = copy_to(on_cpu, "cpu")
    step_both(on_gpu, on_cpu, window=True, grad_multiplier=torch.tensor(multiplier),
              lr=torch.tensor(1e-2), **HYPER, amsgrad=amsgrad, maximize=False,
              decoupled_weight_decay=True)
    assert_bits_equal(on_gpu, on_cpu)
    assert all(not b.any() for b in on_gpu["grads"])
    if multiplier == float("inf"):  # every step skipped: nothing but the buffers changed
        del before["grads"]
        assert_bits_equal({k: on_gpu[k] for k in before}, before)
    else:
        assert not torch.equal(on_cpu["params"][0], before["params"][0])


@pytest.mark.parametrize("dtype, mode, state_dtype",
                         [(torch.float32, "in_place", None),
                          (torch.bfloat16, "master", torch.float32),
                          (torch.float16, "kahan", torch.float32),
                          (torch.bfloat16, "stochastic", torch.bfloat16)], ids=str)
def test_found_inf_changes_nothing(dtype, mode, state_dtype):
    lists = copy_to(make_write_state(dtype, mode, amsgrad=True, state_dtype=state_dtype), "cuda")
    before = copy_to(lists, "cpu")
    ops.adam_step_(**lists, lr=1e-2, **HYPER, amsgrad=True, maximize=False,
                   decoupled_weight_decay=True, grad_scale=torch.tensor(4.0, device="cuda"),
                   found_inf=torch.tensor(1.0, device="cuda"))
    assert_bits_equal(lists, before)


def test_stochastic_rounding_under_graph_capture_reads_seeds_and_steps_on_the_device():
    eager = copy_to(make_write_state(torch.bfloat16, "stochastic", amsgrad=False), "cuda")
    captured = copy_to(eager, "cuda")
    on_cpu = copy_to(eager, "cpu")
    lr = torch.tensor(1e-2, device="cuda")
    kwargs = dict(**HYPER, amsgrad=False, maximize=False, decoupled_weight_decay=True)
    graph = capture_adam_step(captured, lr=lr, **kwargs)
    for replay in range(3):
        # A new seed between replays: the graph must read it, not a captured copy.
        for seeds in (eager["rounding_seeds"], captured["rounding_seeds"]):
            seeds[0].fill_(1000 + replay)
        on_cpu["rounding_seeds"][0].fill_(1000 + replay)
        ops.adam_step_.tensor_lr(**eager, lr=lr, **kwargs)
        ops.adam_step_.tensor_lr(**on_cpu, lr=lr.cpu(), **kwargs)
        graph.replay()
    torch.cuda.synchronize()
    assert_bits_equal(captured, eager)
    assert_bits_equal(captured, on_cpu)
