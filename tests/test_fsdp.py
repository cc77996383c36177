"""FusedAdam(W) and GradAccumulator over DTensor params (FSDP2, tensor parallel).

Two CPU processes (gloo), one spawn for every check: the fused optimizer against
torch's fused Adam(W) on the same sharded model, and GradAccumulator under FSDP2
against one process running the whole window as one large batch with
clip_grad_norm_. Rank 0 gathers full tensors; the test compares them.
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor
from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                               parallelize_module)

from fused_accum import FusedAdam, FusedAdamW, GradAccumulator
from bounded_spawn import free_port, spawn
from test_accumulate import feed, run_reference
from test_accumulate_ddp import LR, MAX_NORM, STEPS, WINDOWS, WORLD, rank_batches

OPT_STEPS = 4
TIMEOUT_S = 120


def make_model(dtype=torch.float32, deep=False):
    """6-8-3 MLP; `deep` adds a 3->1 layer whose weight row leaves rank 1 an empty
    shard. 3-row layers shard unevenly (2 rows and 1)."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)]
    if deep:
        layers += [torch.nn.Tanh(), torch.nn.Linear(3, 1)]
    return torch.nn.Sequential(*layers).to(dtype)


def wide_model(dtype=torch.float32):
    """Every shard (dim 0 or 1 over two ranks) a multiple of 64 elements: no scalar
    tail on any vector width, where torch's fused CPU kernel and ours may differ by
    an ulp, so results compare bit for bit (see test_torch_parity.py)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                               torch.nn.Linear(128, 128)).to(dtype)


def shard(model, **kwargs):
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **kwargs)
    return fully_shard(model, **kwargs)


def full(tensors):
    """Full copies of (D)Tensors; a collective, so every rank calls it."""
    return [t.full_tensor() if isinstance(t, DTensor) else t.detach().clone() for t in tensors]


def states(opt, model, keys):
    return {k: full([opt.state[p][k] for p in model.parameters()]) for k in keys}


def rank_data(model, rank, dtype=torch.float32, rows=5, same_on_every_rank=False):
    """Input and target batches shaped for `model`, different on every rank unless
    `same_on_every_rank` (tensor parallel)."""
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    gen = torch.Generator().manual_seed(10 + (0 if same_on_every_rank else rank))
    return [(torch.randn(rows, layers[0].in_features, generator=gen).to(dtype),
             torch.randn(rows, layers[-1].out_features, generator=gen).to(dtype))
            for _ in range(OPT_STEPS)]


def check_state_layout(fused, torch_opt, model_a, model_b):
    """The fused optimizer's state is laid out as torch's: same keys, DTensors with
    the params' placements, a plain 0-d step; and so is the state dict that
    torch.distributed.checkpoint saves."""
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        a, b = fused.state[p], torch_opt.state[q]
        assert a.keys() == b.keys(), (a.keys(), b.keys())
        for key in a:
            assert type(a[key]) is type(b[key]), key
            if isinstance(a[key], DTensor):
                assert a[key].placements == b[key].placements == p.placements, key
    ours = get_optimizer_state_dict(model_a, fused)
    theirs = get_optimizer_state_dict(model_b, torch_opt)
    # torch's was built with fused=True, ours with the default (the step is fused anyway).
    assert [dict(g, fused=True) for g in ours["param_groups"]] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for fqn, state in ours["state"].items():
        assert {k: (type(v), getattr(v, "placements", None)) for k, v in state.items()} == {
            k: (type(v), getattr(v, "placements", None))
            for k, v in theirs["state"][fqn].items()}, fqn


# ------------------------------------------------------------------- the optimizer
OPTIMIZER_CASES = {  # name: (ours, torch's, model, kwargs)
    "adamw": (FusedAdamW, torch.optim.AdamW, wide_model, dict(weight_decay=0.1)),
    "adam_l2_amsgrad": (FusedAdam, torch.optim.Adam, wide_model,
                        dict(weight_decay=0.1, amsgrad=True)),
    "adamw_uneven_and_empty_shards": (FusedAdamW, torch.optim.AdamW,
                                      lambda: make_model(deep=True), dict(weight_decay=0.1)),
}


def optimizer_parity(rank):
    """Fused and torch's fused Adam/AdamW on two copies of the same FSDP2 model."""
    results = {}
    for name, (fused_cls, torch_cls, model_fn, kwargs) in OPTIMIZER_CASES.items():
        model_a, model_b = shard(model_fn()), shard(model_fn())
        opt_a = fused_cls(model_a.parameters(), lr=LR, **kwargs)
        opt_b = torch_cls(model_b.parameters(), lr=LR, fused=True, **kwargs)
        for x, y in rank_data(model_a, rank):
            for model, opt in ((model_a, opt_a), (model_b, opt_b)):
                F.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
        check_state_layout(opt_a, opt_b, model_a, model_b)
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if kwargs.get("amsgrad") else [])
        results[name] = (full(model_a.parameters()), full(model_b.parameters()),
                         states(opt_a, model_a, keys), states(opt_b, model_b, keys))
    return results


