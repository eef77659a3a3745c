"""Tables 1-2 and Figure 2 of *Backdoor Attacks Against Patch-based Mixture of Experts*.

The paper's own numbers (its Tables 1 and 2, % , means of 5 runs) stand here
so that each regenerated table can show them beside ours.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..reporting import mean_std
from .attacks import TRIGGERS
from .datasets import load_dataset, to_tensor
from .triggers import make_trigger

# (poison rate %) -> trigger -> (ASR, BA, CAD), from the paper's Tables 1 and 2
PAPER = {
    "cifar10": {
        0.1: {"square": (30.1, 83.8, 1.2), "blend": (98.3, 83.5, 1.5), "warp": (3.5, 83.9, 1.1)},
        0.5: {"square": (90.7, 83.5, 1.5), "blend": (99.6, 83.3, 1.7), "warp": (8.2, 83.8, 1.6)},
        2.0: {"square": (96.6, 83.2, 1.8), "blend": (99.9, 83.5, 1.5), "warp": (24.5, 83.0, 2.0)},
        6.0: {"square": (97.4, 83.1, 1.9), "blend": (99.9, 83.2, 1.8), "warp": (54.9, 82.1, 3.0)},
        10.0: {"square": (99.1, 82.7, 2.3), "blend": (100.0, 82.1, 1.9), "warp": (93.8, 82.7, 2.9)},
    },
    "gtsrb": {
        0.1: {"square": (41.0, 97.8, 0.2), "blend": (94.7, 97.1, 0.9), "warp": (0.3, 97.0, 1.0)},
        0.5: {"square": (98.2, 97.5, 0.5), "blend": (99.2, 97.2, 0.8), "warp": (20.1, 97.2, 0.8)},
        2.0: {"square": (99.7, 97.4, 0.6), "blend": (100.0, 97.0, 1.0), "warp": (45.5, 97.1, 0.9)},
        6.0: {"square": (99.8, 97.5, 0.5), "blend": (100.0, 97.0, 1.0), "warp": (77.4, 97.0, 1.0)},
        10.0: {"square": (99.8, 96.9, 1.1), "blend": (100.0, 96.5, 1.5), "warp": (91.6, 96.6, 1.4)},
    },
}
# clean accuracy implied by BA + CAD (not stated in the paper)
PAPER_CLEAN_ACCURACY = {"cifar10": 85.0, "gtsrb": 98.0}
TABLE_IDS = {"cifar10": "pmoe-table1-cifar10", "gtsrb": "pmoe-table2-gtsrb"}
COLUMNS = ["trigger", "poison_rate", "asr", "ba", "cad", "paper_asr", "paper_ba", "paper_cad"]


def paper_table(dataset: str) -> pd.DataFrame:
    rows = [{"trigger": t, "poison_rate": rate, "paper_asr": v[0], "paper_ba": v[1], "paper_cad": v[2]}
            for rate, by_trigger in PAPER[dataset].items() for t, v in by_trigger.items()]
    return pd.DataFrame(rows)


def attack_table(results: pd.DataFrame, dataset: str, arch: str = "pmoe") -> pd.DataFrame:
    """ASR/BA/CAD per trigger and poison rate (means over seeds) beside the paper's.

    Rows cover the paper's rates and ours; a rate not run at this profile has no value of ours.
    Columns ``*_std`` and ``seeds`` follow the CSV columns of the issue.
    """
    ours = results[(results.dataset == dataset) & (results.arch == arch) & (results.trigger != "clean")]
    agg = ours.groupby(["trigger", "poison_rate"]).agg(
        asr=("asr", "mean"), ba=("ba", "mean"), cad=("cad", "mean"),
        asr_std=("asr", "std"), ba_std=("ba", "std"), cad_std=("cad", "std"),
        seeds=("seed", "nunique")).reset_index()
    table = agg.merge(paper_table(dataset), on=["trigger", "poison_rate"], how="outer")
    table["seeds"] = table["seeds"].fillna(0).astype(int)
    order = {t: i for i, t in enumerate(TRIGGERS)}
    table = table.sort_values(["trigger", "poison_rate"], key=lambda s: s.map(order) if s.name == "trigger" else s)
    return table[COLUMNS + ["asr_std", "ba_std", "cad_std", "seeds"]].reset_index(drop=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the book shows it: ours (mean ± std) beside the paper's, per trigger."""
    out = pd.DataFrame({"trigger": table.trigger, "poison rate %": table.poison_rate})
    for m in ("asr", "ba", "cad"):
        out[f"{m.upper()} ours"] = [mean_std(a, s, n) for a, s, n in
                                    zip(table[m], table[f"{m}_std"], table.seeds)]
        out[f"{m.upper()} paper"] = table[f"paper_{m}"].map(lambda v: "—" if pd.isna(v) else f"{v:.1f}")
    return out.set_index(["trigger", "poison rate %"])


