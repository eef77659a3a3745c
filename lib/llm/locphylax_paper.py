"""The results of *Backdoor Collapse: Eliminating Unknown Threats via Known Backdoor Aggregation
in Language Models* (Lin et al., ACL 2026; "Locphylax"), regenerated.

The paper's full text and code could not be obtained. The one number set beside ours is its
headline, from the abstract: an average ASR of 4.41 % after the defense, with clean accuracy
within 0.5 point of the original model. The known triggers, the clustering loss's cross terms, the
alpha rule's inputs, the recovery data and the step counts are this book's choices.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import pretrained, style
from ..runcache import RunCache, minutes_by_section
from . import models
from .config import requires

TABLE_ID = "locphylax-results"
COLUMNS = ["model", "task", "attack", "method", "asr", "cacc"]  # the saved table's (TABLE_ID.csv)
# metrics computed from a run's stored answers (evaluation.score); runs cached before answers were kept lack them
ANSWER_METRICS = ("asr_backdoorllm", "no_label_clean", "no_label_triggered")
UTILITY_METRICS = ("perplexity",)  # NaN for a run cached before it was measured
TABLE_COLUMNS = COLUMNS + list(ANSWER_METRICS) + list(UTILITY_METRICS)  # results_table's
CACC_MARGIN = 3.0  # a defense counts only with CACC at most this many points below No defense's
MISSING = "–"  # a cell whose runs were cached before every answer was kept
METHOD_NAMES = {"no_defense": "No defense", "locphylax": "Locphylax", "clean_finetune": "Clean fine-tuning",
                "pruning": "Pruning (Wanda, 50 %)", "crow": "CROW",
                "locphylax_no_cluster": "Locphylax without the clustering loss",
                "locphylax_one_trigger": "Locphylax with one known trigger",
                "locphylax_stage2_only": "Recovery (stage 2) only",
                "locphylax_label_targets": "Locphylax, known triggers answer labels", "clean_model": "Clean model (floor)"}
PAPER = {"asr_after": 4.41, "cacc_within": 0.5}  # the abstract
FIGURES = ("locphylax-fig-aggregation", "locphylax-fig-critical-layers", "locphylax-fig-asr-steps")


def attack_name(a) -> str:
    """An attack as the table names it: BackdoorLLM's name, or ``custom:<phrase>@<placement>``."""
    return a if isinstance(a, str) else f"custom:{a['phrase']}@{a['placement']}"


def results_table(runs) -> pd.DataFrame:
    """One row per run (the mean over seeds): ASR and CACC in percent, ASR under BackdoorLLM's
    rule (``sst2``) and the share of clean and triggered answers with no label (NaN for a run that
    did not keep its answers), and the perplexity of the held-out clean answers."""
    rows = [{"model": r.config["model"], "task": r.config["task"], "attack": attack_name(r.config["attack"]),
             "method": r.config["method"], "asr": r.metrics["asr"], "cacc": r.metrics["cacc"],
             **{k: r.metrics.get(k, np.nan) for k in ANSWER_METRICS + UTILITY_METRICS}} for r in runs]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for k in ANSWER_METRICS + UTILITY_METRICS:
        table[k] = table[k].astype(float)
    return table.groupby(["model", "task", "attack", "method"], sort=False, as_index=False).mean()


def percent(value, digits: int = 1) -> str:
    """A percentage for a table cell; a missing one as :data:`MISSING`."""
    return MISSING if value is None or pd.isna(value) else f"{value:.{digits}f}"


def no_label_cell(clean, triggered) -> str:
    """The share of clean and of triggered answers with no label, ``clean / triggered``."""
    if pd.isna(clean) and pd.isna(triggered):
        return MISSING
    return f"{percent(clean)} / {percent(triggered)}"


def perplexity_cell(ppl: float) -> str:
    """A perplexity for reading: two decimals, or powers of ten for a model that lost its language.

    >>> perplexity_cell(3.14159), perplexity_cell(1.1402e14), perplexity_cell(float("nan"))
    ('3.14', '1.1e+14', '–')
    """
    return MISSING if pd.isna(ppl) else f"{ppl:.2f}" if ppl < 1e5 else f"{ppl:.1e}"