def master_weights_on_shards(rank):
    """bf16 FSDP2 params with master_weights: the same as a plain bf16 model stepped
    with the same (full) gradients; the float32 masters stay DTensors."""
    sharded, plain = shard(wide_model(torch.bfloat16)), wide_model(torch.bfloat16)
    opt_s = FusedAdamW(sharded.parameters(), lr=LR, master_weights=True)
    opt_p = FusedAdamW(plain.parameters(), lr=LR, master_weights=True)
    for x, y in rank_data(plain, rank, torch.bfloat16):
        F.mse_loss(sharded(x), y).backward()
        for p, q in zip(sharded.parameters(), plain.parameters()):
            q.grad = p.grad.full_tensor()
        opt_s.step()
        opt_p.step()
        opt_s.zero_grad()
    masters = [opt_s.state[p]["master_param"] for p in sharded.parameters()]
    assert all(isinstance(m, DTensor) and m.dtype == torch.float32 for m in masters)
    return (full(sharded.parameters()), full(plain.parameters()), full(masters),
            [opt_p.state[q]["master_param"] for q in plain.parameters()])


def tensor_parallel_parity(rank):
    """Column- and row-wise sharded Linear layers: fused against torch's fused AdamW."""
    mesh = init_device_mesh("cpu", (WORLD,))
    plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
    model_a = parallelize_module(wide_model(), mesh, plan)
    model_b = parallelize_module(wide_model(), mesh, plan)
    opt_a = FusedAdamW(model_a.parameters(), lr=LR, weight_decay=0.1)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=LR, weight_decay=0.1, fused=True)
    for x, y in rank_data(model_a, rank, same_on_every_rank=True):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    check_state_layout(opt_a, opt_b, model_a, model_b)
    results = (full(model_a.parameters()), full(model_b.parameters()),
               states(opt_a, model_a, ["exp_avg", "exp_avg_sq"]),
               states(opt_b, model_b, ["exp_avg", "exp_avg_sq"]))

    # A state tensor placed otherwise than its param: its local shard would not be
    # the param's elements.
    first = next(model_a.parameters())
    state = opt_a.state[first]
    state["exp_avg"] = distribute_tensor(state["exp_avg"].full_tensor(), mesh, [Replicate()])
    F.mse_loss(model_a(x), y).backward()
    with pytest.raises(ValueError, match=r"exp_avg of params\[0\] is a DTensor placed as "
                                         r"\(Replicate\(\),\).*expected the param's "
                                         r"placements \(Shard\(dim=0\),\)"):
        opt_a.step()
    return results


