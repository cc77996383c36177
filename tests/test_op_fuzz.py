"""Random, often malformed calls to every operator: each must raise a Python
exception with every input unchanged, or give the reference's result (torch ops for
accumulate_ and sum_of_squares, torch.optim's functional Adam for the steps).

Cases run in subprocesses, a batch per process; each case is announced before it
runs, so a crash or a hang is charged to the case that caused it, and the rest of
its batch runs in a fresh process.
"""

import concurrent.futures
import json
import math
import os
import random
import subprocess
import sys

import torch
from torch.optim.adam import adam

SEED = 20261203
CASES = 360
BATCH = 120
CASE_TIMEOUT_S = 60

OPS = ("adam_step_", "adam_step_.tensor_lr", "adam_window_step_",
       "adam_window_step_.tensor_lr", "accumulate_", "sum_of_squares")
ADAM_LISTS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps")


# ------------------------------------------------------------------ case building

def random_shape(rng):
    return rng.choice([(3,), (0,), (2, 3), (4, 1), (5,), (2, 0, 3)])


def spoil(rng, t, how):
    """t made bad (or merely unusual) in one way."""
    if t.is_meta:
        return t
    if how == "dtype":
        return t.to(rng.choice([torch.float64, torch.float16, torch.bfloat16, torch.int32]))
    if how == "meta":
        return torch.empty_like(t, device="meta")
    if how == "shape":
        return torch.zeros(t.numel() + 1, dtype=t.dtype)
    if how == "non-contiguous":  # same values, strided storage
        wide = torch.zeros(*t.shape, 2, dtype=t.dtype)
        wide[..., 1] = t
        return wide[..., 1]
    if how == "expanded":
        return torch.zeros(1, dtype=t.dtype).expand(t.shape) if t.dim() else t
    if how == "transposed" and t.dim() == 2:
        return t.t().contiguous().t()
    return t


SPOILS = ("dtype", "meta", "shape", "non-contiguous", "expanded", "transposed")


def mutate_lists(rng, lists, names):
    """Applies 0-2 random mutations in place; returns their descriptions."""
    done = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        k = rng.randrange(len(lists))
        kind = rng.choice(["length", "member", "member", "alias", "empty"])
        if kind == "length":
            if lists[k] and rng.random() < 0.5:
                lists[k].pop()
            else:
                lists[k].append(torch.zeros(3))
        elif kind == "empty":
            lists[k].clear()
        elif kind == "member" and lists[k]:
            i = rng.randrange(len(lists[k]))
            how = rng.choice(SPOILS)
            lists[k][i] = spoil(rng, lists[k][i], how)
            kind = f"{how}"
        elif kind == "alias":
            j = rng.randrange(len(lists))
            if lists[k] and lists[j]:
                i, i2 = rng.randrange(len(lists[k])), rng.randrange(len(lists[j]))
                lists[k][i] = lists[j][i2]
        done.append(f"{kind}:{names[k]}")
    return done


