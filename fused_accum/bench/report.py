"""Renders Tables: aligned text for the terminal, markdown for docs/benchmarks.md, JSON.

Text and markdown share one list of cells, so they always show the same numbers.
"""

import json


RATIO = "ratio"  # stands for the table's own ratio column (Table.ratio_column)
COLUMNS = ("variant", "median ms", "IQR ms", "GB/s", "of roofline", "ours in turn ms",
           RATIO, "held B/param", "peak extra MB")
_EMPTY = ("-", "n/a")

# A few lines under the tables; docs/benchmarks.md holds the full definitions.
LEGEND = (
    ("median ms", "median time of one call over the timed runs (IQR ms: their middle half)"),
    ("GB/s", "bytes a step must move / median time: 7 streams (p, g, m, v in; p, m, v out)"),
    ("of roofline", "GB/s / GB/s of a kernel that only moves those bytes, timed in turns"),
    ("ours in turn ms", "ours' median in the turns it shared with this row"),
    ("ours faster by", "this row's time / ours' (in its turns): above 1, ours is faster"),
    ("faster than X by", "X's time / this row's time: above 1, this row is faster than X"),
    ("held B/param", "bytes allocated per param: params, grads and optimizer state"),
    ("peak extra MB", "memory one call takes beyond what it already holds"),
)
LEGEND_TITLE = "Legend (full definitions: docs/benchmarks.md)"


def legend_lines():
    width = max(len(name) for name, _ in LEGEND)
    return [f"  {name.ljust(width)}  {meaning}" for name, meaning in LEGEND]


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _ms(value):
    # Enough digits for both a 20 us small-tensor step and a 5 s 1B step.
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _all_cells(table):
    rows = []
    for r in table.rows:
        ratio = table.ratio(r)
        peak = None if r.peak_extra_bytes is None else r.peak_extra_bytes / 1e6
        held = table.held_bytes_per_param(r)
        rows.append((r.variant, _ms(r.median_ms), f"{_ms(r.samples.q1)}-{_ms(r.samples.q3)}",
                     f"{r.gbps:.1f}", _fmt(table.roofline_fraction(r), ".0%"),
                     "-" if r.ours_beside_ms is None else _ms(r.ours_beside_ms),
                     _fmt(ratio, ".2f") + ("x" if ratio is not None else ""),
                     _fmt(held, ".1f"), _fmt(peak, ".0f", "n/a")))
    return rows


def cells(table):
    """(header, rows of cells): COLUMNS with the table's own ratio header, less the
    columns no row of this table fills."""
    rows = _all_cells(table)
    header = tuple(table.ratio_column if c == RATIO else c for c in COLUMNS)
    keep = [i for i in range(len(COLUMNS))
            if i <= 1 or any(row[i] not in _EMPTY for row in rows)]
    return (tuple(header[i] for i in keep), [tuple(row[i] for i in keep) for row in rows])


def _caption(table):
    lines = [table.title]
    if any(r.roofline_gbps for r in table.rows):
        lines.append(f"roofline: the 7-stream kernel timed in turns with each row, median "
                     f"{table.roofline_gbps:.1f} GB/s; each row's fraction is of its own")
    elif table.roofline_gbps:
        lines.append(f"roofline {table.roofline_gbps:.1f} GB/s, measured in this run")
    return lines


def aligned(rows):
    """Rows of cells as text lines: the first column left-aligned, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def text(tables):
    out = []
    for table in tables:
        out += _caption(table)
        header, body = cells(table)
        if body:
            out += aligned([header] + body)
        out += [f"note: {n}" for n in table.notes]
        out.append("")
    out.append(LEGEND_TITLE)
    out += legend_lines()
    return "\n".join(out)


def markdown_tables(tables):
    """Each table as markdown: a caption line, the table, its notes."""
    out = []
    for table in tables:
        out.append("**" + "; ".join(_caption(table)) + "**")
        out.append("")
        header, body = cells(table)
        if body:
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
            out += ["| " + " | ".join(row) + " |" for row in body]
            out.append("")
        out += [f"- {n}" for n in table.notes]
        if table.notes:
            out.append("")
    return "\n".join(out)


def markdown_legend():
    return "\n".join(["| column | meaning |", "|---|---|"]
                     + [f"| {name} | {meaning} |" for name, meaning in LEGEND]) + "\n"


def write_json(path, tables, meta):
    with open(path, "w") as f:
        json.dump(dict(meta=meta, legend=dict(LEGEND), tables=[t.to_dict() for t in tables]),
                  f, indent=1)
        f.write("\n")