def compiled_step_parity(rank):
    """The traced step (torch.compile) over FSDP2 params equals the eager one."""
    model_a, model_b = shard(make_model()), shard(make_model())
    opt_a = FusedAdamW(model_a.parameters(), lr=LR, weight_decay=0.1)
    opt_b = FusedAdamW(model_b.parameters(), lr=LR, weight_decay=0.1)
    compiled = torch.compile(opt_b.step)
    for x, y in rank_data(model_a, rank)[:2]:
        for model, step in ((model_a, opt_a.step), (model_b, compiled)):
            F.mse_loss(model(x), y).backward()
            step()
    return full(model_a.parameters()), full(model_b.parameters())


# ------------------------------------------------------------------ the accumulator
def accumulate(rank, dtype=torch.float32, sizes=(4, 4), weighted=False, micro_batches=None,
               every=False, mesh_shape=None, mp_policy=None):
    """GradAccumulator on an FSDP2 model. Returns full params, grad_norm per window
    and whether FSDP2 set a sharded grad after the first micro-batch."""
    micro_batches = micro_batches or WINDOWS * STEPS
    kwargs = {}
    if mesh_shape is not None:  # HSDP: replicated over the first dim, sharded over the second
        kwargs["mesh"] = init_device_mesh("cpu", mesh_shape,
                                          mesh_dim_names=("replicate", "shard"))
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    model = shard(make_model(dtype), **kwargs)
    acc = GradAccumulator(FusedAdamW(model.parameters(), lr=LR), steps=STEPS,
                          max_grad_norm=MAX_NORM, reduce_scatter_every_micro_batch=every)
    data = rank_batches(dtype, sizes, micro_batches)[rank]
    norms, grad_after_first = [], None
    for start in range(0, micro_batches, STEPS):
        window = data[start:start + STEPS]
        for i, (x, y) in enumerate(window):
            with acc.accumulate(model, last=i == len(window) - 1):
                out = model(x)
                if weighted:
                    acc.backward(F.mse_loss(out, y, reduction="sum"), weight=y.numel())
                else:
                    acc.backward(F.mse_loss(out, y))
            if grad_after_first is None:
                grad_after_first = next(model.parameters()).grad is not None
        assert acc.flush()
        norms.append(acc.grad_norm.item())
    return full(model.parameters()), norms, grad_after_first


ACCUMULATION_CASES = {
    "fp32_mean": dict(),
    "fp32_weighted_unequal_ranks": dict(sizes=(2, 6), weighted=True),
    "fp32_partial_last_window": dict(micro_batches=WINDOWS * STEPS - 1),
    "fp32_reduce_scatter_every_micro_batch": dict(every=True),
    "fp32_hsdp_replicated": dict(mesh_shape=(WORLD, 1)),
    "bf16_reduce_fp32": dict(dtype=torch.bfloat16,
                             mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32)),
    "bf16_reduce_fp32_every_micro_batch": dict(
        dtype=torch.bfloat16, every=True,
        mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32)),
    "fp32_sharded_bf16_compute": dict(
        mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                       reduce_dtype=torch.float32)),
}


def accumulate_tensor_parallel(rank):
    """GradAccumulator over a tensor-parallel model (no FSDP2): both ranks feed the
    same micro-batches, the norm is over the sharded and the replicated params."""
    mesh = init_device_mesh("cpu", (WORLD,))
    model = parallelize_module(make_model(), mesh,
                               {"0": ColwiseParallel(), "2": RowwiseParallel()})
    acc = GradAccumulator(FusedAdamW(model.parameters(), lr=LR), steps=STEPS,
                          max_grad_norm=MAX_NORM)
    norms = []
    for start in range(0, WINDOWS * STEPS, STEPS):
        feed(model, acc, tensor_parallel_data()[start:start + STEPS], False)
        norms.append(acc.grad_norm.item())
    return full(model.parameters()), norms


def tensor_parallel_data():
    return rank_batches(torch.float32, (4, 4), WINDOWS * STEPS)[0]


def worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        results = {
            "optimizer": optimizer_parity(rank),
            "master_weights": master_weights_on_shards(rank),
            "tensor_parallel": tensor_parallel_parity(rank),
            "compiled": compiled_step_parity(rank),
            "accumulate": {name: accumulate(rank, **case)
                           for name, case in ACCUMULATION_CASES.items()},
            "accumulate_tensor_parallel": accumulate_tensor_parallel(rank),
        }
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def reference(dtype, sizes, micro_batches):
    """One process, one large batch per window: torch AdamW + clip_grad_norm_. The
    large batch's mean over every element is also the weighted windows' loss."""
    model = make_model(torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    data = rank_batches(dtype, sizes, micro_batches)
    norms = []
    for start in range(0, micro_batches, STEPS):
        window = [(x.float(), y.float()) for r in range(WORLD)
                  for x, y in data[r][start:start + STEPS]]
        norms.append(run_reference(model, opt, window, MAX_NORM).item())
    return list(model.parameters()), norms


def test_fsdp2_and_tensor_parallel(tmp_path):
    out = tmp_path / "rank0.pt"
    spawn(worker, (free_port(), str(out)), WORLD, TIMEOUT_S)
    results = torch.load(out, weights_only=False)

    # The same kernels on aligned shards: bit for bit torch's fused step where no
    # shard has a scalar tail, within float32 tolerance where shards are tiny.
    for name, (ours, theirs, our_states, their_states) in results["optimizer"].items():
        tolerance = {} if "uneven" in name else dict(rtol=0, atol=0)
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, **tolerance, msg=name)
        for key in our_states:
            for s, t in zip(our_states[key], their_states[key]):
                torch.testing.assert_close(s, t, **tolerance, msg=f"{name} {key}")

    ours, plain, masters, plain_masters = results["master_weights"]
    for a, b in zip(ours + masters, plain + plain_masters):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    eager, compiled = results["compiled"]
    for p, q in zip(eager, compiled):
        torch.testing.assert_close(p, q, rtol=0, atol=0)

    ours, theirs, our_states, their_states = results["tensor_parallel"]
    for a, b in zip(ours + our_states["exp_avg"] + our_states["exp_avg_sq"],
                    theirs + their_states["exp_avg"] + their_states["exp_avg_sq"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    for name, case in ACCUMULATION_CASES.items():
        params, norms, grad_after_first = results["accumulate"][name]
        dtype = case.get("dtype", torch.float32)
        policy = case.get("mp_policy")
        bf16_compute = torch.bfloat16 in (dtype, policy and policy.param_dtype)
        ref_params, ref_norms = reference(dtype, case.get("sizes", (4, 4)),
                                          case.get("micro_batches", WINDOWS * STEPS))
        if not bf16_compute:
            # Without reduce_scatter_every_micro_batch FSDP2 reduces the window sum
            # only. (bf16 params' grads move into the accumulator's buffers.)
            assert grad_after_first == case.get("every", False), name
            torch.testing.assert_close(norms, ref_norms, msg=name)
            for p, q in zip(params, ref_params):
                torch.testing.assert_close(p, q, msg=name)
        else:
            # bf16 forward and gradients: the norm to bf16's precision, the params
            # within one bf16 rounding of the float32 run's.
            torch.testing.assert_close(norms, ref_norms, rtol=2e-2, atol=0, msg=name)
            for p, q in zip(params, ref_params):
                torch.testing.assert_close(p.float(), q, rtol=8e-3, atol=1e-3, msg=name)

    params, norms = results["accumulate_tensor_parallel"]
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    data = tensor_parallel_data()
    ref_norms = [run_reference(model, opt, data[start:start + STEPS], MAX_NORM).item()
                 for start in range(0, WINDOWS * STEPS, STEPS)]
    torch.testing.assert_close(norms, ref_norms)
    for p, q in zip(params, model.parameters()):
        torch.testing.assert_close(p, q)
