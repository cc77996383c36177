"""python -m fused_accum.bench.check_json RUN.json: checks a whole benchmark run.

CI runs the quick benchmark once (.ci/run) and checks its JSON file here: every
scenario ran, every table has rows with positive timings, and each table's derived
numbers (ratios, fractions of the roofline) follow from its own medians as
docs/benchmarks.md defines them. Nothing here judges speed.
"""

import argparse
import json
import math
import sys

from . import mixed
from .scenarios import DEFAULT
from .spread import NotABenchRun, load_run
from .variants import OURS

_TORCH_VARIANTS = ["torch for-loop", "torch foreach", "torch fused"]
_DTYPE_ROWS = ["ours float32", "ours bfloat16"]


def _close(a, b):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)


def _scenario_names(argv):
    """The scenarios a run with these arguments measures."""
    names, taking = [], False
    for arg in argv:
        if arg == "--scenario":
            taking = True
        elif arg.startswith("--"):
            taking = False
        elif taking:
            names.append(arg)
    # "headline" is the default set's step table; its tables carry scenario "step".
    chosen = names or [s.__name__ for s in DEFAULT]
    return {"step" if name == "headline" else name for name in chosen}


def _check_rows(table, problems):
    where = table["title"]
    if not table["rows"]:
        problems.append(f"{where}: no rows ({'; '.join(table.get('notes', []))})")
    for row in table["rows"]:
        name = f"{where}: {row['variant']}"
        if not (row["median_ms"] > 0 and row["gb_per_s"] > 0):
            problems.append(f"{name}: median {row['median_ms']} ms, {row['gb_per_s']} GB/s")
        if not row["min_ms"] <= row["median_ms"] <= row["max_ms"]:
            problems.append(f"{name}: median outside [min, max]")
        roofline = row.get("roofline_gbps") or table.get("roofline_gbps")
        if roofline and not _close(row["roofline_fraction"], row["gb_per_s"] / roofline):
            problems.append(f"{name}: of roofline is not GB/s / the roofline's GB/s")


def _check_step(table, problems):
    where = table["title"]
    names = [r["variant"] for r in table["rows"]]
    notes = " ".join(table.get("notes", []))
    # A variant whose memory would not fit is skipped, and a note says so.
    expected = [OURS] + [v for v in _TORCH_VARIANTS if f"{v} skipped" not in notes]
    if [n for n in names if n in expected] != expected or names[0] != OURS:
        problems.append(f"{where}: rows {names}, expected {expected} first")
    if not (table.get("roofline_gbps") or 0) > 0:
        problems.append(f"{where}: no roofline")
    for row in table["rows"][1:]:
        beside = row.get("ours_beside_ms")
        expected = row["median_ms"] / (beside or table["rows"][0]["median_ms"])
        if not (row["ratio"] and row["ratio"] > 0 and _close(row["ratio"], expected)):
            problems.append(f"{where}: {row['variant']}: ratio {row['ratio']}, expected "
                            "its median / ours' median in its turns")


def _check_dtypes(table, problems):
    where = table["title"]
    names = [r["variant"] for r in table["rows"]]
    if names != _DTYPE_ROWS or table.get("reference") != _DTYPE_ROWS[0]:
        problems.append(f"{where}: rows {names} against {table.get('reference')}, "
                        f"expected {_DTYPE_ROWS} against {_DTYPE_ROWS[0]}")
        return
    fp32, bf16 = table["rows"]
    if fp32["bytes_per_call"] != 2 * bf16["bytes_per_call"]:
        problems.append(f"{where}: bfloat16 does not move half float32's bytes")
    # The ratio sits in the bfloat16 row: how many times faster it is than float32.
    if fp32["ratio"] is not None or not _close(bf16["ratio"],
                                               fp32["median_ms"] / bf16["median_ms"]):
        problems.append(f"{where}: ratio not float32's median / bfloat16's, in the "
                        "bfloat16 row")


