"""The training run that tests/test_crash_resume.py kills and resumes.

FusedAdamW + GradAccumulator (windows of STEPS micro-batches, clipped) on a model with
a bfloat16 and a float32 layer, so a checkpoint holds the accumulator's float32 buffer
as well as float32 grads. Every CHECKPOINT_EVERY micro-batches the model's, the
optimizer's and the accumulator's state_dicts are saved atomically; as that is not a
multiple of STEPS, checkpoints fall in the middle of windows as well as at their ends.

    python crash_resume_train.py CHECKPOINT OUT [--resume] [--hang-after N]

--resume starts from CHECKPOINT. --hang-after N: after the N-th checkpoint, train one
micro-batch more (progress the checkpoint does not hold), print "checkpoint N" and
wait to be killed. At the end the params are saved to OUT.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from fused_accum import FusedAdamW, GradAccumulator

MICRO_BATCHES, STEPS, CHECKPOINT_EVERY, MAX_NORM = 16, 3, 2, 0.05


def make_model():
    torch.manual_seed(0)
    return torch.nn.ModuleList([torch.nn.Linear(6, 16).to(torch.bfloat16),
                                torch.nn.Linear(16, 3)])


def forward(model, x):
    return model[1](torch.tanh(model[0](x.to(torch.bfloat16)).float()))


def micro_batch(i):
    gen = torch.Generator().manual_seed(i)
    return torch.randn(4, 6, generator=gen), torch.randn(4, 3, generator=gen)


def save_atomically(obj, path):
    """A kill during torch.save leaves the previous checkpoint whole: the new one is
    written beside it and renamed over it (rename is atomic within a file system)."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-after", type=int)
    args = parser.parse_args()

    model = make_model()
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    acc = GradAccumulator(opt, steps=STEPS, max_grad_norm=MAX_NORM)
    start = 0
    if args.resume:
        saved = torch.load(args.checkpoint)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        acc.load_state_dict(saved["accumulator"])
        start = saved["micro_batches_done"]
        print(f"resumed after micro-batch {start}, {acc.micro_step} in the window", flush=True)
    checkpoints = 0
    for i in range(start, MICRO_BATCHES):
        x, y = micro_batch(i)
        acc.backward(F.mse_loss(forward(model, x), y))
        acc.step()
        if args.hang_after is not None and checkpoints == args.hang_after:
            print(f"checkpoint {checkpoints}", flush=True)
            sys.stdin.read()  # until killed
        if (i + 1) % CHECKPOINT_EVERY == 0:
            save_atomically({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "accumulator": acc.state_dict(), "micro_batches_done": i + 1},
                            args.checkpoint)
            checkpoints += 1
    acc.flush()
    torch.save([p.detach() for p in model.parameters()], args.out)


if __name__ == "__main__":
    main()
