"""--plot: one panel per table (GB/s per variant against the roofline, each bar
labelled with its time) and one log-log panel of step time against param count,
with the roofline's time, for the scaling scenario."""

import math
import textwrap

from .report import _ms
from .shapes import human_count
from .variants import OURS

_OURS_COLOR = "tab:orange"
_OTHER_COLOR = "tab:blue"
_ROOFLINE_COLOR = "tab:red"
# Inches: a bar panel's height grows with its rows, so a two-row table takes
# less room than a five-row one; the frame is its title and x axis.
_BAR_ROW_HEIGHT = 0.32
_PANEL_FRAME_HEIGHT = 1.3
_SCALING_HEIGHT = 4.0
_TITLE_CHARS = 120  # matplotlib does not wrap titles under tight_layout


def import_pyplot():
    """matplotlib.pyplot without a display, or SystemExit saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _title(ax, text):
    ax.set_title(textwrap.fill(text, _TITLE_CHARS), fontsize=8)


def _bandwidth_panel(ax, table):
    names = [r.variant for r in table.rows]
    gbps = [r.gbps for r in table.rows]
    colors = [_OURS_COLOR if name == OURS else _OTHER_COLOR for name in names]
    ax.barh(names, gbps, color=colors)
    # The time is what a reader compares; GB/s alone hides it.
    for y, r in enumerate(table.rows):
        ax.text(r.gbps, y, f" {_ms(r.median_ms)} ms, {r.gbps:.1f} GB/s", va="center",
                fontsize=7, bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    right = max(gbps)
    xlabel = "effective GB/s"
    if table.roofline_gbps:
        ax.axvline(table.roofline_gbps, color=_ROOFLINE_COLOR, linestyle="--")
        right = max(right, table.roofline_gbps)
        # Said in the axis label: a legend box would sit on top of the bars.
        xlabel += (f"   (red dashed line: roofline, {table.roofline_gbps:.1f} GB/s "
                   "measured in this run)")
    ax.set_xlim(0, right * 1.45)  # room for the labels right of the longest bar
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)
    _title(ax, table.title)


def log_ticks(low, high):
    """At least three round ticks between low and high (> 0): decades, else 1-2-5, ..."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** e for e in decades for m in mantissas
                 if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 3:
            break
    return ticks


def _scaling_panel(ax, tables):
    from matplotlib import ticker

    by_variant = {}
    roofline = []
    for table in tables:
        for r in table.rows:
            by_variant.setdefault(r.variant, []).append((table.params, r.median_ms))
        if table.roofline_gbps:
            # The time a step would take moving its bytes at the measured bandwidth.
            roofline.append((table.params, table.rows[0].bytes_per_call
                             / table.roofline_gbps / 1e6))
    for variant, points in by_variant.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=variant,
                color=_OURS_COLOR if variant == OURS else None)
    if roofline:
        xs, ys = zip(*sorted(roofline))
        ax.plot(xs, ys, color=_ROOFLINE_COLOR, linestyle="--",
                label="roofline (the step's bytes at the measured GB/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: human_count(x)))
    # Plain numbers: matplotlib's own log labels read 2x10^1, or name one tick only
    # when the times span less than a decade.
    ax.set_yticks(log_ticks(*ax.get_ylim()))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("params", fontsize=8)
    ax.set_ylabel("ms per step (median)", fontsize=8)
    ax.tick_params(labelsize=8)
    first = tables[0]
    _title(ax, f"scaling: one AdamW step against param count, {first.dtype}, {first.device}")
    ax.legend(fontsize=7)


def write_plot(path, tables):
    plt = import_pyplot()
    scaling = [t for t in tables if t.scenario == "scaling" and t.rows]
    others = [t for t in tables if t.scenario != "scaling" and t.rows]
    heights = [_PANEL_FRAME_HEIGHT + _BAR_ROW_HEIGHT * len(t.rows) for t in others]
    if scaling:
        heights.append(_SCALING_HEIGHT)
    if not heights:
        raise SystemExit("--plot: no measured tables to plot")
    fig, axes = plt.subplots(len(heights), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    for ax, table in zip(axes[:, 0], others):
        _bandwidth_panel(ax, table)
    if scaling:
        _scaling_panel(axes[-1, 0], scaling)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
