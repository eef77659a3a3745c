"""Tables 1-2 and Figure 2 of *Backdoor Attacks Against Patch-based Mixture of Experts*.

The paper's own numbers (its Tables 1 and 2, % , means of 5 runs) stand here
so that each regenerated table can show them beside ours.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import style
from ..reporting import mean_std
from ..runcache import RunCache
from .attacks import TRIGGERS, load_model, run_trigger, test_tensors
from .datasets import load_dataset, to_tensor
from .fine_pruning import uses_training_recipe
from .poisoning import triggered_test_set
from .routing import patch_map_figure, patch_masks, patch_value_figure, routing_rates
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
        clean_model_asr=("clean_model_asr", "mean"), seeds=("seed", "nunique")).reset_index()
    table = agg.merge(paper_table(dataset), on=["trigger", "poison_rate"], how="outer")
    table["seeds"] = table["seeds"].fillna(0).astype(int)
    order = {t: i for i, t in enumerate(TRIGGERS)}
    table = table.sort_values(["trigger", "poison_rate"], key=lambda s: s.map(order) if s.name == "trigger" else s)
    return table[COLUMNS + ["asr_std", "ba_std", "cad_std", "clean_model_asr", "seeds"]].reset_index(drop=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the book shows it: ours (mean ± std) beside the paper's, per trigger."""
    out = pd.DataFrame({"trigger": table.trigger, "poison rate %": table.poison_rate})
    for m in ("asr", "ba", "cad"):
        out[f"{m.upper()} ours"] = [mean_std(a, s, n) for a, s, n in
                                    zip(table[m], table[f"{m}_std"], table.seeds)]
        out[f"{m.upper()} paper"] = table[f"paper_{m}"].map(lambda v: "—" if pd.isna(v) else f"{v:.1f}")
    return out.set_index(["trigger", "poison rate %"])


