"""python -m fused_accum.bench: time fused_accum's optimizers against torch.optim.

With no arguments, runs the default set (the roofline, the headline AdamW step table
on GPT-2-small shapes, our float32 step against our bfloat16 one, our precision modes
and torch's master-weights recipe, small tensors, the end of an accumulation window)
and prints text tables on stdout, progress on stderr. `--markdown docs/benchmarks.md`
writes the whole of that file: methodology and tables.
"""

import argparse
import datetime
import os
import sys
import time

import torch

import fused_accum

from . import document, machine, report
from .progress import Progress
from .scenarios import DEFAULT, SCENARIOS, Settings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text):
    return 0 if text.strip() == "0" else _positive_int(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fused_accum.bench",
        description="Benchmarks fused_accum's Adam/AdamW against torch.optim. "
                    "Times are medians over --repeats runs after --warmup runs. To "
                    "quote a ratio from a shared machine, make several runs with --json "
                    "and summarise them: python -m fused_accum.bench.spread RUN.json ...")
    parser.add_argument("--scenario", nargs="+", action="extend", choices=sorted(SCENARIOS),
                        metavar="NAME", help="scenarios to run instead of the default set: "
                        + ", ".join(sorted(SCENARIOS)))
    parser.add_argument("--dtype", choices=sorted(_DTYPES),
                        help="param dtype (default: float32; `step` runs both when unset; "
                             "`dtypes` always compares both)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--peers", action="store_true",
                        help="also time DeepSpeedCPUAdam when deepspeed is importable")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--markdown", metavar="PATH",
                        help="write the whole of docs/benchmarks.md (methodology, this run's "
                             "machine and tables) to PATH, replacing it")
    parser.add_argument("--plot", metavar="PATH.png", help="write a plot (needs matplotlib)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, a few seconds: a smoke run for CI")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed runs per measurement (default 5, 3 with --quick)")
    parser.add_argument("--warmup", type=_non_negative_int, default=None,
                        help="untimed runs first (default 2, 1 with --quick)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser, args):
    """Fails before minutes of measuring, not after."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch "
                     f"({torch.__version__}); use --device cpu")
    if args.device == "cuda" and not fused_accum.build_info()["cuda"]:
        parser.error("--device cuda: fused_accum was built without its CUDA kernels")
    for option in ("json", "markdown", "plot"):
        path = getattr(args, option)
        if path is not None:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                parser.error(f"--{option} {path}: folder {folder} does not exist")
    if args.plot is not None:
        from .plot import import_pyplot
        import_pyplot()


def run(args):
    settings = Settings(
        device=torch.device(args.device),
        dtype=_DTYPES[args.dtype] if args.dtype else None,
        repeats=args.repeats or (3 if args.quick else 5),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        quick=args.quick, peers=args.peers, progress=Progress())
    chosen = [SCENARIOS[name] for name in dict.fromkeys(args.scenario)] if args.scenario \
        else list(DEFAULT)
    tables = []
    for scenario in chosen:
        tables += scenario(settings)
    return settings, tables


def meta(argv, settings, started, wall_s):
    return dict(
        argv=list(argv), torch=torch.__version__, fused_accum=fused_accum.build_info(),
        device=str(settings.device), threads=torch.get_num_threads(),
        cpu=machine.cpu_model(), logical_cpus=os.cpu_count(), memory_gib=machine.memory_gib(),
        quick=settings.quick, repeats=settings.repeats, warmup=settings.warmup,
        date=started.strftime("%Y-%m-%d %H:%M"), wall_s=wall_s,
        cuda_device=torch.cuda.get_device_name() if settings.device.type == "cuda" else None)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.monotonic()
    settings, tables = run(args)
    run_meta = meta(argv, settings, started, time.monotonic() - start)
    print(report.text(tables))
    if args.json:
        report.write_json(args.json, tables, run_meta)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(document.markdown(tables, run_meta))
    if args.plot:
        from .plot import write_plot
        write_plot(args.plot, tables)


if __name__ == "__main__":
    main()
