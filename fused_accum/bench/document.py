"""--markdown PATH: the whole of docs/benchmarks.md, methodology included.

The file is written anew by each run (never appended to), so its tables, the machine
they came from and the text that defines them always belong together. The text quotes
the benchmark's own constants, so it cannot drift from what the code measures.
"""

import textwrap

from . import machine, mixed, report, shapes
from .roofline import ADAM_STREAMS, CUDA_BUSY_SECONDS, CUDA_COPY_BYTES, FLAT_ELEMENTS_CAP
from .scenarios import DEFAULT, REFILL_MS
from .variants import LR, OURS, WEIGHT_DECAY
from .window import MICRO_BATCHES, WINDOW_STREAMS

COMMAND = "python -m fused_accum.bench --markdown docs/benchmarks.md"
_WIDTH = 92


def _reflow(text):
    """Fills each paragraph and list item of `text` to _WIDTH columns; headings and
    table rows stay as they are."""
    blocks = []
    for block in text.strip("\n").split("\n\n"):
        lines = block.splitlines()
        if lines[0].startswith(("#", "|")):
            blocks.append(block)
            continue
        items, current = [], []
        for line in lines:
            if line.startswith("- ") and current:
                items.append(current)
                current = []
            current.append(line.strip())
        items.append(current)
        blocks.append("\n".join(
            textwrap.fill(" ".join(item), _WIDTH, subsequent_indent="  "
                          if item[0].startswith("- ") else "",
                          break_on_hyphens=False, break_long_words=False)
            for item in items))
    return "\n\n".join(blocks) + "\n"


def _count(n):
    return f"{n:,}"


def _run_section(meta):
    build = meta.get("fused_accum") or {}
    command = "python -m fused_accum.bench " + " ".join(meta.get("argv") or [])
    lines = [
        "## This run",
        "",
        f"- command: `{command.strip()}`"
        + (" (`--quick`: small shapes, fewer repeats; a smoke run, not a measurement "
           "to quote)" if meta.get("quick") else " (full sizes, not `--quick`)"),
        f"- date (UTC): {meta.get('date', '?')}, {meta.get('wall_s', 0):.0f} s",
        f"- CPU: {meta.get('cpu', '?')}, {meta.get('logical_cpus', '?')} logical CPUs, "
        f"{meta.get('threads', '?')} torch threads; memory {meta.get('memory_gib', '?')} GiB",
        f"- torch {meta.get('torch', '?')}; fused_accum's CPU kernels: "
        f"{machine.cpu_kernels(build)}"
        + (f", CUDA {build.get('cuda_version')} ({build.get('cuda_archs')})"
           if build.get("cuda") else ", without CUDA kernels"),
        f"- device: {meta.get('device', '?')}"
        + (f" ({meta['cuda_device']})" if meta.get("cuda_device") else ""),
        f"- timed runs per measurement: {meta.get('repeats', '?')}, after "
        f"{meta.get('warmup', '?')} warm-up round(s)",
    ]
    return _reflow("\n".join(lines))


def _summary_row(what, ours_ms, theirs_ms):
    return (f"| {what} | {report._ms(ours_ms)} | {report._ms(theirs_ms)} | "
            f"{theirs_ms / ours_ms:.2f}x |")


def summary(tables):
    """The run's headline ratios as one markdown table (the README quotes it): each
    row's ours ms is ours' median in the turns shared with the other row."""
    rows = []
    first_small = next((t for t in tables if t.scenario == "small"), None)
    for table in tables:
        ours = table.row(OURS)
        if table.scenario == "small" and table is not first_small:
            continue  # the full tables have the others
        if table.scenario in ("step", "small") and ours is not None:
            wanted = ("torch fused", "torch foreach") if table.scenario == "step" else \
                ("torch fused",)
            for name in wanted:
                other = table.row(name)
                if other is not None:
                    rows.append(_summary_row(
                        f"AdamW step, {table.shape_set} {table.dtype}, against torch "
                        f"`{name.split()[1]}=True`",
                        other.ours_beside_ms or ours.median_ms, other.median_ms))
        elif (table.scenario == "dtypes" and "one AdamW step" in table.title
              and len(table.rows) == 2):
            fp32, bf16 = table.rows
            rows.append(_summary_row(f"AdamW step, {table.shape_set}: ours in bfloat16, "
                                     "against ours in float32", bf16.median_ms,
                                     fp32.median_ms))
        elif (table.scenario == "mixed" and ours is not None
              and table.row(mixed.TORCH_RECIPE) is not None):
            rows.append(_summary_row(
                f"AdamW step, {table.shape_set} bfloat16 with float32 master weights, "
                "against torch's float32 copy + `fused=True` + `copy_`", ours.median_ms,
                table.row(mixed.TORCH_RECIPE).median_ms))
        elif table.scenario == "window" and ours is not None and table.row("torch fused"):
            rows.append(_summary_row(
                f"window end, {table.shape_set} {table.dtype}, against torch's "
                "`clip_grad_norm_` + fused step + `zero_grad`", ours.median_ms, table.row("torch fused").median_ms))
    if not rows:
        return ""
    return "\n".join(["| comparison | ours ms | theirs ms | ours faster by |",
                      "|---|---:|---:|---:|"] + rows) + "\n"