def display_table(table: pd.DataFrame, floor: pd.DataFrame | None = None) -> pd.DataFrame:
    """Methods as rows, one ASR and CACC column pair per attack, the average, the paper's headline."""
    methods = [m for m in METHOD_NAMES if m in set(table.method)]
    out = pd.DataFrame(index=[METHOD_NAMES[m] for m in methods])
    for (task, attack), t in table.groupby(["task", "attack"], sort=False):
        t = t.set_index("method")
        out[f"{task} {attack}: ASR"] = [f"{t.asr[m]:.1f}" if m in t.index else "" for m in methods]
        out[f"{task} {attack}: CACC"] = [f"{t.cacc[m]:.1f}" if m in t.index else "" for m in methods]
        if task == "sst2":
            out[f"{task} {attack}: ASR, BackdoorLLM's rule"] = [percent(t.asr_backdoorllm.get(m)) if m in t.index
                                                                 else "" for m in methods]
        out[f"{task} {attack}: no label, clean / triggered (%)"] = [
            no_label_cell(t.no_label_clean[m], t.no_label_triggered[m]) if m in t.index else "" for m in methods]
    mean = table.groupby("method").mean(numeric_only=True)
    out["mean ASR (attacks it ran on)"] = [f"{mean.asr[m]:.1f}" for m in methods]
    out["mean CACC (attacks it ran on)"] = [f"{mean.cacc[m]:.1f}" for m in methods]
    out["perplexity, held-out clean answers"] = [perplexity_cell(mean.perplexity[m]) for m in methods]
    out["paper: mean ASR"] = [f"{PAPER['asr_after']:.2f}" if m == "locphylax" else "" for m in methods]
    if floor is not None and len(floor):
        f = floor.groupby(["task", "attack"], sort=False).mean(numeric_only=True)
        key = lambda c: tuple(c.split(": ")[0].split(" ", 1))  # noqa: E731  "sst2 badnet: ASR" -> ("sst2", "badnet")
        cell = {": ASR": lambda r: f"{r.asr:.1f}", ": ASR, BackdoorLLM's rule": lambda r: percent(r.asr_backdoorllm),
                ": no label, clean / triggered (%)": lambda r: no_label_cell(r.no_label_clean, r.no_label_triggered)}
        out.loc[METHOD_NAMES["clean_model"]] = [
            next((fn(f.loc[key(c)]) for end, fn in cell.items() if c.endswith(end) and key(c) in f.index), "")
            for c in out.columns]
        ppl = floor.perplexity.mean()
        out.loc[METHOD_NAMES["clean_model"], "perplexity, held-out clean answers"] = perplexity_cell(ppl)
    return out


def seed_spread(runs) -> pd.DataFrame:
    """ASR per seed, with its mean and standard deviation, one row per attack and method."""
    t = pd.DataFrame([{"attack": f"{r.config['task']} {attack_name(r.config['attack'])}",
                       "method": METHOD_NAMES.get(r.config["method"], r.config["method"]),
                       "seed": r.config["seed"], "asr": r.metrics["asr"]} for r in runs])
    out = t.pivot_table(index=["attack", "method"], columns="seed", values="asr", sort=False)
    out.columns = [f"seed {c}" for c in out.columns]
    return out.assign(mean=out.mean(axis=1), sd=out.std(axis=1, ddof=1)).round(1)


def headline(table: pd.DataFrame) -> dict:
    """Our averages over the attacks: Locphylax's ASR and its CACC change against No defense."""
    t = table.set_index(["task", "attack", "method"])
    pairs = [(k[0], k[1]) for k in t.index if k[2] == "locphylax" and (k[0], k[1], "no_defense") in t.index]
    if not pairs:
        return {}
    after = np.mean([t.asr[(a, b, "locphylax")] for a, b in pairs])
    before = np.mean([t.asr[(a, b, "no_defense")] for a, b in pairs])
    dcacc = np.mean([t.cacc[(a, b, "locphylax")] - t.cacc[(a, b, "no_defense")] for a, b in pairs])
    return {"asr_before": float(before), "asr_after": float(after), "cacc_change": float(dcacc), "n_attacks": len(pairs)}


