"""python -m fused_accum.bench.spread RUN.json ...: each ratio over several runs.

A run's ratios are taken from calls timed in turn, but a shared machine's memory
speed still moves them by several percent from one run to the next, more than the
difference between two implementations at the memory roofline. Runs made as separate
processes, minutes apart, and summarised here give the figure worth quoting: the
median over runs, with the lowest and highest beside it.
"""

import argparse
import json
import statistics
import sys

from .report import aligned


class NotABenchRun(ValueError):
    """A file that `python -m fused_accum.bench --json` did not write."""


def load_run(path):
    """The tables of one `python -m fused_accum.bench --json PATH` file."""
    try:
        with open(path) as f:
            run = json.load(f)
    except json.JSONDecodeError as e:
        raise NotABenchRun(f"{path}: not JSON ({e})") from None
    tables = run.get("tables") if isinstance(run, dict) else None
    if not isinstance(tables, list) or not all(
            isinstance(t, dict) and "title" in t and "rows" in t for t in tables):
        raise NotABenchRun(f"{path}: not a `python -m fused_accum.bench --json` file "
                           "(expected a 'tables' list of tables with 'title' and 'rows')")
    return tables


def collect(runs):
    """{table title: {"ratio_column": what the table's ratio says, "rows":
    {variant: {"ratio": [...], "roofline": [...]}}}}, in the order first seen; a
    value a run did not measure (None) is left out."""
    out = {}
    for tables in runs:
        for table in tables:
            collected = out.setdefault(
                table["title"],
                {"ratio_column": table.get("ratio_column", "ratio"), "rows": {}})
            rows = collected["rows"]
            for row in table["rows"]:
                values = rows.setdefault(row["variant"], {"ratio": [], "roofline": []})
                for key, field in (("ratio", "ratio"), ("roofline", "roofline_fraction")):
                    if row.get(field) is not None:
                        values[key].append(row[field])
    return out


def _min_median_max(values, spec):
    if not values:
        return ("-", "-", "-")
    return tuple(format(v, spec) for v in
                 (min(values), statistics.median(values), max(values)))


def text(collected):
    """One aligned table per benchmark table, as `collect` returned them."""
    lines = []
    for title, table in collected.items():
        body = []
        for variant, values in table["rows"].items():
            runs = max(len(values["ratio"]), len(values["roofline"]))
            if runs == 0:
                continue
            body.append((variant, str(runs)) + _min_median_max(values["ratio"], ".2f")
                        + _min_median_max(values["roofline"], ".0%"))
        if not body:
            continue
        lines.append(title)
        header = ("variant", "runs", f"{table['ratio_column']}: min", "median", "max",
                  "of roofline: min", "median", "max")
        lines += aligned([header] + body)
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fused_accum.bench.spread",
        description="Min, median and max over runs of each ratio ('ours faster by', "
                    "'faster than X by') and 'of roofline' figure, from files written by "
                    "`python -m fused_accum.bench --json PATH`.")
    parser.add_argument("runs", nargs="+", metavar="RUN.json")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.runs]
    except (OSError, NotABenchRun) as e:
        parser.error(str(e))
    print(text(collect(runs)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