def build_case(case_id):
    """(op name, args, kwargs, description) of case `case_id`, from the seed alone."""
    rng = random.Random(SEED * 1000 + case_id)
    torch.manual_seed(SEED * 1000 + case_id)
    op = OPS[case_id % len(OPS)]
    n = rng.choice([0, 1, 2, 3])
    shapes = [random_shape(rng) for _ in range(n)]
    dtype = rng.choice([torch.float32, torch.float64])
    if op == "sum_of_squares":
        dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int32]
        lists = [[torch.randn(s).to(rng.choice(dtypes)) for s in shapes]]
        notes = mutate_lists(rng, lists, ["tensors"])
        return op, lists, {}, notes
    if op == "accumulate_":
        lists = [[torch.randn(s, dtype=dtype) for s in shapes],
                 [torch.randn(s, dtype=dtype) for s in shapes]]
        notes = mutate_lists(rng, lists, ["buffers", "grads"])
        scale = rng.choice([0.5, 1.0, -3.0, 1e39, math.inf, math.nan, 1e-40])
        return op, lists, {"scale": scale}, notes + [f"scale={scale}"]
    amsgrad = rng.random() < 0.5
    lists = [[torch.randn(s, dtype=dtype) for s in shapes] for _ in range(2)]
    lists += [[torch.rand(s, dtype=dtype) for s in shapes] for _ in range(2)]
    lists.append([torch.rand(s, dtype=dtype) for s in shapes] if amsgrad else [])
    lists.append([torch.tensor(float(rng.randrange(5))) for _ in shapes])
    notes = mutate_lists(rng, lists, list(ADAM_LISTS))
    kwargs = dict(beta1=0.9, beta2=0.99, weight_decay=rng.choice([0.0, 0.1]), eps=1e-8,
                  amsgrad=amsgrad, maximize=rng.random() < 0.3,
                  decoupled_weight_decay=rng.random() < 0.5)
    lr = 1e-2
    if op.endswith("tensor_lr"):
        kwargs["lr"] = torch.tensor(lr)
    else:
        kwargs["lr"] = lr
    if op.startswith("adam_window_step_"):
        kwargs["grad_multiplier"] = torch.tensor(rng.choice([0.5, 0.25]))
    elif rng.random() < 0.5:
        kwargs["grad_scale"] = torch.tensor(rng.choice([2.0, 0.5]))
    if rng.random() < 0.3:
        kwargs["found_inf"] = torch.tensor(rng.choice([0.0, 1.0]))
    for name in [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]:
        if rng.random() < 0.1:
            kwargs[name] = spoil(rng, kwargs[name], rng.choice(["meta", "dtype", "shape"]))
            notes.append(f"spoiled {name}")
        elif rng.random() < 0.05 and lists[5]:
            kwargs[name] = lists[5][0]  # a written step read as a scalar
            notes.append(f"{name} is state_steps[0]")
    return op, lists + [[], [], []], kwargs, notes


# ------------------------------------------------------------------- references

def has_meta(obj):
    if isinstance(obj, torch.Tensor):
        return obj.is_meta
    if isinstance(obj, (list, tuple)):
        return any(has_meta(x) for x in obj)
    if isinstance(obj, dict):
        return any(has_meta(x) for x in obj.values())
    return False


def clone_all(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (list, tuple)):
        return [clone_all(x) for x in obj]
    if isinstance(obj, dict):
        return {k: clone_all(v) for k, v in obj.items()}
    return obj


def bits(t):
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a, b):
    if isinstance(a, torch.Tensor):
        return a.is_meta or (a.dtype == b.dtype and a.shape == b.shape and
                             torch.equal(bits(a), bits(b)))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return all(same_bits(a[k], b[k]) for k in a)
    return True


def reference_accumulate(args, kwargs):
    buffers, grads = clone_all(args)
    scale = kwargs["scale"]
    for b, g in zip(buffers, grads):
        math_dtype = torch.float64 if b.dtype == torch.float64 else torch.float32
        s = torch.tensor(scale, dtype=math_dtype)
        b.copy_(b.to(math_dtype) + s * g.to(math_dtype))
    return [buffers, grads]


def reference_sum_of_squares(tensors):
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return sum((float(t.double().square().sum()) for t in tensors), 0.0), dtype


def reference_adam(op, args, kwargs):
    lists = clone_all(args)
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = lists[:6]
    found_inf = kwargs.get("found_inf")
    window = op.startswith("adam_window_step_")
    if found_inf is not None and found_inf.item() != 0:
        if window:
            for g in grads:
                g.zero_()
        return lists
    step_grads = []
    for g in grads:
        if window:
            step_grads.append(g * kwargs["grad_multiplier"].to(g.dtype))
            g.zero_()
        elif "grad_scale" in kwargs:
            g.copy_(g / kwargs["grad_scale"].to(g.dtype))
            step_grads.append(g)
        else:
            step_grads.append(g)
    adam(
        params, step_grads, exp_avgs, exp_avg_sqs, max_sqs, steps, foreach=False,
        decoupled_weight_decay=kwargs["decoupled_weight_decay"], amsgrad=kwargs["amsgrad"],
        beta1=kwargs["beta1"], beta2=kwargs["beta2"], lr=float(kwargs["lr"]),
        weight_decay=kwargs["weight_decay"], eps=kwargs["eps"], maximize=kwargs["maximize"])
    return lists


