"""torch.distributed.checkpoint of an FSDP2 model, FusedAdamW and GradAccumulator.

Two CPU processes (gloo) train two windows, save model, optimizer and accumulator
with get_state_dict and dcp.save, and train a third window. The checkpoint is then
loaded with set_state_dict into one process without a process group (a plain model)
and into a one-rank FSDP2 job: the third window trained there, on the same data,
ends where the saving job's did.
"""

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from fused_accum import FusedAdamW, GradAccumulator
from bounded_spawn import free_port, spawn
from test_accumulate_ddp import LR, MAX_NORM, STEPS, WORLD, rank_batches
from test_fsdp import full, make_model, shard

# A distributed dcp.save/load exchanges its plans as pickled objects, which torch
# turns back into objects through numpy.
pytest.importorskip("numpy",
                    reason="torch.distributed.checkpoint's object collectives need numpy")

SAVED_WINDOWS = 2
TIMEOUT_S = 90


def unsaved_model():
    """The model with other values than the saving job's: loading must set them."""
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


def new_training(model):
    opt = FusedAdamW(model.parameters(), lr=LR, weight_decay=0.1)
    return opt, GradAccumulator(opt, steps=STEPS, max_grad_norm=MAX_NORM)


def train_window(model, acc, batches):
    for x, y in batches:
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(x), y))
    assert acc.step()
    return acc.grad_norm.item()


def window(world, rank, index):
    """Window `index` of `rank` among `world` ranks: the two saving ranks' micro-batch
    i, concatenated, is micro-batch i of a one-rank job (equal sizes: the same mean)."""
    data = rank_batches(torch.float32, (4, 4), (SAVED_WINDOWS + 1) * STEPS)
    micro = range(index * STEPS, (index + 1) * STEPS)
    if world == WORLD:
        return [data[rank][i] for i in micro]
    return [(torch.cat([data[r][i][0] for r in range(WORLD)]),
             torch.cat([data[r][i][1] for r in range(WORLD)])) for i in micro]


def checkpoint(model, opt, acc):
    model_state, optim_state = get_state_dict(model, opt)
    return {"model": model_state, "optim": optim_state, "accumulator": acc.state_dict()}


def load(model, opt, acc, path):
    state = checkpoint(model, opt, acc)  # the layout to read the checkpoint into
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    acc.load_state_dict(state["accumulator"])


def save_worker(rank, port, path, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        model = shard(make_model())
        opt, acc = new_training(model)
        for index in range(SAVED_WINDOWS):
            train_window(model, acc, window(WORLD, rank, index))
        dcp.save(checkpoint(model, opt, acc), checkpoint_id=path)
        norm = train_window(model, acc, window(WORLD, rank, SAVED_WINDOWS))
        params = full(model.parameters())
        x, y = window(WORLD, rank, 0)[0]
        with acc.accumulate(model):  # FSDP2 holds this gradient, out of a state_dict's reach
            acc.backward(F.mse_loss(model(x), y))
        with pytest.raises(RuntimeError, match="middle of a window"):
            acc.state_dict()
        with pytest.raises(RuntimeError, match="without FSDP2 gradient sync"):
            acc.flush()  # a partial window whose last micro-batch was not marked last=True
        if rank == 0:
            torch.save((params, norm), out)
    finally:
        dist.destroy_process_group()


def resume_one_rank_fsdp_worker(rank, port, path, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=1)
    try:
        model = shard(unsaved_model())
        opt, acc = new_training(model)
        load(model, opt, acc, path)
        norm = train_window(model, acc, window(1, 0, SAVED_WINDOWS))
        torch.save((full(model.parameters()), norm), out)
    finally:
        dist.destroy_process_group()


def resume_without_process_group(path):
    model = unsaved_model()
    opt, acc = new_training(model)
    load(model, opt, acc, path)
    norm = train_window(model, acc, window(1, 0, SAVED_WINDOWS))
    return list(model.parameters()), norm


def test_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    path, expected_out = str(tmp_path / "checkpoint"), tmp_path / "expected.pt"
    spawn(save_worker, (free_port(), path, str(expected_out)), WORLD, TIMEOUT_S)
    expected_params, expected_norm = torch.load(expected_out)

    resumed_out = tmp_path / "one_rank_fsdp.pt"
    spawn(resume_one_rank_fsdp_worker, (free_port(), path, str(resumed_out)), 1, TIMEOUT_S)
    resumed = {"one-rank FSDP2 job": torch.load(resumed_out),
               "one process, no process group": resume_without_process_group(path)}

    for name, (params, norm) in resumed.items():
        # The same window from the same state: float32 sums over other shards.
        torch.testing.assert_close(norm, expected_norm, msg=name)
        for p, q in zip(params, expected_params):
            torch.testing.assert_close(p, q, msg=name)
