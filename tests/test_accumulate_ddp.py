"""GradAccumulator under DDP: two CPU processes (gloo) against one process on all the data."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from fused_accum import FusedAdamW, GradAccumulator
from bounded_spawn import free_port
from test_accumulate import feed

WORLD, STEPS, WINDOWS, LR, MAX_NORM = 2, 3, 3, 1e-2, 0.05


def make_model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def rank_batches(dtype, sizes, micro_batches):
    """[rank][micro-batch] -> (x, y); every process builds the same data."""
    gen = torch.Generator().manual_seed(1)
    return [[(torch.randn(sizes[r], 6, generator=gen).to(dtype),
              torch.randn(sizes[r], 3, generator=gen).to(dtype)) for _ in range(micro_batches)]
            for r in range(WORLD)]


def run_ddp(rank, dtype, sizes, weighted, micro_batches):
    """Returns (params, bucket all-reduces per window) of this rank's DDP run."""
    ddp = DistributedDataParallel(make_model(dtype))
    calls = [0]

    def counting_allreduce(state, bucket):
        calls[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    acc = GradAccumulator(FusedAdamW(ddp.parameters(), lr=LR), steps=STEPS, max_grad_norm=MAX_NORM)
    per_window = []
    data = rank_batches(dtype, sizes, micro_batches)[rank]
    for start in range(0, micro_batches, STEPS):
        calls[0] = 0
        feed(ddp, acc, data[start:start + STEPS], weighted)
        acc.flush()  # steps only a partial last window
        per_window.append(calls[0])
    return [p.detach().clone() for p in ddp.module.parameters()], per_window


def reference_fp32(sizes, micro_batches):
    """One process, one large batch per window: torch AdamW + clip_grad_norm_."""
    model = make_model(torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    data = rank_batches(torch.float32, sizes, micro_batches)
    for start in range(0, micro_batches, STEPS):
        window = [mb for r in range(WORLD) for mb in data[r][start:start + STEPS]]
        x, y = torch.cat([x for x, _ in window]), torch.cat([y for _, y in window])
        F.mse_loss(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()
        opt.zero_grad()
    return list(model.parameters())


def reference_accumulator(dtype, sizes, micro_batches):
    """One process accumulating every rank's micro-batches (the same bf16 micro grads)."""
    model = make_model(dtype)
    acc = GradAccumulator(FusedAdamW(model.parameters(), lr=LR), steps=WORLD * STEPS,
                          max_grad_norm=MAX_NORM)
    data = rank_batches(dtype, sizes, micro_batches)
    for start in range(0, micro_batches, STEPS):
        feed(model, acc, [mb for r in range(WORLD) for mb in data[r][start:start + STEPS]], False)
        acc.flush()
    return list(model.parameters())


# name: (dtype, per-rank micro-batch rows, weighted, micro-batches per rank)
CASES = {
    "fp32_mean": (torch.float32, (4, 4), False, WINDOWS * STEPS),
    "fp32_weighted_unequal_ranks": (torch.float32, (2, 6), True, WINDOWS * STEPS),
    "fp32_partial_last_window": (torch.float32, (4, 4), False, WINDOWS * STEPS - 1),
    "bf16_mean": (torch.bfloat16, (4, 4), False, WINDOWS * STEPS),
}


def worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=WORLD)
    try:
        results = {name: run_ddp(rank, *case) for name, case in CASES.items()}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_ddp_accumulation_matches_one_process_with_one_bucket_pass_per_window(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    results = torch.load(out)

    for name in ("fp32_mean", "fp32_weighted_unequal_ranks"):
        params, per_window = results[name]
        _, sizes, _, micro = CASES[name]
        assert per_window == [1] * WINDOWS, name  # DDP reduced the window sum once
        for p, q in zip(params, reference_fp32(sizes, micro)):
            torch.testing.assert_close(p, q, msg=name)

    # The last window holds 2 micro-batches, both under no_sync: the accumulator
    # reduces them itself at flush, so DDP's hook never runs for it.
    params, per_window = results["fp32_partial_last_window"]
    assert per_window == [1] * (WINDOWS - 1) + [0]
    for p, q in zip(params, reference_fp32((4, 4), WINDOWS * STEPS - 1)):
        torch.testing.assert_close(p, q)

    # bf16: DDP stays out of every micro-batch; the fp32 buffers are all-reduced once
    # per window by the accumulator. Same bf16 micro grads, so only the fp32
    # summation order differs from the single process.
    params, per_window = results["bf16_mean"]
    assert per_window == [0] * WINDOWS
    for p, q in zip(params, reference_accumulator(torch.bfloat16, (4, 4), WINDOWS * STEPS)):
        torch.testing.assert_close(p, q)