def _check_window(table, problems):
    where = table["title"]
    names = [r["variant"] for r in table["rows"]]
    if names != [OURS, "torch fused"]:
        problems.append(f"{where}: rows {names}, expected ours and torch fused")
        return
    ours, torch_end = table["rows"]
    if not ours["roofline_gbps"] == torch_end["roofline_gbps"] == table["roofline_gbps"]:
        problems.append(f"{where}: the two window ends have different rooflines")
    if not _close(torch_end["ratio"], torch_end["median_ms"] / ours["median_ms"]):
        problems.append(f"{where}: ratio not torch's median / ours'")


def _expected_rows(names, notes):
    """`names` less those a note says were skipped (their memory would not fit)."""
    return [n for n in names if f"{n} skipped" not in notes]


def _check_mixed(table, problems):
    """The modes table (ours in each mode against ours float32) or the master-weights
    table (ours against torch's recipe), told apart by their reference row."""
    where = table["title"]
    names = [r["variant"] for r in table["rows"]]
    notes = " ".join(table.get("notes", []))
    if table.get("device") == "cpu" and not any(n.startswith("CPU: ") for n in
                                                table.get("notes", [])):
        problems.append(f"{where}: no note names the CPU")
    for row in table["rows"]:
        held = row.get("held_bytes_per_param")
        if not (held and held > 0 and _close(held, row["held_bytes"] / table["params"])):
            problems.append(f"{where}: {row['variant']}: held B/param {held}, expected its "
                            "held bytes / the param count")
    if table.get("reference") == mixed.OURS_FLOAT32:
        expected = _expected_rows([mode.name for mode in mixed.MODES], notes)
        reference = table["rows"][0] if names and names[0] == mixed.OURS_FLOAT32 else None
    else:
        expected = _expected_rows([OURS, mixed.TORCH_RECIPE], notes)
        reference = table["rows"][0] if names and names[0] == OURS else None
    if names != expected or table.get("reference") not in (mixed.OURS_FLOAT32, OURS):
        problems.append(f"{where}: rows {names} against {table.get('reference')}, expected "
                        f"{expected} against {mixed.OURS_FLOAT32} or {OURS}")
        return
    if reference is None:
        return
    for row in table["rows"][1:]:
        # ours against ours float32: how many times faster the row is; against
        # torch's recipe: how many times faster ours is.
        expected = (reference["median_ms"] / row["median_ms"]
                    if table["reference"] == mixed.OURS_FLOAT32
                    else row["median_ms"] / reference["median_ms"])
        if not _close(row["ratio"], expected):
            problems.append(f"{where}: {row['variant']}: ratio {row['ratio']}, expected "
                            f"{expected}")


_BY_SCENARIO = {"step": _check_step, "small": _check_step, "dtypes": _check_dtypes,
                "window": _check_window, "mixed": _check_mixed}


def problems_of(run):
    """What is wrong with a run as `python -m fused_accum.bench --json` wrote it."""
    problems = []
    meta, tables = run.get("meta", {}), run["tables"]
    argv = meta.get("argv", [])
    if meta.get("quick") != ("--quick" in argv):
        problems.append(f"meta: quick is {meta.get('quick')} for arguments {argv}")
    expected = _scenario_names(argv)
    found = {t["scenario"] for t in tables}
    if found != expected:
        problems.append(f"scenarios {sorted(found)}, expected {sorted(expected)}")
    for table in tables:
        _check_rows(table, problems)
        if table["rows"] and table["scenario"] in _BY_SCENARIO:
            _BY_SCENARIO[table["scenario"]](table, problems)
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fused_accum.bench.check_json",
        description="Checks a file written by `python -m fused_accum.bench --json PATH`: "
                    "every scenario ran and every table is consistent. Judges no speed.")
    parser.add_argument("run", metavar="RUN.json")
    args = parser.parse_args(argv)
    try:
        load_run(args.run)  # what `python -m fused_accum.bench.spread` reads
        with open(args.run) as f:
            run = json.load(f)
    except (OSError, NotABenchRun) as e:
        parser.error(str(e))
    problems = problems_of(run)
    for problem in problems:
        print(f"{args.run}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.run}: {len(run['tables'])} tables checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