def run_case(case_id):
    """'refused' or 'matched'; raises AssertionError on a partial write or a mismatch."""
    from fused_accum._ops import ops

    op, args, kwargs, notes = build_case(case_id)
    name, _, overload = op.partition(".")
    fn = getattr(getattr(ops, name), overload or "default")
    before = clone_all([args, kwargs])
    try:
        result = fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 (any Python exception is a refusal)
        assert same_bits([args, kwargs], before), f"refused after writing: {notes}"
        return "refused"
    if has_meta([args, kwargs]):
        # Only a call with no data to touch may pass with a meta tensor in it.
        assert all(t.is_meta for ts in args for t in ts), \
            f"accepted meta tensors among others: {notes}"
        return "matched"
    if op == "sum_of_squares":
        expected, dtype = reference_sum_of_squares(before[0][0])
        assert result.dtype == dtype and result.shape == (), notes
        # Squares of float64 tensors are summed in float64, of others in float32 blocks.
        exact = all(t.dtype == torch.float64 for t in before[0][0])
        rtol = 1e-12 if exact else 1e-6
        assert math.isclose(float(result), expected, rel_tol=rtol, abs_tol=1e-30), \
            (float(result), expected, notes)
        return "matched"
    if op == "accumulate_":
        expected = reference_accumulate(before[0], before[1])
        for got, want in zip(args[0], expected[0]):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"{m} {notes}")
        return "matched"
    expected = reference_adam(op, before[0], before[1])
    for k, (got_list, want_list) in enumerate(zip(args, expected)):
        for got, want in zip(got_list, want_list):
            torch.testing.assert_close(got, want, msg=lambda m: f"{ADAM_LISTS[k]}: {m} {notes}")
    return "matched"


def worker(case_ids):
    torch.set_num_threads(1)
    for case_id in case_ids:
        print(json.dumps({"start": case_id}), flush=True)
        try:
            outcome = run_case(case_id)
        except AssertionError as e:
            outcome = f"FAILED: {e}"
        print(json.dumps({"case": case_id, "outcome": outcome}), flush=True)


# ------------------------------------------------------------------------ the test

def run_batch(case_ids):
    """{case id: outcome} for the batch; crashes and hangs are charged per case."""
    outcomes = {}
    pending = list(case_ids)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while pending:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                 ",".join(map(str, pending))],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            out, err = proc.communicate(timeout=CASE_TIMEOUT_S)
            ended = f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            ended = "hang (timeout)"
        started = None
        for line in out.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                outcomes[record["case"]] = record["outcome"]
                started = None
        if started is not None:
            outcomes[started] = f"FAILED: {ended}: {err[-2000:]}"
        elif proc.returncode != 0:
            raise AssertionError(f"worker failed outside a case: {ended}: {err[-2000:]}")
        pending = [c for c in pending if c not in outcomes]
    return outcomes


def test_random_calls_raise_or_match_the_reference():
    outcomes = {}
    batches = [range(first, min(CASES, first + BATCH)) for first in range(0, CASES, BATCH)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for batch_outcomes in pool.map(run_batch, batches):
            outcomes.update(batch_outcomes)
    failures = {c: o for c, o in outcomes.items() if o.startswith("FAILED")}
    assert not failures, "\n".join(f"case {c}: {o}" for c, o in sorted(failures.items()))
    # The generator must exercise both sides, on every operator.
    for i, op in enumerate(OPS):
        kinds = {outcomes[c] for c in range(i, CASES, len(OPS))}
        assert kinds == {"refused", "matched"}, (op, kinds)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    worker([int(c) for c in sys.argv[1].split(",")])