def figure2_triggers(seed: int = 0, warp_variant: str = "authors",
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
    """ASR against poison rate per trigger: ours (solid, ± std over seeds) and the paper's (dashed)."""
    long = pd.concat([
        table.assign(source="ours", value=table.asr),
        table.assign(source="paper", value=table.paper_asr),
    ]).dropna(subset=["value"])
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    sns.lineplot(long, x="poison_rate", y="value", hue="trigger", style="source", ax=ax,
                 palette=style.palette(TRIGGERS), hue_order=TRIGGERS, dashes=style.SOURCE_DASHES,
                 markers=style.SOURCE_MARKERS, style_order=["ours", "paper"], errorbar=None)
    ours = table.dropna(subset=["asr"])
    for trig in TRIGGERS:  # spread over seeds, where there are several
        t = ours[ours.trigger == trig]
        ax.errorbar(t.poison_rate, t.asr, yerr=t.asr_std.fillna(0), fmt="none", ecolor=style.colour(trig),
                    capsize=3)
    style.rate_axis(ax, long.poison_rate)
    ax.set(xlabel="poison rate (%)", ylabel="ASR (%)", ylim=(-3, 103),
           title={"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[dataset])
    sns.move_legend(ax, "center left", bbox_to_anchor=(1, 0.5), fontsize=8)
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
        if table.asr.isna().all():
            lines.append(f"- **{name}**: not run on this page.")
            continue
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


def claims_table(tables: dict[str, pd.DataFrame], results: pd.DataFrame) -> pd.DataFrame:
    """The paper's qualitative claims, checked on our numbers at this profile."""
    rows = []

    def at(table, trigger, rate, col="asr"):
        hit = table[(table.trigger == trigger) & np.isclose(table.poison_rate, rate)]
        return float(hit[col].iloc[0]) if len(hit) and not pd.isna(hit[col].iloc[0]) else np.nan

    for ds, table in tables.items():
        name = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[ds]
        ran = table.dropna(subset=["asr"])
        if ran.empty:
            continue
        low = ran.poison_rate.min()
        blend_low, square_2 = at(table, "blend", low), at(table, "square", 2.0)
        rows.append((name, f"blend succeeds at the lowest rate ({low:g} %)",
                     f"{at(table, 'blend', low, 'paper_asr'):.1f}", f"{blend_low:.1f}", blend_low >= 90))
        rows.append((name, "square ASR ≥ 90 % at 2 %", f"{at(table, 'square', 2.0, 'paper_asr'):.1f}",
                     f"{square_2:.1f}", square_2 >= 90))
        small = sorted(r for r in ran[ran.trigger == "warp"].poison_rate if r <= 2)
        pairs = [(at(table, "warp", r), at(table, "square", r)) for r in small]
        rows.append((name, "warp ASR below square at every rate ≤ 2 %",
                     "yes", ", ".join(f"{r:g} %: {w:.1f} vs {s:.1f}" for r, (w, s) in zip(small, pairs)),
                     bool(pairs) and all(w < s for w, s in pairs)))
        # the same, counting only ASR above what the clean model already gives
        gains = [(at(table, "warp", r) - at(table, "warp", r, "clean_model_asr"),
                  at(table, "square", r) - at(table, "square", r, "clean_model_asr")) for r in small]
        rows.append((name, "warp's gain over the clean model's ASR below square's at every rate ≤ 2 %", "yes",
                     ", ".join(f"{r:g} %: {w:+.1f} vs {s:+.1f}" for r, (w, s) in zip(small, gains)),
                     bool(gains) and all(w < s for w, s in gains)))
        warp = ran[ran.trigger == "warp"].sort_values("poison_rate")
        rows.append((name, "warp ASR grows with the poison rate", "yes",
                     " → ".join(f"{a:.1f}" for a in warp.asr), bool(np.all(np.diff(warp.asr) >= 0))))
        cad = ran.cad.abs().max()
        rows.append((name, "the attacks cost little clean accuracy (|CAD| < 3 points)",
                     f"≤ {table.paper_cad.max():.1f}", f"max |CAD| {cad:.1f}", cad < 3))
    return pd.DataFrame(rows, columns=["dataset", "claim", "paper", "ours", "holds here"])


# Table 3: CIFAR-10, square trigger, 2 % poisoning; pruning rate % -> stage -> (CA, ASR), mean of 3 runs
PAPER_TABLE3 = {
    10: {"before": (84.9, 96.5), "after_pruning": (80.1, 94.2), "after_fine_tuning": (83.5, 2.1)},
    20: {"before": (84.8, 96.3), "after_pruning": (78.9, 95.2), "after_fine_tuning": (83.6, 1.9)},
    30: {"before": (85.2, 97.4), "after_pruning": (72.2, 95.3), "after_fine_tuning": (83.5, 2.2)},
}
TABLE3_COLUMNS = ["pruning_rate", "stage", "ca", "asr", "paper_ca", "paper_asr"]


def fine_pruning_table(runs) -> pd.DataFrame:
    """Table 3: CA and ASR before the defence, after pruning and after fine-tuning, per pruning rate.

    The authors' variant (no mask, fine-tuned with the training recipe) gives the stages
    ``before``, ``after_pruning`` and ``after_fine_tuning``; the persistent-mask variant adds
    ``after_fine_tuning_with_mask``; fine-tuning alone (pruning rate 0) ``before`` and
    ``after_fine_tuning_only``; fine-tuning with the authors' plain SGD where the model was
    trained otherwise, ``..._authors_recipe``. Values are means over the runs (seeds) of each cell.
    """
    rows = []
    for run in runs:
        c, m = run.config, run.metrics
        rate = round(100 * c["pruning_rate"])
        stages = {"before": "before", "after_pruning": "after_pruning",
                  "after_fine_tuning": "after_fine_tuning"}
        if c["persistent_mask"]:
            stages = {"after_fine_tuning": "after_fine_tuning_with_mask"}
        elif rate == 0:
            stages = {"before": "before", "after_fine_tuning": "after_fine_tuning_only"}
        if not uses_training_recipe(c):
            stages = {"after_fine_tuning": stages["after_fine_tuning"] + "_authors_recipe"}
        pruned = sum(m["pruned_per_expert"])
        still_zero = 100 * sum(m["pruned_still_zero_after_fine_tuning"]) / pruned if pruned else np.nan
        for key, stage in stages.items():
            rows.append({"pruning_rate": rate, "stage": stage, "seed": c["attack"]["seed"],
                         "ca": m[key]["ca"], "asr": m[key]["asr"],
                         "experts_routing_trigger": m["trigger_patch_routing"][key]["mean_experts"],
                         "pruned_still_zero": still_zero if key == "after_fine_tuning" else np.nan})
    df = pd.DataFrame(rows)
    table = df.groupby(["pruning_rate", "stage"], sort=False).agg(
        ca=("ca", "mean"), asr=("asr", "mean"), ca_std=("ca", "std"), asr_std=("asr", "std"),
        experts_routing_trigger=("experts_routing_trigger", "mean"),
        pruned_still_zero=("pruned_still_zero", "mean"), seeds=("seed", "nunique")).reset_index()
    paper = [{"pruning_rate": r, "stage": s, "paper_ca": v[0], "paper_asr": v[1]}
             for r, by_stage in PAPER_TABLE3.items() for s, v in by_stage.items()]
    table = table.merge(pd.DataFrame(paper), on=["pruning_rate", "stage"], how="left")
    order = ["before", "after_pruning", "after_fine_tuning", "after_fine_tuning_with_mask",
             "after_fine_tuning_only", "after_fine_tuning_authors_recipe",
             "after_fine_tuning_only_authors_recipe"]
    table["_o"] = table.stage.map(order.index)
    table = table.sort_values(["pruning_rate", "_o"]).drop(columns="_o").reset_index(drop=True)
    return table[TABLE3_COLUMNS + ["ca_std", "asr_std", "experts_routing_trigger", "pruned_still_zero", "seeds"]]


def display_fine_pruning_table(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"pruning rate %": table.pruning_rate, "stage": table.stage.str.replace("_", " ")})
    for m in ("ca", "asr"):
        out[f"{m.upper()} ours"] = [mean_std(a, s, n) for a, s, n in zip(table[m], table[f"{m}_std"], table.seeds)]
        out[f"{m.upper()} paper"] = table[f"paper_{m}"].map(lambda v: "—" if pd.isna(v) else f"{v:.1f}")
    out["experts routing the trigger patch"] = table.experts_routing_trigger.map(lambda v: f"{v:.2f}")
    out["pruned filters still zero %"] = table.pruned_still_zero.map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    return out.set_index(["pruning rate %", "stage"])


def _image(ds: str, index: int):
    data = load_dataset(ds)
    return to_tensor(data.x_test[index:index + 1]), int(data.y_test[index])


def figure3_trigger_routing(models: dict, triggers: dict, dataset: str = "cifar10", index: int = 3):
    """Figure 3: one image routed by the clean model (clean image) and by each poisoned
    model (its own triggered image). ``models`` maps 'clean' and trigger names to models."""
    x, _ = _image(dataset, index)
    rows = [("clean model\nclean image", x[0], patch_masks(models["clean"], x)[0])]
    for name, trig in triggers.items():
        xt = trig(x)
        rows.append((f"{name} model\n{name} image", xt[0], patch_masks(models[name], xt)[0]))
    return patch_map_figure(rows, highlight=(0, 0))


def figure4_clean_routing(models: dict, indices: dict):
    """Figure 4: the clean models' routing of two CIFAR-10 and two GTSRB test images.
    ``models`` maps dataset to clean model, ``indices`` dataset to two test indices."""
    rows = []
    for ds, idx in indices.items():
        data = load_dataset(ds)
        for i in idx:
            x = to_tensor(data.x_test[i:i + 1])
            label = data.class_names[int(data.y_test[i])]
            rows.append((f"{ds}: {label[:14]}", x[0], patch_masks(models[ds], x)[0]))
    return patch_map_figure(rows), rows


def figure5_patch_values(rows):
    """Figure 5: per expert, the values of the patches it receives (images of Figure 4)."""
    return patch_value_figure(rows)


def figure6_fine_pruning_routing(before, after, trigger, dataset: str = "cifar10", index: int = 3):
    """Figure 6: a square-triggered image routed before and after Fine-Pruning, with the
    number of experts that receive the trigger patch."""
    x, _ = _image(dataset, index)
    xt = trigger(x)
    rows = []
    for label, model in (("before", before), ("after", after)):
        mask = patch_masks(model, xt)[0]
        rows.append((f"{label} Fine-Pruning:\n{int(mask[:, 0, 0].sum())} of {len(mask)} experts\n"
                     "get the trigger patch", xt[0], mask))
    return patch_map_figure(rows, highlight=(0, 0))


def routing_rate_table(attack_configs: list[dict], cache=None) -> pd.DataFrame:
    """Over the whole test set: how often each expert receives the top-left patch (the square
    trigger's), per trigger and poison rate, for the clean and the poisoned model, on the
    triggered non-target test images. Cached per model and trigger."""

    cache = cache or RunCache()
    rows = []
    clean = {(c["dataset"], c["arch"], c["seed"]): c for c in attack_configs if c["trigger"] is None}
    for c in attack_configs:
        if c["trigger"] is None:
            continue
        for model_kind, model_cfg in (("clean", clean[(c["dataset"], c["arch"], c["seed"])]), ("poisoned", c)):
            config = {"schema": c["schema"], "chapter": "pmoe-routing-rates", "model": model_cfg,
                      "trigger": c["trigger"], "trigger_params": c["trigger_params"], "patch": [0, 0],
                      "precision": "bf16"}

            def measure(cfg, model_cfg=model_cfg, c=c):
                model = load_model(cache.load(model_cfg), load_dataset(c["dataset"]).num_classes)
                xt, _ = triggered_test_set(*test_tensors(c), run_trigger(c), c["target"])
                return routing_rates(patch_masks(model, xt)), {}

            m = cache.get_or_run(config, measure).metrics
            rows.append({"dataset": c["dataset"], "trigger": c["trigger"], "poison_rate": 100 * c["poison_rate"],
                         "seed": c["seed"], "model": model_kind, **m})
    df = pd.DataFrame(rows)
    keys = ["dataset", "trigger", "poison_rate", "model"]
    return df.groupby(keys, sort=False).mean(numeric_only=True).drop(columns="seed").reset_index()


def routing_rate_figure(rates: pd.DataFrame):
    """Experts receiving the top-left patch against the poison rate: poisoned models (lines)
    and the clean model (dotted), per trigger and dataset."""
    datasets = list(dict.fromkeys(rates.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.2), sharey=True, squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        r = rates[rates.dataset == ds]
        sns.lineplot(r[r.model == "poisoned"], x="poison_rate", y="mean_experts", hue="trigger",
                     hue_order=TRIGGERS, palette=style.palette(TRIGGERS), marker="o", ax=ax,
                     errorbar=None, legend=ax is axes[0, -1])
        for trig in TRIGGERS:
            clean = r[(r.model == "clean") & (r.trigger == trig)].mean_experts.mean()
            ax.axhline(clean, color=style.colour(trig), ls=":", alpha=0.8)
        style.rate_axis(ax, r.poison_rate)
        ax.set(xlabel="poison rate (%)", ylabel="experts receiving the top-left patch",
               title={"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[ds])
    axes[0, -1].plot([], [], ls=":", color="grey", label="clean model")
    style.legend_outside(axes[0, -1], title="poisoned model", title_fontsize=8)
    fig.tight_layout()
    return fig


# the chapters' CSVs that hold a paper number beside ours: chapter -> table id -> columns
REPORTED = {
    "pmoe_attacks": {TABLE_IDS["cifar10"]: ("asr", "ba", "cad"), TABLE_IDS["gtsrb"]: ("asr", "ba", "cad")},
    "pmoe_routing_pruning": {"pmoe-table3-fine-pruning": ("ca", "asr")},
}


def reproducibility_cells(tables_dir) -> pd.DataFrame:
    """Every paper number of chapters 1-2 beside ours (for :mod:`moebackdoor.reproducibility`).

    A series is one measure of one trigger (Tables 1-2) or one stage (Table 3) along the rates.
    All the paper's numbers here come from its full text, so all are verified.
    """
    from ..reproducibility import not_built

    rows = []
    for chapter, tables in REPORTED.items():
        for table_id, measures in tables.items():
            path = tables_dir / f"{table_id}.csv"
            if not path.is_file():
                rows.append(not_built(chapter, table_id))
                continue
            t = pd.read_csv(path)
            key, rate = ("trigger", "poison_rate") if "trigger" in t else ("stage", "pruning_rate")
            t = t.sort_values([key, rate], kind="stable")
            for m in measures:
                for _, r in t.dropna(subset=[f"paper_{m}"]).iterrows():
                    rows.append({"chapter": chapter, "artefact": table_id,
                                 "cell": f"{r[key]}, {r[rate]:g} %, {m.upper()}",
                                 "series": f"{table_id}:{r[key]}:{m}", "paper": r[f"paper_{m}"],
                                 "ours": r[m], "verified": True, "built": True})
    return pd.DataFrame(rows)
