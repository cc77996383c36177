"""What is measured. Each scenario takes the run's Settings and returns Tables.

A tensor set is allocated once and reused by every variant. Ours' optimizer is kept
while each other variant is timed in turns with it, and each other variant's optimizer
(and so its state) is dropped before the next one is built, so memory holds at most
two states; one, where a torch variant steps ours' state on a set too big for two.
"""

import gc
import statistics
from dataclasses import dataclass, replace

import torch

from . import shapes
from .machine import cpu_line
from .memory import fits, peak_extra_bytes
from .mixed import (MODES, OURS_FLOAT32, OURS_MASTER, TORCH_RECIPE, TORCH_RECIPE_STATE_BYTES,
                    TORCH_RECIPE_TRAFFIC, OursStep, TorchMasterRecipe, held_bytes,
                    traffic_bytes)
from .progress import Progress
from .results import Row, Table
from .roofline import (ADAM_STREAMS, adam_bytes, copy_kernel, flat_stream_call,
                       flat_stream_kernel, roofline_gbps)
from .tensors import make_params, nbytes, set_bytes
from .timing import time_alternately
from .variants import ADAM_L2, ADAMW, OURS, peers_skipped_reason, variants
from .window import WINDOW_STREAMS, ours_window, time_window_ends, torch_window


@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype = None   # None: the scenario's own choice
    repeats: int = 5
    warmup: int = 2
    quick: bool = False
    peers: bool = False
    progress: Progress = None

    def say(self, message):
        if self.progress is not None:
            self.progress.say(message)


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


# ---- building blocks ---------------------------------------------------------------

def _new_table(scenario, title, shape_set, dtype, settings):
    return Table(scenario=scenario, title=title, shape_set=shape_set.name,
                 params=shape_set.numel, tensors=shape_set.tensors,
                 dtype=dtype_name(dtype), device=str(settings.device))


def _allocate(shape_set, dtype, settings, notes):
    """params with grads, or None (with a note) when p, g, m and v would not fit."""
    one_set = set_bytes(shape_set, dtype)
    if not fits(4 * one_set, 4 * one_set, settings.device):
        notes.append(f"{shape_set.name} {dtype_name(dtype)} skipped: params, grads and two "
                     f"moments need {4 * one_set / 1e9:.1f} GB, more than this run may use")
        settings.say(notes[-1])
        return None
    settings.say(f"allocating {shape_set.name} ({shapes.human_count(shape_set.numel)} params,"
                 f" {shape_set.tensors} tensors, {dtype_name(dtype)})")
    return make_params(shape_set, dtype, settings.device)


def _measure_roofline(params, settings):
    settings.say("  roofline")
    with torch.no_grad():
        return roofline_gbps(params, settings.repeats, settings.warmup)


# Each timed call of alternate timing follows this much of its own calls
# (timing.time_alternately). Measured with 2000 params of 1024 elements, each ours'
# step timed after torch fused's: 2.4 ms right after it, 1.5 after one more call of
# ours, 1.2 after two, 1.0 after four or eight, as in a loop of ours alone.
REFILL_MS = 50.0


def _state_bytes(params):
    """An Adam state's two moments."""
    return 2 * nbytes(params)


def _new_bytes(variant, params, shared=False):
    """What building and stepping variant allocates; `shared`: it steps ours' state,
    so only its temporaries are new."""
    return (0 if shared else _state_bytes(params)) + variant.temporaries(params)


def _variant_fits(variant, params, settings, roofline=None, ours=None, shared=False,
                  released=0):
    """Whether variant's state and temporaries fit beside the params and grads, the
    roofline's buffers (flat_stream_call's third item) and ours' state, when given;
    `released`: bytes now held that are freed first."""
    new = _new_bytes(variant, params, shared)
    held = (0 if roofline is None else roofline[2]) + (0 if ours is None else _state_bytes(params))
    return fits(new, 2 * nbytes(params) + new + held, settings.device, released)


