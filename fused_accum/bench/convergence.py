"""python -m fused_accum.bench.convergence: a small training run in bfloat16.

One model, one data set, one recipe, trained once per way of keeping its weights:

- float32: the model in float32, stepped by torch.optim.AdamW(fused=True) (the reference);
- bfloat16: the model in bfloat16 (forward and backward too), FusedAdamW with no option:
  a step smaller than half a bfloat16 ulp of a weight is lost in the rounding;
- bfloat16 with FusedAdamW(master_weights=True), (kahan_summation=True) and
  (stochastic_rounding=True), the three ways to keep those small steps.

The model is an MLP with BatchNorm (features -> hidden -> BN -> ReLU -> hidden -> BN ->
ReLU -> classes); the data, a fixed set of Gaussian inputs labelled by a fixed random
teacher network, is one full batch, so every step sees the same loss function. The loss
is computed in float32 from the logits. Everything is seeded and runs on the CPU in
one thread, so a run repeats its numbers.

`--svg PATH` writes the loss curves as an SVG plot (drawn here: no plotting library);
stdout gets a markdown table of the final losses.
"""

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field, replace
from xml.sax.saxutils import escape

import torch
import torch.nn.functional as F

import fused_accum

from .plot import log_ticks

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
MASTER = "bfloat16 + master_weights"
KAHAN = "bfloat16 + kahan_summation"
ROUNDING = "bfloat16 + stochastic_rounding"
VARIANTS = (FLOAT32, BFLOAT16, MASTER, KAHAN, ROUNDING)
_OPTIONS = {BFLOAT16: {}, MASTER: dict(master_weights=True),
            KAHAN: dict(kahan_summation=True), ROUNDING: dict(stochastic_rounding=True)}


@dataclass(frozen=True)
class Config:
    """What is trained, on what, and how long."""
    samples: int = 256
    features: int = 32
    hidden: int = 128
    classes: int = 10
    teacher_hidden: int = 64
    steps: int = 300
    lr: float = 3e-4
    weight_decay: float = 1e-2
    seed: int = 0
    threads: int = 1   # small matrices: one thread is as fast, and results repeat anywhere

    def describe(self):
        """Two lines: the model and data; the optimizer and the run."""
        return (f"MLP {self.features}-{self.hidden}-BN-ReLU-{self.hidden}-BN-ReLU-"
                f"{self.classes}, full batch of {self.samples} samples labelled by a fixed "
                f"random teacher network",
                f"AdamW, lr {self.lr:g}, weight decay {self.weight_decay:g}, betas "
                f"(0.9, 0.999), {self.steps} steps")


# The docs' plot (docs/low_precision_convergence.svg); `--quick` and the tests run QUICK.
DOCS = Config()
QUICK = Config(hidden=64, steps=200, lr=5e-4)


@dataclass
class Run:
    variant: str
    losses: list = field(default_factory=list)  # losses[i]: after i steps
    seconds: float = 0.0

    @property
    def final(self):
        return self.losses[-1]


def make_data(config):
    """Inputs and labels, drawn from a generator of their own: the same for every run."""
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.samples, config.features, generator=generator)
    w1 = torch.randn(config.features, config.teacher_hidden, generator=generator)
    w2 = torch.randn(config.teacher_hidden, config.classes, generator=generator)
    logits = torch.tanh(x @ w1 / math.sqrt(config.features)) @ w2
    return x, logits.argmax(dim=1)


