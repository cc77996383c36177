"""The same bits at any thread count: sum_of_squares, and the window ends built on it.

A norm that changes with the thread count changes the clip coefficient, and then
every param: DDP ranks on machines with different core counts would drift apart,
and a run resumed on another machine would not continue as it began. The models
here have elementwise forward and backward passes, so that torch's own part of a
step gives the same gradients at every thread count and only the accumulator's
norm and step are on trial.
"""

import contextlib
import io
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from fused_accum import FusedAdamW, GradAccumulator
from fused_accum._ops import ops
from test_accumulate_ddp import free_port

THREAD_COUNTS = (1, 2, 8)


@contextlib.contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sums_at_each_thread_count(tensors):
    """{threads: sum_of_squares(tensors)} for every count in THREAD_COUNTS."""
    sums = {}
    for n in THREAD_COUNTS:
        with num_threads(n):
            sums[n] = ops.sum_of_squares(tensors)
    return sums


def bits(value):
    """The bits of a 0-d float32 or float64 tensor, as an int."""
    return value.view(torch.int64 if value.dtype == torch.float64 else torch.int32).item()


def assert_same_bits_and_close_to_float64(tensors, rtol):
    sums = sums_at_each_thread_count(tensors)
    assert {n: bits(total) for n, total in sums.items()} == \
        {n: bits(sums[1]) for n in sums}, {n: total.item() for n, total in sums.items()}
    expected = sum(float(t.double().square().sum()) for t in tensors)
    assert float(sums[1]) == pytest.approx(expected, rel=rtol)


# ------------------------------------------------------------------ sum_of_squares
# A float32 result: each square is rounded in float and summed in float over a lane
# of a block, then in double. torch's float32 default, about twice the largest error
# of these sums; a block left out or counted twice moves a sum of a thousand blocks
# by 1e-3 on average.
FLOAT32_RTOL = 1.3e-6
# Summed in double throughout: a few float64 ulp from torch's order.
FLOAT64_RTOL = 1e-13


def heavy_tailed(gen, shape, dtype=torch.float32, spread=2.0):
    """Gradient-like values over many orders of magnitude: the sum then hangs on a
    few blocks, and any change in how they are cut or added shows in its bits."""
    values = torch.randn(shape, generator=gen) * torch.exp(
        spread * torch.randn(shape, generator=gen))
    return values.to(dtype)


@pytest.mark.parametrize("seed", range(20))
def test_one_large_tensor_sums_to_the_same_bits_at_any_thread_count(seed):
    gen = torch.Generator().manual_seed(seed)
    assert_same_bits_and_close_to_float64([heavy_tailed(gen, (1000, 1000))], FLOAT32_RTOL)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, FLOAT32_RTOL),
                                         (torch.float64, FLOAT64_RTOL)])
@pytest.mark.parametrize("seed", range(5))
def test_many_small_tensors_sum_to_the_same_bits_at_any_thread_count(seed, dtype, rtol):
    # Tensors smaller than a block, and thread shares that end inside tensors.
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 5000, (400,), generator=gen).tolist()
    tensors = list(heavy_tailed(gen, sum(sizes), dtype).split(sizes))
    assert_same_bits_and_close_to_float64(tensors, rtol)