def figure2_triggers(n_images: int = 1, seed: int = 0, warp_variant: str = "authors",
                     indices: dict | None = None):
    """Figure 2: each trigger on a CIFAR-10 and a GTSRB test image.

    The warp moves pixels by at most about one, so a last column shows
    |warped - clean|, magnified, to make it visible.
    """
    indices = indices or {"cifar10": 7, "gtsrb": 12}
    triggers = {"square": make_trigger("square"), "blend": make_trigger("blend"),
                "warp": make_trigger("warp", seed=seed, variant=warp_variant)}
    fig, axes = plt.subplots(2, 5, figsize=(10, 4.4))
    for row, ds in enumerate(("cifar10", "gtsrb")):
        data = load_dataset(ds)
        x = to_tensor(data.x_test[indices[ds]:indices[ds] + 1])
        panels = [("clean", x)] + [(name, t(x)) for name, t in triggers.items()]
        diff = (triggers["warp"](x) - x).abs()
        panels.append(("|warp − clean| ×5", (diff * 5).clamp(0, 1)))
        for ax, (title, img) in zip(axes[row], panels):
            ax.imshow(img[0].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(title if row == 0 else "", fontsize=10)
            ax.set_xticks([]), ax.set_yticks([])
        axes[row, 0].set_ylabel({"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[ds])
    fig.tight_layout()
    return fig


def asr_vs_rate_figure(table: pd.DataFrame, dataset: str):
    """ASR against poison rate per trigger: ours (solid, ± std) and the paper's (dashed)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, trig in enumerate(TRIGGERS):
        t = table[table.trigger == trig]
        colour = f"C{i}"
        ours = t.dropna(subset=["asr"])
        ax.errorbar(ours.poison_rate, ours.asr, yerr=ours.asr_std.fillna(0), color=colour,
                    marker="o", label=f"{trig} (ours)", capsize=3)
        ax.plot(t.poison_rate, t.paper_asr, color=colour, ls="--", marker="x", alpha=0.7,
                label=f"{trig} (paper)")
    ax.set_xscale("log")
    ax.set_xlabel("poison rate (%)")
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(-3, 103)
    ax.set_title({"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[dataset])
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def recipe_text(recipe: dict) -> str:
    """The training recipe in words."""
    if recipe["schedule"] == "constant" and not recipe["momentum"]:
        text = f"plain SGD at lr {recipe['lr']}, no momentum, constant rate"
    else:
        kind = "Nesterov momentum" if recipe["nesterov"] else "momentum"
        text = (f"SGD with {kind} {recipe['momentum']}, weight decay {recipe['weight_decay']} and a "
                f"{recipe['schedule']} schedule peaking at lr {recipe['lr']}")
    return text + f", batch {recipe['batch_size']}, {recipe['epochs']} epochs"


def scale_table(configs: list[dict], results: pd.DataFrame) -> pd.DataFrame:
    """What ran: per dataset, the data, epochs, width, seeds, rates and number of runs."""
    rows = []
    for ds in dict.fromkeys(c["dataset"] for c in configs):
        cs = [c for c in configs if c["dataset"] == ds]
        done = results[results.dataset == ds]
        rows.append({
            "dataset": ds, "training images": int(done.n_train.iloc[0]),
            "epochs": cs[0]["recipe"]["epochs"], "width k": cs[0]["width"],
            "seeds": len({c["seed"] for c in cs}),
            "poison rates %": ", ".join(f"{100 * r:g}" for r in sorted({c["poison_rate"] for c in cs if c["trigger"]})),
            "runs": len(cs), "training minutes": round(done.train_seconds.sum() / 60, 1),
        })
    return pd.DataFrame(rows).set_index("dataset")


def gap_summary(tables: dict[str, pd.DataFrame], results: pd.DataFrame) -> str:
    """Markdown: how far each of our numbers lies from the paper's, per dataset and trigger."""
    lines = []
    for ds, table in tables.items():
        name = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[ds]
        clean = results[(results.dataset == ds) & (results.trigger == "clean")].ba.mean()
        paper_clean = PAPER_CLEAN_ACCURACY[ds]
        lines.append(f"- **{name}**: clean accuracy {clean:.1f} % against the paper's {paper_clean:.1f} % "
                     f"({clean - paper_clean:+.1f} points).")
        ran = table.dropna(subset=["asr", "paper_asr"])
        for trig in TRIGGERS:
            t = ran[ran.trigger == trig]
            if t.empty:
                continue
            gap = t.asr - t.paper_asr
            worst = t.loc[gap.abs().idxmax()]
            lines.append(
                f"  - {trig}: ASR {', '.join(f'{r:g} %: {a:.1f} (paper {p:.1f})' for r, a, p in zip(t.poison_rate, t.asr, t.paper_asr))}; "
                f"largest gap {worst.asr - worst.paper_asr:+.1f} points at {worst.poison_rate:g} %. "
                f"BA {t.ba.mean():.1f} vs {t.paper_ba.mean():.1f}, CAD {t.cad.mean():+.1f} vs {t.paper_cad.mean():+.1f} (means over these rates).")
    return "\n".join(lines)
