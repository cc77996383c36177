"""FSDP2 training with FusedAdamW and GradAccumulator, and a distributed checkpoint.

    torchrun --nproc-per-node 2 docs/examples/fsdp2_accumulation.py [checkpoint_dir]

Runs on CPU with gloo (use "nccl" and a device per rank on GPUs). The checkpoint
(torch.distributed.checkpoint, which needs numpy) can be loaded on any number of
ranks, or in one process without a process group.
"""

import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from fused_accum import FusedAdamW, GradAccumulator


def checkpoint(model, opt, acc):
    model_state, optim_state = get_state_dict(model, opt)
    return {"model": model_state, "optim": optim_state, "accumulator": acc.state_dict()}


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)  # params are now DTensors: each rank holds a shard
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    acc = GradAccumulator(opt, steps=4, max_grad_norm=1.0)

    data = torch.Generator().manual_seed(1 + rank)  # every rank its own micro-batches
    for window in range(5):
        for _ in range(acc.steps):
            x = torch.randn(8, 16, generator=data)
            with acc.accumulate(model):  # FSDP2 reduce-scatters the window's last one only
                acc.backward(F.mse_loss(model(x), x.sum(1, keepdim=True)))
            acc.step()  # steps the local shards when the window is complete
        if rank == 0:
            print(f"window {window}: gradient norm {acc.grad_norm.item():.4f}")

    # Every rank writes its own shards; the path must be the same on every rank.
    path = [sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()]
    dist.broadcast_object_list(path)
    dcp.save(checkpoint(model, opt, acc), checkpoint_id=path[0])

    # Resuming: a state_dict of the same layout is the template dcp.load fills.
    state = checkpoint(model, opt, acc)
    dcp.load(state, checkpoint_id=path[0])
    set_state_dict(model, opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    acc.load_state_dict(state["accumulator"])
    if rank == 0:
        print(f"checkpoint saved to and loaded from {path[0]}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