def _time_variant(table, variant, params, settings, roofline=None, ours=None, shared=False):
    """Adds variant's row to table, unless its temporaries would not fit in memory;
    returns the stepped optimizer (None when skipped).

    Calls are timed alternately, so that a ratio compares two calls under the same load:
    `roofline`, flat_stream_call's (call, bytes per call, bytes held), for the row's own
    roofline (None: the table's); `ours`, ours' optimizer, already stepped, for the
    row's speedup (None: against ours' row); `shared`: the variant steps ours' state."""
    if not _variant_fits(variant, params, settings, roofline, ours, shared):
        what = "temporaries" if shared else "state and temporaries"
        table.notes.append(f"{variant.name} skipped: its {what} (about "
                           f"{_new_bytes(variant, params, shared) / 1e9:.1f} GB) "
                           "would not fit in memory")
        settings.say("  " + table.notes[-1])
        return None
    settings.say(f"  {variant.name}")
    optimizer = variant.make(params)
    if shared:
        variant.share_state(optimizer, ours, params)
    calls = ([] if roofline is None else [roofline[0]]) + [optimizer.step] + \
        ([] if ours is None else [ours.step])
    timed = time_alternately(calls, settings.device, settings.repeats, settings.warmup,
                             refill_ms=REFILL_MS)
    row_roofline = None if roofline is None else timed[0].gbps(roofline[1])
    samples = timed[0 if roofline is None else 1]
    ours_beside = None if ours is None else timed[-1].median
    peak = peak_extra_bytes(optimizer.step, settings.device)
    table.rows.append(Row(variant.name, samples, adam_bytes(params), peak, row_roofline,
                          ours_beside))
    settings.say(f"    median {samples.median:.2f} ms")
    return optimizer


def _room_beside_ours(table, variant, params, settings, roofline, ours):
    """How variant is timed beside ours' optimizer: returns (shared, free_ours). Where
    both states would not fit in memory beside the params (a 1B-param set), a variant
    that can share ours' state tensors steps them (shared); any other is timed after
    ours' state is freed (free_ours), against ours' row."""
    if ours is None or _variant_fits(variant, params, settings, roofline, ours):
        return False, False
    if variant.share_state is not None and _variant_fits(variant, params, settings, roofline,
                                                         ours, shared=True):
        table.notes.append(f"{variant.name} stepped ours' state tensors in its turns, "
                           "as two states would not fit in memory")
        return True, False
    if _variant_fits(variant, params, settings, roofline,
                     released=_state_bytes(params)):  # ours', once freed
        table.notes.append(f"{variant.name}: ours faster by is against ours' row, "
                           "as both states would not fit in memory at once")
        return False, True
    return False, False  # does not fit either way: _time_variant notes the skip


def _time_variants(table, chosen, params, settings, roofline):
    """Times ours first, then each other variant alternately with ours, as
    _room_beside_ours allows."""
    ours = None
    for variant in chosen:
        shared, free_ours = _room_beside_ours(table, variant, params, settings, roofline, ours)
        if free_ours:
            ours = None
            gc.collect()
        optimizer = _time_variant(table, variant, params, settings, roofline, ours, shared)
        if variant.name == OURS:
            ours = optimizer
        del optimizer
        gc.collect()


def _step_tables(scenario, shape_set, dtype, algorithms, settings, title_prefix="",
                 only=None):
    """One table per algorithm over one tensor set.

    `only`: the names of the variants to time (default: all).
    """
    notes = []
    params = _allocate(shape_set, dtype, settings, notes)
    if params is None:
        table = _new_table(scenario, f"{title_prefix}{shape_set.name} {dtype_name(dtype)}",
                           shape_set, dtype, settings)
        table.notes = notes
        return [table]
    # CPU: each row's roofline is timed alternately with it, which keeps the
    # machine's changing load out of the fraction. CUDA: one copy-bandwidth measure.
    if settings.device.type == "cpu":
        alternate_roofline = flat_stream_call(params)
        roofline = None
    else:
        alternate_roofline = None
        roofline = _measure_roofline(params, settings)
    tables = []
    for algorithm in algorithms:
        title = (f"{title_prefix}one {algorithm.name} step, {shape_set.name} shapes "
                 f"({shape_set.numel:,} params in {shape_set.tensors} tensors), "
                 f"{dtype_name(dtype)}, {settings.device}")
        table = _new_table(scenario, title, shape_set, dtype, settings)
        table.roofline_gbps = roofline
        settings.say(f"{scenario}: {algorithm.name} {shape_set.name} {dtype_name(dtype)}")
        chosen = [v for v in variants(algorithm, settings.device, settings.peers)
                  if only is None or v.name in only]
        _time_variants(table, chosen, params, settings, alternate_roofline)
        beside_rows = [r.roofline_gbps for r in table.rows if r.roofline_gbps]
        if beside_rows:
            table.roofline_gbps = statistics.median(beside_rows)
        if settings.peers and only is None:
            reason = peers_skipped_reason(settings.device)
            if reason:
                table.notes.append(reason)
                settings.say(reason)
        tables.append(table)
    del params
    gc.collect()
    return tables