def _mixed_traffic():
    """The bytes per param each mixed row's GB/s counts, as text."""
    parts = [f"{mixed.traffic_bytes(mode.traffic, 1)} for {mode.name}" for mode in mixed.MODES]
    parts.append(f"{mixed.traffic_bytes(mixed.TORCH_RECIPE_TRAFFIC, 1)} for torch's recipe "
                 "(its casts read and write the grads and the params once more)")
    return ", ".join(parts)


def _methodology():
    return _reflow(_methodology_text())


def _methodology_text():
    gpt2, gpt1b, tiny = shapes.GPT2_SMALL, shapes.GPT_1B, shapes.GPT_TINY
    default = ", ".join(s.__name__ for s in DEFAULT)
    return f"""## What is measured

`python -m fused_accum.bench` (what `make bench` runs) runs the default set of scenarios
({default}); `--scenario NAME ...` picks others (`step` is the full matrix of AdamW and
Adam+L2 over GPT-2-small and 1B shapes in float32 and bfloat16, `scaling` steps 1M to 1B
params). Every optimizer uses lr {LR:g} and weight decay {WEIGHT_DECAY:g}; params are drawn
as a fresh model's (normal, std 0.02) and grads from `randn`, seeded, so every run steps the
same numbers.

- **step** tables: one `step()` of `fused_accum.FusedAdamW` ("ours") against
  `torch.optim.AdamW` with `foreach=False` ("torch for-loop"), `foreach=True` and
  `fused=True`, and with `--peers` DeepSpeedCPUAdam when deepspeed is installed. The
  headline set is GPT-2-small ({_count(gpt2.numel)} params in {gpt2.tensors} tensors);
  the 1B set has {_count(gpt1b.numel)} params in {gpt1b.tensors} tensors; `--quick` uses a
  tiny GPT-2 layout ({_count(tiny.numel)} params in {tiny.tensors} tensors).
- **dtypes** tables: ours with float32 params against ours with bfloat16 params over the
  same shapes, timed in turns: what half-size storage buys on this machine.
- **mixed** tables: ours with float32 params (plain, and with bfloat16 moments:
  `state_dtype=torch.bfloat16`) and with bfloat16 params (plain, `master_weights=True`,
  `kahan_summation=True`, `stochastic_rounding=True`), and torch's recipe for float32
  master weights of bfloat16 params: a float32 copy of every param with a float32 grad,
  stepped by `AdamW(fused=True)`, each step casting the bfloat16 grads into the copies'
  grads and the stepped copies back into the params with `torch._foreach_copy_` (all three
  timed). All seven are timed in turns over the headline shapes; the first table gives
  each of ours against ours in float32, the second ours with master weights against
  torch's recipe. Each row also gives the bytes it holds per param, summed over the
  tensors actually allocated after a step: params, grads, and every tensor of the
  optimizer's state (moments, master weights, compensation, seeds, step counts; torch's
  recipe adds its float32 copies and their grads). A row's GB/s counts the bytes its step
  must move per param, each read and each write of a tensor at its dtype's size:
  {_mixed_traffic()}. The mixed tables name the CPU and the level of the CPU loops chosen at
  run time, on which the bfloat16 rows depend: a bfloat16 step moves half the
  bytes of a float32 one but does the same float32 arithmetic plus the conversions, so on a
  2-core AVX2 machine it is bound by arithmetic, and its ratio to float32 moves with the
  memory's speed at the time.
- **small** tables: thousands of small tensors (2000 x 1024 and 20000 x 64 elements;
  200 x 1024 and 2000 x 64 with `--quick`), where the work per tensor, not the memory,
  sets the time.
- **window** table: the end of an accumulation window. Untimed, {MICRO_BATCHES}
  micro-batches run forward and backward through a model whose loss touches every param;
  then only what ends the window is timed. Ours: `GradAccumulator.step()` (one pass that
  takes the gradient norm, then one fused step pass that applies the normalisation and the
  clip coefficient and zeroes the grads). Torch's recipe:
  `clip_grad_norm_(foreach=True)` + `AdamW(fused=True).step()` +
  `zero_grad(set_to_none=False)`. Each steps its own copy of the params, so the two are
  timed in turns.
- **roofline** table: the 7-stream kernel below and a 2-stream copy, alone.

## How it is timed

- One sample is one call, timed with `time.perf_counter` on the CPU, and on CUDA between
  two events recorded after a `synchronize`. Every call is long against the timer's
  resolution, so samples are not averaged: the spread between them stays visible.
- Each measurement runs warm-up rounds first (2 by default, 1 with `--quick`), then timed
  rounds (5 by default, 3 with `--quick`; `--warmup`, `--repeats`). A table reports the
  **median** of the timed samples and their interquartile range (**IQR**, inclusive
  quartiles, so it stays within the fastest and slowest sample).
- **Timing in turns.** A shared machine's memory speed moves by tens of percent from one
  minute to the next, more than the difference between two implementations at the
  memory roofline. So the calls a ratio compares are timed in turns: each round calls
  each of them once, and a change of the machine's speed reaches them alike. Before each
  timed call, untimed calls of the same function run until {REFILL_MS:g} ms have passed
  (none for a call longer than that), so that the timed call finds the caches as a loop
  of its own steps leaves them, not as the other function left them. In the window table,
  each timed window end follows its own untimed micro-batches instead.
- In a step table ours is timed first; then each other implementation is timed in turns
  with ours and with the roofline kernel. Its ratio divides its median by ours' median
  in those same turns (the "ours in turn ms" column), which can differ from ours' own
  row, timed earlier. At most two optimizer states are held at once. Where two states do
  not fit in memory (the 1B set), torch's implementations step ours' state tensors in
  their turns, and DeepSpeedCPUAdam steps dicts of its own that hold ours' two moments;
  an implementation that fits in neither way is skipped, and the table's notes say so.
- A run's ratios still move by several percent from one run to the next. To quote one,
  make several runs minutes apart with `--json run_N.json` and summarise them with
  `python -m fused_accum.bench.spread run_*.json`, which prints each ratio's minimum,
  median and maximum over the runs.

## The roofline

On the CPU the roofline is the extension's `torch.ops.fused_accum_bench.stream_roofline_`
operator: it moves the same {ADAM_STREAMS} streams as an Adam step (reads p, g, m and v; writes p,
m and v) in one parallel region, with one add per element, over one contiguous buffer per
stream holding as many elements as the tensor set (at most {_count(FLAT_ELEMENTS_CAP)}).
It is what the bytes cost with no per-tensor work at all. In step and window tables it is
timed in turns with every row, so each row has a roofline of its own; the caption gives
their median. It is a measured yardstick, not a bound: a step can run somewhat above it. On CUDA the roofline is the copy bandwidth of a {CUDA_COPY_BYTES >> 30} GiB float32
buffer, measured once per run after {CUDA_BUSY_SECONDS:g} s of copies have taken the GPU
out of its idle clocks.

## Columns

| column | definition |
|---|---|
| median ms | median time of one call over the timed samples |
| IQR ms | first to third quartile of the timed samples |
| GB/s | nominal traffic / median time. A step moves {ADAM_STREAMS} streams per param at the param dtype's size (28 bytes per param in float32, 14 in bfloat16); a window end {WINDOW_STREAMS} (the norm reads g once more, and g is written back as zeros). Temporaries an implementation adds are not counted |
| of roofline | the row's GB/s / the roofline's GB/s, each row against the roofline timed in its own turns where the caption says so |
| ours in turn ms | step tables: ours' median in the turns it shared with this row |
| ours faster by | this row's median / ours' median (in turn, where that column is filled): above 1, ours is faster |
| faster than X by | the median of row X / this row's median: above 1, this row is faster than X |
| held B/param | mixed tables: bytes of the params, their grads and the optimizer's state tensors, as allocated after a step (each storage once), over the param count |
| peak extra MB | CPU: growth of the process's resident set during one steady-state call, read as VmHWM after resetting it through `/proc/self/clear_refs`, minus VmRSS before the call (temporaries, first touches); CUDA: growth of `torch.cuda.max_memory_allocated` |

A column no row of a table fills is left out of that table.
"""


def markdown(tables, meta):
    """The whole of docs/benchmarks.md for this run's tables."""
    return "\n".join([
        "# Benchmarks",
        "",
        _reflow(f"Generated by `{COMMAND}`, which runs the default set of benchmarks "
                "(what `make bench` runs) and rewrites this whole file, text and tables, "
                "from that run. Edit `fused_accum/bench/document.py`, not this file."),
        _run_section(meta),
        "## Summary",
        "",
        summary(tables),
        _methodology(),
        "## Tables",
        "",
        report.markdown_tables(tables),
        "## Legend",
        "",
        report.markdown_legend(),
    ])