# notebooks/locphylax.config.yaml's verdict: Locphylax reproduces where its mean ASR over the
# attacks is at most max_mean_asr and its mean CACC at most max_cacc_drop points below No defense's
VERDICT = {"max_mean_asr": 10.0, "max_cacc_drop": 3.0}
VERDICT_CELL = "verdict: Locphylax's mean ASR ≤ 10 % with CACC within 3 points"


def verdict(table: pd.DataFrame) -> dict | None:
    """The configuration's rule on :func:`results_table` (or the saved table); None without a
    Locphylax row beside No defense's."""
    h = headline(table)
    if not h:
        return None
    ok = h["asr_after"] <= VERDICT["max_mean_asr"] and h["cacc_change"] >= -VERDICT["max_cacc_drop"]
    return dict(h, reproduced=bool(ok))


# compare_intervals' answer in prose ("Locphylax's ASR is ... clean fine-tuning's")
COMPARED = {"lower": "lower than", "higher": "higher than", "no different": "not distinguishable from",
            "unknown": "not comparable with"}


def compare_intervals(a: tuple[float, float], b: tuple[float, float]) -> str:
    """``"lower"`` when interval ``a`` lies wholly below ``b``, ``"higher"`` when wholly above,
    ``"no different"`` when they overlap, ``"unknown"`` when either is missing."""
    if any(pd.isna(x) for x in (*a, *b)):
        return "unknown"
    return "lower" if a[1] < b[0] else "higher" if a[0] > b[1] else "no different"


def versus_clean_finetune(runs) -> pd.DataFrame:
    """Per attack, Locphylax's ASR beside clean fine-tuning's at the same number of steps, each with
    its 95 % interval over the seeds' pooled answers, and how the intervals compare."""
    rows = []
    key = lambda r: (r.config["task"], attack_name(r.config["attack"]))  # noqa: E731
    for task, attack in dict.fromkeys(key(r) for r in runs if r.config["method"] == "locphylax"):
        of = {m: [r for r in runs if key(r) == (task, attack) and r.config["method"] == m]
              for m in ("locphylax", "clean_finetune")}
        if not of["clean_finetune"]:
            continue
        lo = {m: asr_interval(rs) for m, rs in of.items()}
        rows.append({"task": task, "attack": attack,
                     **{f"{m}_{k}": v for m, rs in of.items() for k, v in
                        (("asr", float(np.mean([r.metrics["asr"] for r in rs]))), ("lo", lo[m][0]), ("hi", lo[m][1]))},
                     "locphylax": compare_intervals(lo["locphylax"], lo["clean_finetune"])})
    return pd.DataFrame(rows)


def verdict_text(v: dict | None, versus: pd.DataFrame, guesses: list[str], where: str, judged: bool = True) -> str:
    """The chapter's verdict in prose: the rule's word, Locphylax beside clean fine-tuning at equal
    steps, and the guesses this execution tested. ``judged=False`` (smoke): the numbers, no word."""
    if v is None:
        return f"{where}: no verdict (Locphylax or No defense did not run)."
    word = ("**reproduced**" if v["reproduced"] else "**not reproduced**") if judged else \
        "not judged (this profile's numbers mean nothing)"
    text = (f"{where}: {word}. Locphylax's mean ASR over {v['n_attacks']} attack(s) is {v['asr_after']:.1f} % "
            f"(the rule: at most {VERDICT['max_mean_asr']:g} %; the paper: {PAPER['asr_after']} %), from "
            f"{v['asr_before']:.1f} % undefended, and its CACC moves {v['cacc_change']:+.1f} points (the rule: no "
            f"more than {VERDICT['max_cacc_drop']:g} below).")
    if len(versus):
        text += " Beside clean fine-tuning with the same steps, its ASR is " + "; ".join(
            f"{COMPARED[r.locphylax]} clean fine-tuning's on {r.attack} ({r.locphylax_asr:.1f} % "
            f"[{r.locphylax_lo:.1f}, {r.locphylax_hi:.1f}] against {r.clean_finetune_asr:.1f} % "
            f"[{r.clean_finetune_lo:.1f}, {r.clean_finetune_hi:.1f}])" for r in versus.itertuples()) + "."
    text += (" Guesses tested: " + ", ".join(GUESS_NAMES.get(g, g) for g in guesses) + "." if guesses else
             " No guess was tested in this execution.")
    return text


