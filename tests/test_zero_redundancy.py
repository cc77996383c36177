"""FusedAdamW as the optimizer_class of torch's ZeroRedundancyOptimizer, under DDP on
two CPU processes (gloo): each rank steps its shard with FusedAdamW, against the same
run with torch.optim.AdamW; its consolidated state_dict resumes a run bit for bit."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import bounded_spawn
from fused_accum import FusedAdamW

WORLD, STEPS, LR, WEIGHT_DECAY = 2, 6, 1e-2, 0.1


def make_model():
    torch.manual_seed(0)
    # Params of several sizes, so that ZeRO puts some on each rank.
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batch(rank, step):
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(5, 6, generator=gen), torch.randn(5, 3, generator=gen)


def train(rank, optimizer_class, steps, start=0, model=None, zero_state=None):
    """DDP + ZeroRedundancyOptimizer(optimizer_class) from step `start` to `steps`;
    returns the model and the ZeRO optimizer."""
    model = model or make_model()
    ddp = DistributedDataParallel(model)
    zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=optimizer_class,
                                   lr=LR, weight_decay=WEIGHT_DECAY)
    if zero_state is not None:
        zero.load_state_dict(zero_state)
    for step in range(start, steps):
        x, y = batch(rank, step)
        F.mse_loss(ddp(x), y).backward()
        zero.step()
        zero.zero_grad()
    return model, zero


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def save_results(out, rank, results):
    torch.save(results, f"{out}.{rank}")


def load_results(out):
    return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


def assert_same_on_every_rank(ranks, name):
    """ZeRO broadcasts each shard's params to every rank."""
    for r in ranks[1:]:
        assert all(torch.equal(p, q) for p, q in zip(r[name], ranks[0][name])), name


def compare_worker(rank, port, out):
    bounded_spawn.init_gloo(rank, WORLD, port)
    try:
        torch_model, _ = train(rank, torch.optim.AdamW, STEPS)
        fused_model, fused_zero = train(rank, FusedAdamW, STEPS)
        save_results(out, rank, {
            "torch": params_of(torch_model), "fused": params_of(fused_model),
            # How many params this rank's FusedAdamW steps (its shard).
            "shard": sum(len(g["params"]) for g in fused_zero.optim.param_groups),
        })
    finally:
        dist.destroy_process_group()


def test_zero_redundancy_with_fused_adamw_matches_torch_adamw(tmp_path):
    out = tmp_path / "results"
    bounded_spawn.spawn(compare_worker, (bounded_spawn.free_port(), str(out)), WORLD,
                        timeout_s=90)
    ranks = load_results(out)
    # Each rank's FusedAdamW stepped a part of the params, together all of them.
    assert all(r["shard"] > 0 for r in ranks)
    assert sum(r["shard"] for r in ranks) == len(list(make_model().parameters()))
    assert_same_on_every_rank(ranks, "torch")
    assert_same_on_every_rank(ranks, "fused")
    for p, q in zip(ranks[0]["fused"], ranks[0]["torch"]):
        torch.testing.assert_close(p, q)


def resume_worker(rank, port, out, checkpoint):
    bounded_spawn.init_gloo(rank, WORLD, port)
    try:
        fused_model, fused_zero = train(rank, FusedAdamW, STEPS)
        # Stopped halfway, saved, and resumed in a new model and ZeRO optimizer.
        half_model, half_zero = train(rank, FusedAdamW, STEPS // 2)
        half_zero.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save({"model": half_model.state_dict(), "zero": half_zero.state_dict()},
                       checkpoint)
        dist.barrier()
        saved = torch.load(checkpoint)
        resumed_model = make_model()
        resumed_model.load_state_dict(saved["model"])
        train(rank, FusedAdamW, STEPS, start=STEPS // 2, model=resumed_model,
              zero_state=saved["zero"])
        _, torch_zero = train(rank, torch.optim.AdamW, STEPS // 2)
        torch_zero.consolidate_state_dict(to=0)
        results = {"fused": params_of(fused_model), "resumed": params_of(resumed_model)}
        if rank == 0:
            # ZeroRedundancyOptimizer.load_state_dict cleared other ranks' entries of
            # the dict it was given: the layout is compared on the file's.
            results["fused_state"] = torch.load(checkpoint)["zero"]
            results["torch_state"] = torch_zero.state_dict()
        save_results(out, rank, results)
    finally:
        dist.destroy_process_group()


def test_zero_redundancy_consolidated_state_dict_resumes_bitwise(tmp_path):
    pytest.importorskip("numpy", reason="torch's consolidate_state_dict needs numpy")
    out = tmp_path / "results"
    bounded_spawn.spawn(resume_worker, (bounded_spawn.free_port(), str(out),
                                        str(tmp_path / "ckpt.pt")), WORLD, timeout_s=90)
    ranks = load_results(out)
    assert_same_on_every_rank(ranks, "resumed")
    for p, q in zip(ranks[0]["resumed"], ranks[0]["fused"]):
        assert torch.equal(p, q)
    # The consolidated checkpoint has the layout of torch's.
    ours, theirs = ranks[0]["fused_state"], ranks[0]["torch_state"]
    assert ours["state"].keys() == theirs["state"].keys()
    for i, state in ours["state"].items():
        assert state.keys() == theirs["state"][i].keys()
        for key, value in state.items():
            assert value.shape == theirs["state"][i][key].shape, (i, key)
            assert value.dtype == theirs["state"][i][key].dtype, (i, key)
    # ZeRO saves its own param groups, copied from FusedAdamW's with every option: the
    # low-precision ones appear there, off, next to torch's.
    off = {"master_weights": False, "kahan_summation": False, "stochastic_rounding": False,
           "state_dtype": None}
    for group, torch_group in zip(ours["param_groups"], theirs["param_groups"]):
        assert {k: v for k, v in group.items() if k not in off} == torch_group
        assert {k: group[k] for k in off} == off