# ---- scenarios ---------------------------------------------------------------------

def headline(settings):
    """The default step table: one AdamW step over GPT-2-small shapes."""
    shape_set = shapes.GPT_TINY if settings.quick else shapes.GPT2_SMALL
    dtype = settings.dtype or torch.float32
    return _step_tables("step", shape_set, dtype, [ADAMW], settings, "Headline: ")


def step(settings):
    """AdamW and Adam+L2 over GPT-2-small and 1B shapes, in float32 and bfloat16."""
    shape_sets = [shapes.GPT_TINY] if settings.quick else [shapes.GPT2_SMALL, shapes.GPT_1B]
    dtypes = [settings.dtype] if settings.dtype else [torch.float32, torch.bfloat16]
    return [table for shape_set in shape_sets for dtype in dtypes
            for table in _step_tables("step", shape_set, dtype, [ADAMW, ADAM_L2], settings)]


def dtypes(settings):
    """Ours over the same shapes with float32 and with bfloat16 storage, timed
    alternately: what the half-size storage buys, with the machine's load reaching
    both alike; the ratio sits in the bfloat16 row. Always both dtypes, whatever
    --dtype says."""
    shape_set = shapes.GPT_TINY if settings.quick else shapes.GPT2_SMALL
    storage = (torch.float32, torch.bfloat16)
    names = [f"{OURS} {dtype_name(d)}" for d in storage]
    tables = []
    for algorithm in (ADAMW, ADAM_L2):
        title = (f"ours, float32 against bfloat16 storage, timed alternately: one "
                 f"{algorithm.name} step, {shape_set.name} shapes ({shape_set.numel:,} params "
                 f"in {shape_set.tensors} tensors), {settings.device}")
        tables.append(Table(scenario="dtypes", title=title, shape_set=shape_set.name,
                            params=shape_set.numel, tensors=shape_set.tensors,
                            dtype=", ".join(dtype_name(d) for d in storage),
                            device=str(settings.device), reference=names[0]))
    notes = []
    param_sets = [_allocate(shape_set, d, settings, notes) for d in storage]
    for table in tables:
        table.notes = list(notes)
    if any(params is None for params in param_sets):
        return tables
    for algorithm, table in zip((ADAMW, ADAM_L2), tables):
        settings.say(f"dtypes: {algorithm.name} {shape_set.name}, "
                     + " and ".join(dtype_name(d) for d in storage))
        ours = next(v for v in variants(algorithm, settings.device) if v.name == OURS)
        optimizers = [ours.make(params) for params in param_sets]
        samples = time_alternately([o.step for o in optimizers], settings.device,
                                   settings.repeats, settings.warmup, refill_ms=REFILL_MS)
        for name, params, optimizer, timed in zip(names, param_sets, optimizers, samples):
            table.rows.append(Row(name, timed, adam_bytes(params),
                                  peak_extra_bytes(optimizer.step, settings.device)))
            settings.say(f"    {name}: median {timed.median:.2f} ms")
        del optimizers
        gc.collect()
    return tables


def small(settings):
    """Many small tensors, where per-tensor overhead, not bandwidth, sets the time."""
    sets = ([shapes.uniform(200, 1024), shapes.uniform(2000, 64)] if settings.quick else
            [shapes.uniform(2000, 1024), shapes.uniform(20000, 64)])
    dtype = settings.dtype or torch.float32
    return [table for shape_set in sets
            for table in _step_tables("small", shape_set, dtype, [ADAMW], settings)]


def scaling(settings):
    """Step time against param count, ours and torch fused, 1M to 1B log-spaced."""
    counts = (shapes.log_spaced(10**5, 10**7, 3) if settings.quick else
              shapes.log_spaced(10**6, 10**9, 7))
    dtype = settings.dtype or torch.float32
    return [table for count in counts
            for table in _step_tables("scaling", shapes.flat(count), dtype, [ADAMW], settings,
                                      only=(OURS, "torch fused"))]