def make_model(config):
    """The student, with torch's default initialisation, seeded."""
    torch.manual_seed(config.seed + 1)
    return torch.nn.Sequential(
        torch.nn.Linear(config.features, config.hidden), torch.nn.BatchNorm1d(config.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(config.hidden, config.hidden), torch.nn.BatchNorm1d(config.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(config.hidden, config.classes))


def make_optimizer(variant, params, config):
    hyper = dict(lr=config.lr, weight_decay=config.weight_decay)
    if variant == FLOAT32:
        return torch.optim.AdamW(params, fused=True, **hyper)
    return fused_accum.FusedAdamW(params, **hyper, **_OPTIONS[variant])


@contextlib.contextmanager
def _threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(variant, config):
    """One training run; returns its Run, with config.steps + 1 losses."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    dtype = torch.float32 if variant == FLOAT32 else torch.bfloat16
    x, y = make_data(config)
    model = make_model(config).to(dtype)
    x = x.to(dtype)
    # Stochastic rounding seeds its stream from torch's generator at the first step.
    torch.manual_seed(config.seed + 2)
    optimizer = make_optimizer(variant, model.parameters(), config)
    run = Run(variant)
    start = time.perf_counter()
    with _threads(config.threads):
        for step in range(config.steps + 1):
            loss = F.cross_entropy(model(x).float(), y)
            run.losses.append(loss.item())
            if step == config.steps:
                break
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    run.seconds = time.perf_counter() - start
    return run


def train_all(config, variants=VARIANTS, progress=None):
    runs = []
    for variant in variants:
        runs.append(train(variant, config))
        if progress is not None:
            progress(f"{variant}: final loss {runs[-1].final:.4f} ({runs[-1].seconds:.1f} s)")
    return runs


def markdown_table(runs):
    """Final losses, and each against float32's when that run is present."""
    reference = next((r for r in runs if r.variant == FLOAT32), None)
    lines = ["| variant | final loss | against float32 |", "|---|---:|---:|"]
    for run in runs:
        ratio = "-" if reference is None or run is reference else \
            f"{run.final / reference.final:.2f}x"
        lines.append(f"| {run.variant} | {run.final:.4f} | {ratio} |")
    return "\n".join(lines) + "\n"


# ---- the SVG plot ------------------------------------------------------------------

_WIDTH, _HEIGHT = 760, 460
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 62, 60  # margins around the plot area
_COLORS = {FLOAT32: "#000000", BFLOAT16: "#d62728", MASTER: "#1f77b4",
           KAHAN: "#2ca02c", ROUNDING: "#ff7f0e"}
_DASHES = {FLOAT32: "6,4"}  # the reference, dashed, so the lines on top of it show


def _step_ticks(steps):
    """Multiples of 1, 2 or 5 times a power of ten, at most about eight of them."""
    for e in range(0, 10):
        for m in (1, 2, 5):
            spacing = m * 10 ** e
            if steps / spacing <= 8:
                return list(range(0, steps + 1, spacing))
    return [0, steps]


def svg(runs, title, subtitle=()):
    """The loss curves as an SVG document: loss (log scale) against step."""
    steps = max(len(r.losses) for r in runs) - 1
    values = [v for r in runs for v in r.losses]
    low, high = min(values) / 1.15, max(values) * 1.15
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def x_of(step):
        return _LEFT + plot_w * step / steps

    def y_of(loss):
        return _TOP + plot_h * (math.log(high) - math.log(loss)) / (math.log(high) - math.log(low))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
           f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
           f'<text x="{_WIDTH / 2}" y="20" text-anchor="middle" font-size="14">'
           f'{escape(title)}</text>']
    for i, line in enumerate(subtitle):
        out.append(f'<text x="{_WIDTH / 2}" y="{34 + 12 * i}" text-anchor="middle" '
                   f'font-size="10" fill="#555">{escape(line)}</text>')
    for tick in log_ticks(low, high):
        y = y_of(tick)
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" '
                   'stroke="#e0e0e0"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for tick in _step_ticks(steps):
        x = x_of(tick)
        out.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_TOP + plot_h}" '
                   'stroke="#f0f0f0"/>')
        out.append(f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">'
                   f'{tick}</text>')
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" '
               'fill="none" stroke="black"/>')
    out.append(f'<text x="{_LEFT + plot_w / 2}" y="{_HEIGHT - 18}" text-anchor="middle">'
               'step</text>')
    out.append(f'<text transform="translate(18 {_TOP + plot_h / 2}) rotate(-90)" '
               'text-anchor="middle">training loss (cross-entropy, log scale)</text>')
    # float32, the reference, is drawn last, dashed: the lines under it show.
    for run in sorted(runs, key=lambda r: r.variant == FLOAT32):
        points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(run.losses))
        dash = _DASHES.get(run.variant)
        out.append(f'<polyline points="{points}" fill="none" stroke-width="1.6" '
                   f'stroke="{_COLORS.get(run.variant, "#7f7f7f")}"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + '/>')
    # The legend, in the lower left corner, where the curves start high.
    row_h, legend_w = 18, 330
    x0, y0 = _LEFT + 12, _TOP + plot_h - 12 - row_h * len(runs)
    out.append(f'<rect x="{x0}" y="{y0}" width="{legend_w}" height="{row_h * len(runs) + 8}" '
               'fill="white" stroke="#999"/>')
    for i, run in enumerate(runs):
        y = y0 + 4 + row_h * i + row_h / 2
        dash = _DASHES.get(run.variant)
        out.append(f'<line x1="{x0 + 8}" y1="{y:.1f}" x2="{x0 + 38}" y2="{y:.1f}" '
                   f'stroke-width="2" stroke="{_COLORS.get(run.variant, "#7f7f7f")}"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + '/>')
        out.append(f'<text x="{x0 + 46}" y="{y + 4:.1f}">{escape(run.variant)}: final '
                   f'{run.final:.4f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fused_accum.bench.convergence",
        description="Trains a small MLP with BatchNorm in float32 and in bfloat16 (plain, "
                    "master weights, Kahan summation, stochastic rounding) and prints the "
                    "final losses as a markdown table.")
    parser.add_argument("--svg", metavar="PATH", help="write the loss curves as an SVG plot")
    parser.add_argument("--quick", action="store_true",
                        help="the tests' shorter run (narrower model, fewer steps)")
    parser.add_argument("--steps", type=int, help="steps instead of the run's own")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DOCS
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be positive, got {args.steps}")
        config = replace(config, steps=args.steps)
    start = time.perf_counter()
    runs = train_all(config, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{'; '.join(config.describe())}; CPU, {config.threads} thread(s), "
          f"{time.perf_counter() - start:.0f} s\n")
    print(markdown_table(runs), end="")
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg(runs, "AdamW in bfloat16: training loss against step",
                        config.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