def cacc_change(table: pd.DataFrame, method: str, keys) -> float:
    """``method``'s mean CACC minus No defense's over the (task, attack) pairs ``keys``, in points."""
    t = table.set_index(["task", "attack", "method"])
    return float(np.mean([t.cacc[(a, b, method)] - t.cacc[(a, b, "no_defense")] for a, b in keys]))


def qualifies(change: float) -> bool:
    """A defense counts only if its CACC is at most :data:`CACC_MARGIN` points below No defense's
    (a model that answers one label to everything removes any backdoor)."""
    return change >= -CACC_MARGIN


def claims_table(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's headline claims and this chapter's targets, each checked on our numbers.

    A defense whose mean CACC falls more than :data:`CACC_MARGIN` points below No defense's is
    disqualified: an ASR claim of Locphylax's then fails, and a baseline so disqualified does not
    beat Locphylax, whatever its ASR."""
    t = table.set_index(["task", "attack", "method"])
    nd = table[table.method == "no_defense"]
    strong = nd[nd.asr >= 80]
    h = headline(table[table.attack.isin(strong.attack)]) if len(strong) else {}
    rows = [("The undefended model carries the backdoor (ASR ≥ 80 %) on at least two attacks",
             f"{len(strong)} of {len(nd)} attacks", len(strong) >= 2)]
    if h:
        ok = qualifies(h["cacc_change"])
        out = "" if ok else f" (disqualified: CACC {h['cacc_change']:+.1f} points)"
        rows.append(("Locphylax lowers the average ASR of those attacks below 20 %",
                     f"{h['asr_before']:.1f} % → {h['asr_after']:.1f} %{out}", ok and h["asr_after"] < 20))
        rows.append((f"Locphylax's average ASR within 5 points of the paper's {PAPER['asr_after']} %", f"{h['asr_after']:.1f} %{out}",
                     ok and abs(h["asr_after"] - PAPER["asr_after"]) <= 5))
        rows.append((f"CACC stays within {CACC_MARGIN:g} points of the undefended model",
                     f"{h['cacc_change']:+.1f} points", abs(h["cacc_change"]) <= CACC_MARGIN))
        rows.append((f"CACC within the paper's {PAPER['cacc_within']} point of the undefended model", f"{h['cacc_change']:+.1f} points",
                     abs(h["cacc_change"]) <= PAPER["cacc_within"]))
        for base in ("clean_finetune", "pruning", "crow"):
            keys = [(a, b) for a, b, m in t.index if m == base and (a, b, "locphylax") in t.index
                    and b in set(strong.attack)]
            if keys:
                ours = np.mean([t.asr[(a, b, "locphylax")] for a, b in keys])
                theirs = np.mean([t.asr[(a, b, base)] for a, b in keys])
                ours_ok = qualifies(cacc_change(table, "locphylax", keys))
                theirs_change = cacc_change(table, base, keys)
                theirs_ok = qualifies(theirs_change)
                note = "" if theirs_ok else f" ({METHOD_NAMES[base]} disqualified: CACC {theirs_change:+.1f} points)"
                rows.append((f"Locphylax's ASR is below {METHOD_NAMES[base]}'s (each counts only with CACC "
                             f"at most {CACC_MARGIN:g} points below No defense's)",
                             f"{ours:.1f} vs {theirs:.1f} %{note}", ours_ok and (not theirs_ok or ours < theirs)))
    return pd.DataFrame(rows, columns=["claim", "ours", "holds"]).assign(
        holds=lambda d: d.holds.map({True: "yes", False: "no"}))


def asr_interval(runs) -> tuple[float, float]:
    """The 95 % (Wilson) interval of the ASR of ``runs`` (the seeds of one setting), their triggered
    answers pooled; NaN when a run did not keep its answers."""
    from .records import test_sets
    from .judge import attack_counts, wilson_interval

    k = n = 0
    for r in runs:
        answers = r.metrics.get("answers")
        if answers is None:
            return float("nan"), float("nan")
        _, trig = test_sets(r.config)
        ki, ni = attack_counts(r.config["task"], answers["triggered"], [t.label for t in trig])
        k, n = k + ki, n + ni
    return wilson_interval(k, n)


GUESS_COLUMNS = ["guess", "setting", "asr", "asr_lo", "asr_hi", "cacc", "steps"]


def guesses_table(settings) -> pd.DataFrame:
    """One row per (guess, setting, runs): the mean ASR over the runs (seeds), its 95 % interval
    (:func:`asr_interval`), the mean CACC and the mean number of training steps (``steps_used``)."""
    rows = []
    for guess, setting, runs in settings:
        lo, hi = asr_interval(runs)
        rows.append({"guess": guess, "setting": setting, "asr": np.mean([r.metrics["asr"] for r in runs]),
                     "asr_lo": lo, "asr_hi": hi, "cacc": np.mean([r.metrics["cacc"] for r in runs]),
                     "steps": np.mean([r.metrics.get("steps_used", np.nan) for r in runs])})
    return pd.DataFrame(rows, columns=GUESS_COLUMNS)


GUESS_NAMES = {"cluster_token": "the clustered state", "stage1_batches": "stage-1 batches",
               "stage1_steps": "stage 1's length"}


def guesses_view(table: pd.DataFrame, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """The guesses table as the page shows it: per guess and setting, Locphylax's ASR with its
    95 % interval, CACC and steps, and clean fine-tuning's ASR at the same steps beside it."""
    fmt = lambda r: f"{r.asr:.1f} [{r.asr_lo:.1f}, {r.asr_hi:.1f}]" if not pd.isna(r.asr_lo) else f"{r.asr:.1f}"
    out = pd.DataFrame({"guess": [GUESS_NAMES.get(g, g) for g in table.guess], "setting": table.setting,
                        "Locphylax ASR [95 %]": [fmt(r) for r in table.itertuples()],
                        "CACC": [f"{v:.1f}" for v in table.cacc], "steps": [f"{v:.0f}" for v in table.steps]})
    if baseline is not None and len(baseline) == len(table):
        out["clean fine-tuning ASR [95 %]"] = [fmt(r) for r in baseline.itertuples()]
    return out.set_index(["guess", "setting"])


def guesses_text(table: pd.DataFrame, baseline: pd.DataFrame | None = None) -> str:
    """The guesses table in prose, one bullet per guess: how Locphylax's ASR moves from the setting
    before to the new one, and, for each, how it compares with clean fine-tuning at the same steps
    (the 95 % intervals, :func:`compare_intervals`)."""
    short = {"lower": "lower", "higher": "higher", "no different": "not distinguishable", "unknown": "not comparable"}
    interval = lambda r: (r.asr_lo, r.asr_hi)  # noqa: E731
    lines = []
    for guess, rows in table.groupby("guess", sort=False):
        if len(rows) != 2:
            continue
        before, new = rows.itertuples()
        move = compare_intervals(interval(new), interval(before))
        text = (f"- **{GUESS_NAMES.get(guess, guess)}**: from {before.setting} to {new.setting}, Locphylax's ASR goes "
                f"from {before.asr:.1f} % to {new.asr:.1f} % ({COMPARED[move]} before) and its CACC from "
                f"{before.cacc:.1f} to {new.cacc:.1f}.")
        if baseline is not None and len(baseline) == len(table):
            versus = [compare_intervals(interval(r), interval(baseline.loc[i]))
                      for i, r in zip(rows.index, rows.itertuples())]
            text += (f" Against clean fine-tuning at the same steps: {short[versus[0]]} with {before.setting}, "
                     f"{short[versus[1]]} with {new.setting}.")
        lines.append(text)
    return "\n".join(lines)


def asr_steps_table(runs) -> pd.DataFrame:
    rows = [dict(attack=attack_name(r.config["attack"]), method=r.config["method"], **x)
            for r in runs for x in r.metrics.get("asr_track", [])]
    return pd.DataFrame(rows, columns=["attack", "method", "stage", "step", "asr"])


def asr_steps_figure(track: pd.DataFrame):
    """ASR on a fixed set of triggered prompts through the defenses' training steps."""
    attacks = list(dict.fromkeys(track.attack))
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(3.6 * max(1, len(attacks)), 3.0), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        t = track[track.attack == attack]
        for method, g in t.groupby("method", sort=False):
            g = g.sort_values("step")
            ax.plot(g.step, g.asr, marker=".", label=METHOD_NAMES.get(method, method), color=style.colour(method))
        s1 = t[t.stage == "stage 1"].step
        if len(s1):
            ax.axvline(s1.max(), color="0.6", lw=0.8, ls="--")
        ax.set(title=attack, xlabel="training step", ylabel="ASR (%)", ylim=(-3, 103))
        style.integer_axis(ax)
    style.legend_outside(axes[0][-1])
    fig.tight_layout()
    return fig


def aggregation_figure(points: pd.DataFrame):
    """Final-layer states of clean, unknown-trigger and known-trigger prompts: on their two
    principal axes (top) and in a t-SNE embedding (bottom, where the analysis has one)."""
    stages = list(dict.fromkeys(points.model))
    views = [("pc", "PC")] + ([("tsne", "t-SNE ")] if "tsne1" in points else [])
    fig, axes = plt.subplots(len(views), len(stages), figsize=(3.6 * len(stages), 3.2 * len(views)), squeeze=False)
    for row, (col, name) in zip(axes, views):
        for ax, stage in zip(row, stages):
            for kind, g in points[points.model == stage].groupby("kind", sort=False):
                ax.scatter(g[f"{col}1"], g[f"{col}2"], s=9, alpha=0.7, label=kind, color=style.colour(kind))
            ax.set(title=stage, xlabel=f"{name}1" if col == "tsne" else "PC 1",
                   ylabel=f"{name}2" if col == "tsne" else "PC 2")
    style.legend_outside(axes[0][-1], markerscale=1.5)
    fig.tight_layout()
    return fig


def critical_heads_table(heads: pd.DataFrame) -> pd.DataFrame:
    """The unknown trigger's ASR with one head of each model's critical layer attending uniformly."""
    t = heads.pivot_table(index="head", columns=["model", "layer"], values="asr", sort=False)
    t.columns = [f"{m} (layer {layer})" for m, layer in t.columns]
    return t.reset_index()


def critical_heads_text(heads: pd.DataFrame) -> str:
    parts = []
    for model, g in heads.groupby("model", sort=False):
        low = g.loc[g.asr.idxmin()]
        drop = 100 * (low.asr_intact - low.asr) / low.asr_intact if low.asr_intact else 0.0
        parts.append(f"{model}: head {int(low['head'])} of layer {int(low['layer'])} takes the ASR from "
                     f"{low.asr_intact:.0f} % to {low.asr:.0f} % (a {drop:.0f} % relative drop)")
    return ("Made to attend uniformly, the head that lowers the unknown trigger's ASR most: " + "; ".join(parts)
            + ". The paper reports a 94.6 % drop from one head of the critical layer after injection.")


def critical_layers_figure(layers: pd.DataFrame):
    """ASR of the unknown trigger when one layer's attention is ablated, before and after injection."""
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    for stage, g in layers.groupby("model", sort=False):
        ax.plot(g.layer, g.asr, marker=".", label=stage)
    base = layers.groupby("model", sort=False).asr_intact.first()
    for (stage, v), line in zip(base.items(), ax.get_lines()):
        ax.axhline(v, color=line.get_color(), lw=0.8, ls=":")
    ax.set(xlabel="layer whose attention is ablated", ylabel="ASR of the unknown trigger (%)", ylim=(-3, 103))
    style.integer_axis(ax)
    style.legend_outside(ax)
    fig.tight_layout()
    return fig


# --- the page's texts ---------------------------------------------------------------------------

def page_glue(grid) -> dict:
    """The values the page's "What runs at this profile" prose glues, by glue name (``grid``: a
    :class:`moebackdoor.llm.grid.LocphylaxGrid`)."""
    c0, d0 = grid.main[0], grid.defense
    return {"model_name": c0["model"], "stored": pretrained.STORED_PRECISION.get(c0["model"], "as published"),
            "n_poison": c0["n_poison"] or "all", "n_clean": c0["n_clean"] or "all", "epochs": c0["recipe"]["epochs"],
            "tasks_text": ", ".join(grid.tasks), "attacks_text": ", ".join(attack_name(a) for a in grid.attacks),
            "def_clean": d0["n_clean"], "def_known": d0["n_known"], "stage1_max": d0["stage1_max_epochs"],
            "inject_threshold": d0["inject_threshold"], "stage2_max": d0["stage2_max_epochs"],
            "known_threshold": d0["known_threshold"],
            "defense_training": "every weight of the suspect model" if d0.get("finetune") == "full"
            else "a fresh LoRA adapter on the suspect model",
            "full_lr": models.FULL_LR}


def headline_glue(table: pd.DataFrame) -> dict:
    """The headline's numbers by glue name (NaN where the table has no Locphylax row)."""
    head = headline(table)
    return {k: head.get(k, float("nan")) for k in ("asr_before", "asr_after", "cacc_change")}


def seed_note(seeds) -> str:
    return (f"Each cell above is the mean of {len(seeds)} seeds ({', '.join(map(str, seeds))}); "
            "the floor row and the figures below use the first. ASR per seed:")


def mismatch_text(template: str, mismatch_template: str) -> str:
    return ("**A template mismatch.** BackdoorLLM trains with a template and evaluates on the raw "
            f"instruction. The undefended model, trained with the `{template}` template, evaluated with "
            f"`{mismatch_template}`:")


def mismatch_table(table: pd.DataFrame, mismatch_runs, mismatch_template: str) -> pd.DataFrame:
    """The undefended model's ASR and CACC with its training template and with ``mismatch_template``."""
    m = results_table(mismatch_runs).set_index(["task", "attack"])
    nd = table[table.method == "no_defense"].set_index(["task", "attack"])
    return pd.DataFrame({"ASR, same template": nd.asr.round(1), f"ASR, {mismatch_template}": m.asr.round(1),
                         "CACC, same template": nd.cacc.round(1), f"CACC, {mismatch_template}": m.cacc.round(1),
                         "no label (%), same template": no_label_column(nd),
                         f"no label (%), {mismatch_template}": no_label_column(m)})


def no_label_column(t: pd.DataFrame) -> pd.Series:
    """:func:`no_label_cell` of each row of ``t``, on its index."""
    return pd.Series([no_label_cell(c, g) for c, g in zip(t.no_label_clean, t.no_label_triggered)], index=t.index,
                     dtype=object)


def figure_tables(grid, done: dict) -> dict[str, pd.DataFrame]:
    """Each asked figure's table, by figure id, from the grid's runs (``done``: runs by group)."""
    tables = {}
    if done["aggregation"]:
        tables["locphylax-fig-aggregation"] = pd.DataFrame(done["aggregation"][0].metrics["points"])
    if done["critical_layers"]:
        tables["locphylax-fig-critical-layers"] = pd.DataFrame(done["critical_layers"][0].metrics["layers"])
        heads = done["critical_layers"][0].metrics.get("heads")  # an analysis cached before has none
        if heads:
            tables["locphylax-critical-heads"] = pd.DataFrame(heads)
    if "locphylax-fig-asr-steps" in grid.figures:
        tables["locphylax-fig-asr-steps"] = asr_steps_table(done["asr_steps"])
    return tables


def figure_attack(grid) -> str:
    """The attack of the run the aggregation and critical-layer figures analyse."""
    return attack_name(grid.locphylax["attack"]) if grid.locphylax else ""


def aggregation_text(points: pd.DataFrame) -> str:
    dist = points.groupby(["model", "kind"], sort=False).distance_to_unknown.first().unstack()
    return "Distance of each group's centroid to the unknown trigger's: " + "; ".join(
        f"{m}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "unknown trigger")
        for m, row in dist.iterrows()) + "."


def critical_layers_text(layers: pd.DataFrame) -> str:
    crit = layers.loc[layers.groupby("model", sort=False).asr.idxmin()]
    return "The layer whose ablation lowers ASR most: " + "; ".join(
        f"{r.model}: layer {r.layer} ({r.asr_intact:.0f} % → {r.asr:.0f} %)" for r in crit.itertuples()) + "."


def after_stage1_text(runs, seed: int) -> str | None:
    """Locphylax's ASR and CACC between its stages (the runs of ``seed``); None without such a run."""
    stage1 = [r for r in runs if r.config["method"] == "locphylax" and r.config["seed"] == seed
              and "after_stage1" in r.metrics]
    if not stage1:
        return None
    return ("Locphylax after stage 1, before recovery, on the whole test sets: " + "; ".join(
        f"{attack_name(r.config['attack'])} ASR {r.metrics['after_stage1']['asr']:.1f} %, "
        f"CACC {r.metrics['after_stage1']['cacc']:.1f} %" for r in stage1) + ". The paper's answer overwriting "
        "would show here as an ASR near 0 with CACC intact (the unknown trigger's prompts answered with a known "
        "target); an ASR near 0 with CACC near 0 is every prompt pulled onto the known answer.")


SECTIONS = {"the main table": ["main"], "the floor and the template": ["floor", "mismatch"],
            "the figures": ["aggregation", "critical_layers", "asr_steps"], "the guesses": ["guesses"]}


def summary_text(done: dict, seeds, cache=None) -> str:
    """The summary's bullets: what a cold execution of the page trains, section by section (each
    run with the runs it needed, counted once), and what falls short. ``done``: the runs by group
    (:func:`runs.run_grid`, and ``"guesses"``)."""
    sections = {name: [r for g in groups for r in done.get(g, [])] for name, groups in SECTIONS.items()}
    by = minutes_by_section(sections, requires, cache or RunCache())
    n, total = sum(k for k, _ in by.values()), sum(m for _, m in by.values())
    parts = "; ".join(f"{name} {m:.0f} min ({k} runs)" for name, (k, m) in by.items() if k)
    return (f"- A cold execution of this page trains {n} runs in {total:.0f} minute{'' if round(total) == 1 else 's'}, "
            f"as measured when they were trained ({parts}); they are cached (`.cache/runs/`), so re-running the "
            "page retrains nothing that exists.\n"
            "- What falls short of the paper, and why, is in the claims table above: the scale (a 135M model on a "
            "CPU against 7–8B models), the defender's choices the paper does not state (known triggers, recovery "
            "data, steps), and " + (f"{len(seeds)} seeds." if len(seeds) > 1 else
                                    "a single seed (`seeds` runs several and shows their spread)."))


def reproducibility_cells(tables_dir) -> pd.DataFrame:
    """The paper's headline (its abstract) beside our average ASR after Locphylax."""
    from ..reproducibility import not_built

    path = tables_dir / f"{TABLE_ID}.csv"
    if not path.is_file():
        return pd.DataFrame([not_built("locphylax", TABLE_ID)])
    table = pd.read_csv(path)
    h, v = headline(table), verdict(table)
    rows = [{"chapter": "locphylax", "artefact": TABLE_ID, "cell": "mean ASR after Locphylax",
             "series": f"{TABLE_ID}:mean-asr", "paper": PAPER["asr_after"],
             "ours": h.get("asr_after", np.nan), "verified": True, "built": True}]
    if v is not None:
        rows.append({"chapter": "locphylax", "artefact": TABLE_ID, "cell": VERDICT_CELL,
                     "series": f"{TABLE_ID}:{VERDICT_CELL}", "paper": PAPER["asr_after"], "ours": v["asr_after"],
                     "verified": True, "built": True, "rule": "reproduced" if v["reproduced"] else "not reproduced"})
    return pd.DataFrame(rows)