def roofline(settings):
    """The measured memory bandwidth the other tables are compared with."""
    shape_set = shapes.GPT_TINY if settings.quick else shapes.GPT2_SMALL
    dtype = settings.dtype or torch.float32
    table = _new_table("roofline", f"memory roofline: {shape_set.name} shapes, "
                       f"{dtype_name(dtype)}, {settings.device}", shape_set, dtype, settings)
    params = _allocate(shape_set, dtype, settings, table.notes)
    if params is None:
        return [table]
    grads = [p.grad for p in params]
    settings.say("roofline: stream kernels")
    with torch.no_grad():
        if settings.device.type == "cpu":
            samples, moved = flat_stream_kernel(params, settings.repeats, settings.warmup)
            table.rows.append(Row(f"stream_roofline_ ({ADAM_STREAMS} streams)", samples, moved))
            table.roofline_gbps = table.rows[-1].gbps
        samples, moved = copy_kernel(grads, settings.repeats, settings.warmup)
        table.rows.append(Row("copy (2 streams)", samples, moved))
        if table.roofline_gbps is None:
            table.roofline_gbps = roofline_gbps(params, settings.repeats, settings.warmup)
    table.notes.append("fraction = GB/s over the 7-stream kernel on CPU (one buffer per stream, "
                       "as many elements as the tensor set), over a 1 GiB device copy on CUDA")
    return [table]


def window(settings):
    """The end of an accumulation window: clip, step, zero the grads."""
    shape_set = shapes.GPT_TINY if settings.quick else shapes.GPT2_SMALL
    dtype = settings.dtype or torch.float32
    table = _new_table("window", f"end of an accumulation window (clip to norm 1, AdamW step, "
                       f"zero grads), {shape_set.name} shapes, {dtype_name(dtype)}, "
                       f"{settings.device}", shape_set, dtype, settings)
    table.notes.append(f"GB/s counts {WINDOW_STREAMS} streams per param: read g (norm), "
                       "read p, g, m, v, write p, m, v, g (zeroed), each at the param dtype's size")
    params = _allocate(shape_set, dtype, settings, table.notes)
    if params is None:
        return [table]
    # CPU: the roofline kernel is timed in the window ends' turns, as in the step tables.
    roofline = flat_stream_call(params) if settings.device.type == "cpu" else None
    if roofline is None:
        table.roofline_gbps = _measure_roofline(params, settings)
    # Each implementation steps a copy of its own, so that the two are timed alternately.
    torch_params = _allocate(shape_set, dtype, settings, table.notes)
    if torch_params is None:
        return [table]
    for p in params + torch_params:
        p.grad = None  # the window's backward passes produce the grads
    settings.say("window: ours and torch fused, in turns")
    ends = []
    try:
        ends.append(ours_window(params))
        ends.append(torch_window(torch_params))
        table.rows += time_window_ends(ends, params, settings, roofline)
    finally:
        for end in ends:
            end.close()
    if roofline is not None:
        table.roofline_gbps = table.rows[0].roofline_gbps
    for row in table.rows:
        settings.say(f"    {row.variant}: median {row.median_ms:.2f} ms")
    del ends, torch_params, roofline
    gc.collect()
    return [table]


def _mixed_steps(param_sets, numel, settings, notes, held):
    """Ours in each of mixed.MODES and torch's master-weights recipe, over the param set
    of their dtype, each built when its state fits in memory beside the others' and the
    `held` bytes; returns [(step, traffic)], torch's recipe last."""
    built = []
    wanted = [(mode.name, mode.dtype, mode.state_bytes, mode.traffic,
               lambda ps, mode=mode: OursStep(mode, ps)) for mode in MODES]
    wanted.append((TORCH_RECIPE, torch.bfloat16, TORCH_RECIPE_STATE_BYTES,
                   TORCH_RECIPE_TRAFFIC, TorchMasterRecipe))
    for name, dtype, state_bytes, traffic, make in wanted:
        new = state_bytes * numel
        if not fits(new, held + new, settings.device):
            notes.append(f"{name} skipped: its state (about {new / 1e9:.1f} GB) would not "
                         "fit in memory")
            settings.say("  " + notes[-1])
            continue
        held += new
        built.append((make(param_sets[dtype]), traffic))
    return built


