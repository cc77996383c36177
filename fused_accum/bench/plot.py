"""--plot: one panel per table (GB/s per variant against the roofline) and one
log-log panel of step time against param count for the scaling scenario."""


def import_pyplot():
    """matplotlib.pyplot without a display, or SystemExit saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bandwidth_panel(ax, table):
    names = [r.variant for r in table.rows]
    ax.barh(names, [r.gbps for r in table.rows], color="tab:blue")
    if table.roofline_gbps:
        ax.axvline(table.roofline_gbps, color="tab:red", linestyle="--", label="roofline")
        ax.legend(loc="lower right", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("effective GB/s")
    ax.set_title(table.title, fontsize=8, wrap=True)


def _scaling_panel(ax, tables):
    by_variant = {}
    for table in tables:
        for r in table.rows:
            by_variant.setdefault(r.variant, []).append((table.params, r.median_ms))
    for variant, points in by_variant.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=variant)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("params")
    ax.set_ylabel("ms per step (median)")
    ax.set_title("scaling: one AdamW step", fontsize=8)
    ax.legend(fontsize=7)


def write_plot(path, tables):
    plt = import_pyplot()
    scaling = [t for t in tables if t.scenario == "scaling" and t.rows]
    others = [t for t in tables if t.scenario != "scaling" and t.rows]
    panels = len(others) + (1 if scaling else 0)
    if panels == 0:
        raise SystemExit("--plot: no measured tables to plot")
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), squeeze=False)
    for ax, table in zip(axes[:, 0], others):
        _bandwidth_panel(ax, table)
    if scaling:
        _scaling_panel(axes[-1, 0], scaling)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