@pytest.mark.parametrize("seed", range(6))
def test_mixed_low_precision_dtypes_sum_to_the_same_bits_at_any_thread_count(seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = [heavy_tailed(gen, (1000, 600), torch.bfloat16),
               heavy_tailed(gen, 77, torch.float16),
               heavy_tailed(gen, (400, 700), torch.float16),
               heavy_tailed(gen, 300_001, torch.float32),
               heavy_tailed(gen, (700, 900), torch.bfloat16).t(),  # dense, summed in place
               heavy_tailed(gen, (500, 900), torch.float16)[:, ::2]]  # summed from a copy
    assert ops.sum_of_squares(tensors).dtype == torch.float32
    assert_same_bits_and_close_to_float64(tensors, FLOAT32_RTOL)


@pytest.mark.parametrize("seed", range(3))
def test_float64_sums_to_the_same_bits_at_any_thread_count(seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = [heavy_tailed(gen, n, torch.float64) for n in (600_001, 1, 33_333, 250_000)]
    assert ops.sum_of_squares(tensors).dtype == torch.float64
    assert_same_bits_and_close_to_float64(tensors, FLOAT64_RTOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_cuda_sum_does_not_depend_on_where_the_values_sit(dtype):
    # Three chunks and a partial group of elements, once in a tensor of their own and
    # once in a view one element into a buffer, where vector loads do not fit. A
    # float64 zero makes the result float64, so it shows every bit of the double sums.
    gen = torch.Generator().manual_seed(0)
    values = heavy_tailed(gen, 3 * 65536 + 5, dtype).cuda()
    buffer = torch.zeros(values.numel() + 1, dtype=dtype, device="cuda")
    at_odd_offset = buffer[1:]
    at_odd_offset.copy_(values)
    zero = torch.zeros(1, dtype=torch.float64, device="cuda")
    assert bits(ops.sum_of_squares([values, zero])) == \
        bits(ops.sum_of_squares([at_odd_offset, zero]))

# ------------------------------------------------------------------ training runs
WINDOWS, STEPS, LR = 30, 2, 1e-3
# Below every window's norm: each window is clipped, so the norm's bits reach every
# param through the clip coefficient.
MAX_GRAD_NORM = 1e-3


class ElementwiseModel(torch.nn.Module):
    """A float32 and a bfloat16 param (the latter accumulates in a float32 buffer),
    each multiplying its input elementwise: large enough that the norm pass is split
    between threads, small enough to train quickly."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(600, 500, generator=gen))
        self.scale = torch.nn.Parameter(torch.randn(300, 200, generator=gen).bfloat16())

    def forward(self, x, z):
        return x * self.weight, z * self.scale


def micro_batches(seed, count=4):
    """`count` micro-batches (x, y, z, w) cycled through every run."""
    gen = torch.Generator().manual_seed(seed)
    return [(heavy_tailed(gen, (600, 500), spread=1.0), torch.randn(600, 500, generator=gen),
             torch.randn(300, 200, generator=gen).bfloat16(),
             torch.randn(300, 200, generator=gen)) for _ in range(count)]


def new_run():
    model = ElementwiseModel()
    acc = GradAccumulator(FusedAdamW(model.parameters(), lr=LR), steps=STEPS,
                          max_grad_norm=MAX_GRAD_NORM)
    return model, acc


def train(model, acc, data, first_micro_batch, last_micro_batch, norms):
    """Micro-batches [first, last) of the run, appending each window's grad norm."""
    for i in range(first_micro_batch, last_micro_batch):
        x, y, z, w = data[i % len(data)]
        with acc.accumulate(model):
            out_x, out_z = model(x, z)
            acc.backward(F.mse_loss(out_x, y) + F.mse_loss(out_z.float(), w))
        if acc.step():
            norms.append(acc.grad_norm.clone())


def float_bits(tensors):
    return [t.detach().view(torch.int32 if t.element_size() == 4 else torch.int16).clone()
            for t in tensors]


def assert_bitwise_equal(got, expected, what):
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(float_bits(got), float_bits(expected))):
        assert torch.equal(a, b), f"{what} {i}: {int((a != b).sum())} of {a.numel()} differ"


_uninterrupted = {}


def uninterrupted_run(threads):
    """(grad norms, params) of WINDOWS windows at `threads` threads, once per count."""
    if threads not in _uninterrupted:
        with num_threads(threads):
            model, acc = new_run()
            norms = []
            train(model, acc, micro_batches(1), 0, WINDOWS * STEPS, norms)
        assert len(norms) == WINDOWS
        _uninterrupted[threads] = norms, list(model.parameters())
    return _uninterrupted[threads]


def test_clipped_window_ends_give_the_same_bits_at_any_thread_count():
    norms, params = uninterrupted_run(1)
    # Clipping is on in every window, so its coefficient carries the norm's bits.
    assert all(n > MAX_GRAD_NORM for n in norms)
    for threads in THREAD_COUNTS[1:]:
        other_norms, other_params = uninterrupted_run(threads)
        assert_bitwise_equal(other_norms, norms, f"{threads} threads: grad norm of window")
        assert_bitwise_equal(other_params, params, f"{threads} threads: param")


def test_a_run_resumed_at_another_thread_count_continues_bit_for_bit():
    saved_at, resumed_at = 1, 8
    norms_expected, params_expected = uninterrupted_run(saved_at)
    # Saved in the middle of a window: the accumulator's buffers travel too.
    stop = (WINDOWS // 3) * STEPS + 1
    data = micro_batches(1)
    with num_threads(saved_at):
        model, acc = new_run()
        norms = []
        train(model, acc, data, 0, stop, norms)
        checkpoint = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": acc.optimizer.state_dict(),
                    "accumulator": acc.state_dict()}, checkpoint)
    checkpoint.seek(0)
    state = torch.load(checkpoint)
    with num_threads(resumed_at):
        model, acc = new_run()
        model.load_state_dict(state["model"])
        acc.optimizer.load_state_dict(state["optimizer"])
        acc.load_state_dict(state["accumulator"])
        train(model, acc, data, stop, WINDOWS * STEPS, norms)
    assert_bitwise_equal(norms, norms_expected, "grad norm of window")
    assert_bitwise_equal(list(model.parameters()), params_expected, "param")


# ------------------------------------------------------------------ DDP
DDP_WINDOWS = 10
DDP_THREADS = (1, 3)  # rank: threads
DDP_TIMEOUT_S = 120


def ddp_worker(rank, port, out_dir):
    torch.set_num_threads(DDP_THREADS[rank])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=len(DDP_THREADS))
    try:
        model, acc = new_run()
        ddp = DistributedDataParallel(model)
        norms = []
        # Each rank its own data: only the all-reduced window sum is shared.
        train(ddp, acc, micro_batches(10 + rank), 0, DDP_WINDOWS * STEPS, norms)
        torch.save((norms, list(model.parameters())), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_at_different_thread_counts_stay_bit_for_bit_equal(tmp_path):
    context = mp.start_processes(ddp_worker, args=(free_port(), str(tmp_path)),
                                 nprocs=len(DDP_THREADS), join=False, start_method="spawn")
    deadline = time.monotonic() + DDP_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP run did not finish in {DDP_TIMEOUT_S} s")
    norms_0, params_0 = torch.load(tmp_path / "rank0.pt")
    norms_1, params_1 = torch.load(tmp_path / "rank1.pt")
    assert len(norms_0) == DDP_WINDOWS
    assert all(n > MAX_GRAD_NORM for n in norms_0)
    assert_bitwise_equal(norms_1, norms_0, "grad norm of window")
    assert_bitwise_equal(params_1, params_0, "param")