def mixed(settings):
    """Ours with bfloat16 params (plain, master weights, Kahan summation, stochastic
    rounding), float32 params with bfloat16 states and plain float32, and torch's recipe
    for master weights, all timed in turns: their times and the memory each holds.
    Always both dtypes, whatever --dtype says."""
    shape_set = shapes.GPT_TINY if settings.quick else shapes.GPT2_SMALL
    where = (f"{shape_set.name} shapes ({shape_set.numel:,} params in {shape_set.tensors} "
             f"tensors), {settings.device}")
    modes = Table(scenario="mixed", title=f"precision modes of ours, timed in turns: one "
                  f"AdamW step, {where}", shape_set=shape_set.name, params=shape_set.numel,
                  tensors=shape_set.tensors, dtype="float32, bfloat16",
                  device=str(settings.device), reference=OURS_FLOAT32)
    master = _new_table("mixed", f"float32 master weights of bfloat16 params: ours "
                        f"(master_weights=True) against torch's recipe, one AdamW step, "
                        f"{where}", shape_set, torch.bfloat16, settings)
    tables = [modes, master]
    notes = [cpu_line()] if settings.device.type == "cpu" else []
    param_sets = {}
    for dtype in (torch.float32, torch.bfloat16):
        param_sets[dtype] = _allocate(shape_set, dtype, settings, notes)
        if param_sets[dtype] is None:
            for table in tables:
                table.notes = list(notes)
            return tables
    settings.say(f"mixed: {shape_set.name}, {len(MODES)} modes of ours and torch's recipe, "
                 "in turns")
    # CPU: the roofline kernel is timed in the same turns, as in the step tables.
    roofline = flat_stream_call(param_sets[torch.float32]) \
        if settings.device.type == "cpu" else None
    held = sum(2 * nbytes(params) for params in param_sets.values()) + \
        (0 if roofline is None else roofline[2])
    built = _mixed_steps(param_sets, shape_set.numel, settings, notes, held)
    calls = [step.step for step, _ in built] + ([] if roofline is None else [roofline[0]])
    if roofline is None:
        for table in tables:
            table.roofline_gbps = _measure_roofline(param_sets[torch.float32], settings)
    timed = time_alternately(calls, settings.device, settings.repeats, settings.warmup,
                             refill_ms=REFILL_MS)
    row_roofline = None if roofline is None else timed[-1].gbps(roofline[1])
    rows = {}
    for (step, traffic), samples in zip(built, timed):
        rows[step.name] = Row(step.name, samples, traffic_bytes(traffic, shape_set.numel),
                              peak_extra_bytes(step.step, settings.device), row_roofline,
                              held_bytes=held_bytes(step.tensors()))
        settings.say(f"    {step.name}: median {samples.median:.2f} ms, "
                     f"{rows[step.name].held_bytes / shape_set.numel:.1f} B/param")
    modes.rows = [rows[mode.name] for mode in MODES if mode.name in rows]
    master.rows = [replace(rows[name], variant=variant)
                   for name, variant in ((OURS_MASTER, OURS), (TORCH_RECIPE, TORCH_RECIPE))
                   if name in rows]
    if row_roofline is not None:
        for table in tables:
            table.roofline_gbps = row_roofline
    modes.notes = notes + [
        "held B/param: the params, their grads and the optimizer's state tensors allocated "
        "after a step, over the param count; the modes of one dtype step the same params "
        "and grads, each with its own optimizer"]
    master.notes = notes + [
        f"ours: FusedAdamW(master_weights=True), the row {OURS_MASTER!r} above. torch's "
        "recipe: a float32 copy of each param with a float32 grad, stepped by "
        "AdamW(fused=True); each step casts the bfloat16 grads into the copies' grads and "
        "the stepped copies back into the params (torch._foreach_copy_), all timed. Both "
        "timed in the same turns as the table above"]
    del built, param_sets, calls, roofline
    gc.collect()
    return tables


# "headline" is the default set's step table alone; "step" is the full matrix.
SCENARIOS = {"headline": headline, "step": step, "dtypes": dtypes, "small": small,
             "window": window, "roofline": roofline, "scaling": scaling, "mixed": mixed}
DEFAULT = (roofline, headline, dtypes, mixed, small, window)
