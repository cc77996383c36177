"""Renders Tables: aligned text for the terminal, markdown for the README, JSON.

Text and markdown share one list of cells, so they always show the same numbers.
"""

import json

from .variants import OURS

HEADER = ("variant", "median ms", "IQR ms", "GB/s", "of roofline", "ours in turn ms",
          "ours faster by", "peak extra MB")


LEGEND = (
    "median ms: median over the timed runs after warm-up; IQR: their interquartile range. "
    "GB/s: nominal traffic / median time, 7 streams per param for a step (read p, g, m, v; "
    "write p, m, v) at the param dtype's size (28 bytes/param in float32). "
    "of roofline: GB/s over the roofline's GB/s measured in the same run (in CPU step "
    "and window tables, timed alternately with the row, so both see the machine's load "
    "alike). "
    "ours in turn ms: in step tables, ours' median timed alternately with this row "
    "(where both states fit in memory, or the row steps ours' state); the machine's "
    "speed drifts, so it can differ from ours' own row. ours faster by: this row's "
    "median / ours in turn, else / ours' row; or / the row the caption names. Timed "
    "alternately: in turns, each timed call after 50 ms of untimed calls of its own "
    "(none for calls that long), so it finds the caches as repeated steps leave them; "
    "in window tables, each window end after its own untimed micro-batches instead. "
    "peak extra MB: CPU: peak resident-set growth during one steady-state call "
    "(VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS before); "
    "CUDA: max_memory_allocated growth.")


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _ms(value):
    # Enough digits for both a 20 us small-tensor step and a 5 s 1B step.
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def cells(table):
    """The table's rows as strings, in HEADER's order."""
    rows = []
    for r in table.rows:
        speedup = table.speedup_of_ours(r)
        peak = None if r.peak_extra_bytes is None else r.peak_extra_bytes / 1e6
        rows.append((r.variant, _ms(r.median_ms), f"{_ms(r.samples.q1)}-{_ms(r.samples.q3)}",
                     f"{r.gbps:.1f}", _fmt(table.roofline_fraction(r), ".0%"),
                     "-" if r.ours_beside_ms is None else _ms(r.ours_beside_ms),
                     _fmt(speedup, ".2f") + ("x" if speedup is not None else ""),
                     _fmt(peak, ".0f", "n/a")))
    return rows


def _caption(table):
    lines = [table.title]
    if any(r.roofline_gbps for r in table.rows):
        lines.append(f"roofline: the 7-stream kernel timed alternately with each row, median "
                     f"{table.roofline_gbps:.1f} GB/s; each row's fraction is of its own")
    elif table.roofline_gbps:
        lines.append(f"roofline {table.roofline_gbps:.1f} GB/s, measured in this run")
    if table.reference != OURS:
        lines.append(reference_caption(table.reference))
    return lines


def reference_caption(reference):
    """The caption line of a table whose "ours faster by" divides by another row."""
    return f"ours faster by: how many times faster {reference} is"


def aligned(rows):
    """Rows of cells as text lines: the first column left-aligned, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))) for row in rows]


def text(tables):
    out = []
    for table in tables:
        out += _caption(table)
        body = cells(table)
        if body:
            out += aligned([HEADER] + body)
        out += [f"note: {n}" for n in table.notes]
        out.append("")
    out.append(LEGEND)
    return "\n".join(out)


def markdown(tables):
    """Markdown tables for the README: a caption line, the table, its notes."""
    out = []
    for table in tables:
        out.append("**" + "; ".join(_caption(table)) + "**")
        out.append("")
        body = cells(table)
        if body:
            out.append("| " + " | ".join(HEADER) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|")
            out += ["| " + " | ".join(row) + " |" for row in body]
            out.append("")
        out += [f"- {n}" for n in table.notes]
        out.append("")
    out.append(LEGEND)
    return "\n".join(out) + "\n"


def write_json(path, tables, meta):
    with open(path, "w") as f:
        json.dump(dict(meta=meta, legend=LEGEND, tables=[t.to_dict() for t in tables]), f,
                  indent=1)
        f.write("\n")
