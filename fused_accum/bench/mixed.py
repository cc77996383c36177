"""The mixed scenario's steps: ours with low-precision params or states, and torch's
recipe for float32 master weights of bfloat16 params, each with the memory it holds.

A variant's memory is measured from the tensors it holds once it has stepped: its
params, their grads and every tensor of its optimizer's state (moments, master weights,
compensation, seeds, step counts); torch's recipe adds its float32 copies of the params
and their grads. Each storage counts once, at its allocated size.
"""

from dataclasses import dataclass

import torch

import fused_accum

from .variants import LR, WEIGHT_DECAY

BF16 = torch.bfloat16
FP32 = torch.float32

OURS_FLOAT32 = "ours float32"
OURS_MASTER = "ours bfloat16 + master_weights"
TORCH_RECIPE = "torch float32 copy + fused + copy_"


@dataclass(frozen=True)
class Mode:
    """One way of ours to keep params and state."""
    name: str
    dtype: torch.dtype  # of the params and grads
    options: dict       # FusedAdamW's keyword arguments
    # What a step must move per param: (dtype, streams) pairs, each stream one read or
    # one write of a tensor of that dtype.
    traffic: tuple
    # About how many bytes per param the state adds, to decide whether it fits.
    state_bytes: int


MODES = (
    # reads p, g, m, v; writes p, m, v
    Mode(OURS_FLOAT32, FP32, {}, ((FP32, 7),), 8),
    # reads g (bfloat16), master, m, v; writes master, m, v and p (bfloat16)
    Mode(OURS_MASTER, BF16, dict(master_weights=True), ((BF16, 2), (FP32, 6)), 12),
    # reads p, g, compensation, m, v; writes p, compensation, m, v
    Mode("ours bfloat16 + kahan_summation", BF16, dict(kahan_summation=True),
         ((BF16, 9),), 6),
    # reads p, g, m, v; writes p, m, v (and one seed per tensor)
    Mode("ours bfloat16 + stochastic_rounding", BF16, dict(stochastic_rounding=True),
         ((BF16, 7),), 4),
    # reads p, g (float32), m, v (bfloat16); writes p, m, v
    Mode("ours float32 + bfloat16 states", FP32, dict(state_dtype=BF16),
         ((FP32, 3), (BF16, 4)), 4),
    Mode("ours bfloat16", BF16, {}, ((BF16, 7),), 4),
)
# Its grads cast up (read bfloat16, write float32), a float32 step (7 streams), the
# copies cast down into the params (read float32, write bfloat16).
TORCH_RECIPE_TRAFFIC = ((BF16, 2), (FP32, 9))
TORCH_RECIPE_STATE_BYTES = 16  # float32 copies of the params and grads, two moments


def traffic_bytes(traffic, numel):
    return numel * sum(count * torch.empty((), dtype=dtype).element_size()
                       for dtype, count in traffic)


def held_bytes(tensors):
    """Bytes allocated for `tensors`, each storage counted once."""
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        key = (storage.device, storage.data_ptr())
        storages[key] = max(storages.get(key, 0), storage.nbytes())
    return sum(storages.values())


def _state_tensors(optimizer):
    for group in optimizer.param_groups:
        for p in group["params"]:
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor):
                    yield value


def optimizer_tensors(optimizer):
    """An optimizer's params, their grads and its state tensors."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            yield p
            if p.grad is not None:
                yield p.grad
    yield from _state_tensors(optimizer)


class OursStep:
    """Ours in one Mode over params that already hold grads."""

    def __init__(self, mode, params):
        self.name = mode.name
        self.optimizer = fused_accum.FusedAdamW(params, lr=LR, weight_decay=WEIGHT_DECAY,
                                                **mode.options)
        self.step = self.optimizer.step

    def tensors(self):
        return list(optimizer_tensors(self.optimizer))


class TorchMasterRecipe:
    """torch's way to keep float32 master weights of bfloat16 params: a float32 copy of
    every param, with a float32 grad, stepped by AdamW(fused=True). Each step casts the
    bfloat16 grads into the copies' grads, steps the copies and casts them back into
    the params, with torch's multi-tensor copies."""

    name = TORCH_RECIPE

    def __init__(self, params):
        self.params = params
        with torch.no_grad():
            self.masters = [p.detach().to(FP32) for p in params]
        for master in self.masters:
            master.grad = torch.empty_like(master)
        self.master_grads = [m.grad for m in self.masters]
        self.optimizer = torch.optim.AdamW(self.masters, lr=LR, weight_decay=WEIGHT_DECAY,
                                           fused=True)

    @torch.no_grad()
    def step(self):
        torch._foreach_copy_(self.master_grads, [p.grad for p in self.params])
        self.optimizer.step()
        torch._foreach_copy_(self.params, self.masters)

    def tensors(self):
        return (self.params + [p.grad for p in self.params if p.grad is not None]
                + list(optimizer_tensors(self.optimizer)))
