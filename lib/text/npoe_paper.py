"""Tables 1-2 and Figures 3-5 of *Two Heads are Better than One: Nested PoE for Robust Defense
Against Multi-Backdoors* (Graf, Liu, Chen, NAACL 2024), regenerated.

The paper's full text could not be obtained. Its numbers here come from secondary summaries
of the ACL PDF (``targets.md``, Paper 2), so every one of them is **unverified**; the paper
gives them as fractions and they stand here in percent.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import style
from ..reporting import mean_std
from . import poe
from .config import REGIMES, pretrain_batches, profile


TABLE_ID = "npoe-results"
COLUMNS = ["dataset", "setting", "method", "trigger", "cacc", "asr", "paper_cacc", "paper_asr"]
METHODS = ("no_defense", "benign", "dpoe", "npoe", "onion", "bki", "strip", "rap")
METHOD_NAMES = {"no_defense": "No defense", "benign": "Benign", "dpoe": "DPoE", "npoe": "NPoE",
                "onion": "ONION", "bki": "BKI", "strip": "STRIP", "rap": "RAP"}
# (dataset, setting, method) -> (CACC, ASR) in percent, None where not known; all unverified
PAPER = {
    ("sst2", "mix3", "npoe"): (91.8, 26.0),
    ("sst2", "mix3", "dpoe"): (91.4, 34.6),
    ("sst2", "mix3", "benign"): (92.4, 17.5),
    ("sst2", "badnet", "npoe"): (None, 7.2),
    ("sst2", "badnet", "dpoe"): (None, 9.3),
    ("offenseval", "mix3", "npoe"): (None, 1.5),
    ("offenseval", "mix3", "dpoe"): (None, 3.1),
    ("offenseval", "badnet", "npoe"): (None, 1.6),
    ("trec", "mix3", "npoe"): (None, 11.3),
    ("trec", "mix3", "dpoe"): (None, 14.5),
    ("sst2", "mix4", "npoe"): (91.5, 44.7),
    ("sst2", "mix4", "dpoe"): (None, 53.7),
    ("sst2", "mix4", "benign"): (92.8, 16.8),  # another summary gives CACC 91.2: inconsistent
    ("offenseval", "mix4", "npoe"): (83.8, 43.6),
}
# the sensitivity figures (Figs. 3-5): what is varied, and the paper's trend where a summary states it
FIGURES = {
    "npoe-fig-beta": ("beta", "the PoE coefficient β"),
    "npoe-fig-expert-depth": ("expert_layers", "trigger-only expert depth (encoder layers)"),
    "npoe-fig-gate-layers": ("gate_layers", "gate depth (encoder layers)"),
    "npoe-fig-double-rate": ("poison_rate", "total poison rate (%)"),
}
PAPER_TRENDS = {
    "npoe-fig-beta": None,
    "npoe-fig-expert-depth": None,
    "npoe-fig-gate-layers": None,
    "npoe-fig-double-rate": "doubling the poison rate lowers NPoE's ASR",
}
NOT_OBTAINED = "not obtained: the paper plots it, but no summary states the trend"


def results_table(runs, encoder_column: bool = False) -> pd.DataFrame:
    """One row per (dataset, setting, method) with the overall ASR (empty ``trigger``), then one
    row per trigger of the setting with its own ASR; the paper's numbers beside ours, in percent.
    ``encoder_column``: one more column, last, naming each run's encoder (issue 26: the same
    methods at two sizes), part of what tells rows apart."""
    rows = []
    for r in runs:
        c, m = r.config, r.metrics
        paper_cacc, paper_asr = PAPER.get((c["dataset"], c["setting"], c["method"]), (None, None))
        base = {"dataset": c["dataset"], "setting": c["setting"], "method": c["method"]} \
            | ({"encoder": c["encoder"]} if encoder_column else {})
        rows.append(dict(base, trigger="", cacc=m["cacc"], asr=m["asr"], paper_cacc=paper_cacc, paper_asr=paper_asr))
        if len(m["asr_by_trigger"]) > 1:
            for trigger, asr in m["asr_by_trigger"].items():
                rows.append(dict(base, trigger=trigger, cacc=np.nan, asr=asr, paper_cacc=None, paper_asr=None))
    columns = COLUMNS + (["encoder"] if encoder_column else [])
    keys = ["dataset", "setting", "method", "trigger"] + (["encoder"] if encoder_column else [])
    table = pd.DataFrame(rows, columns=columns)
    # several seeds: their mean
    return table.groupby(keys, sort=False, as_index=False).mean()[columns]


# the chapter's verdict (notebooks/npoe.config.yaml): NPoE reproduces only where its mean ASR is
# below ``asr_ratio`` of No defense's and its mean CACC within ``cacc_points`` of Benign's
VERDICT = {"asr_ratio": 0.5, "cacc_points": 3.0}
VERDICT_CELL = "{ds}, {setting}: NPoE's ASR below half of No defense's, CACC within 3 points of Benign's"


def verdict(table: pd.DataFrame, dataset: str = "sst2", setting: str = "mix3") -> dict | None:
    """The verdict rule on :func:`results_table` (means over seeds; one encoder): ``reproduced``
    and the four numbers it reads, or None where a method is missing.

    >>> t = pd.DataFrame({"dataset": "sst2", "setting": "mix3", "trigger": "", "method": ["no_defense", "benign", "npoe"],
    ...                   "cacc": [88.0, 89.0, 86.5], "asr": [90.0, 15.0, 44.0]})
    >>> verdict(t)["reproduced"], verdict(t.assign(cacc=[88.0, 89.0, 85.5]))["reproduced"]
    (True, False)
    """
    rows = table[(table.dataset == dataset) & (table.setting == setting) & (table.trigger.isna() | (table.trigger == ""))]
    by = rows.set_index("method")
    if not {"no_defense", "benign", "npoe"} <= set(by.index):
        return None
    nd_asr, benign_cacc = float(by.at["no_defense", "asr"]), float(by.at["benign", "cacc"])
    asr, cacc = float(by.at["npoe", "asr"]), float(by.at["npoe", "cacc"])
    ok = asr < VERDICT["asr_ratio"] * nd_asr and cacc >= benign_cacc - VERDICT["cacc_points"]
    return {"reproduced": bool(ok), "npoe_asr": asr, "no_defense_asr": nd_asr, "npoe_cacc": cacc,
            "benign_cacc": benign_cacc}


def results_sd(runs) -> pd.DataFrame:
    """The spread over seeds of :func:`results_table`'s overall rows: per (dataset, setting,
    method, encoder), the sample sd of CACC and ASR and the number of seeds."""
    rows = [{"dataset": r.config["dataset"], "setting": r.config["setting"], "method": r.config["method"],
             "encoder": r.config["encoder"], "cacc": r.metrics["cacc"], "asr": r.metrics["asr"]} for r in runs]
    keys = ["dataset", "setting", "method", "encoder"]
    if not rows:
        return pd.DataFrame(columns=keys + ["cacc_sd", "asr_sd", "n"])
    g = pd.DataFrame(rows).groupby(keys, sort=False)
    return g.agg(cacc_sd=("cacc", "std"), asr_sd=("asr", "std"), n=("cacc", "size")).reset_index()


def display_table(table: pd.DataFrame, dataset: str, setting: str, sd: pd.DataFrame | None = None) -> pd.DataFrame:
    """One setting of one dataset as the chapter shows it: methods as rows, ours (mean ± sd over
    seeds where ``sd`` gives several) | paper (†: unverified)."""
    t = table[(table.dataset == dataset) & (table.setting == setting)]
    overall = t[t.trigger == ""].set_index("method")
    out = pd.DataFrame(index=[METHOD_NAMES[m] for m in overall.index])
    spread = None if sd is None else sd[(sd.dataset == dataset) & (sd.setting == setting)].set_index("method")
    fmt = lambda v: "" if pd.isna(v) else f"{v:.1f}"
    paper = lambda v: "" if pd.isna(v) else f"{v:.1f}†"

    def ours(m, key):
        v = overall.at[m, key]
        if spread is None or m not in spread.index:
            return fmt(v)
        return mean_std(v, spread.at[m, f"{key}_sd"], int(spread.at[m, "n"]))

    out["CACC"] = [ours(m, "cacc") for m in overall.index]
    out["CACC (paper)"] = [paper(v) for v in overall.paper_cacc]
    out["ASR"] = [ours(m, "asr") for m in overall.index]
    out["ASR (paper)"] = [paper(v) for v in overall.paper_asr]
    for trigger in [x for x in t.trigger.unique() if x]:
        per = t[t.trigger == trigger].set_index("method").asr
        out[f"ASR {trigger}"] = [fmt(per.get(m)) for m in overall.index]
    return out


def reproducibility_cells(tables_dir) -> pd.DataFrame:
    """The paper numbers of chapter 3 beside ours (all unverified: see the module's note), and
    per encoder the chapter's verdict (:data:`VERDICT`), judged on our numbers alone."""
    from ..reproducibility import not_built

    path = tables_dir / f"{TABLE_ID}.csv"
    if not path.is_file():
        return pd.DataFrame([not_built("npoe", TABLE_ID)])
    full = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "encoder" not in full:
        full["encoder"] = ""
    encoders = list(dict.fromkeys(full.encoder))
    main = encoders[0]  # the page's encoder; others are the base-size section's
    t = full[(full.trigger.isna() | (full.trigger == "")) & (full.encoder == main)]

    def cell(ds, setting, method, m, paper, ours):
        return {"chapter": "npoe", "artefact": TABLE_ID,
                "cell": f"{ds}, {setting}, {METHOD_NAMES[method]}, {m.upper()}",
                "series": f"{TABLE_ID}:{ds}:{setting}:{method}:{m}", "paper": paper, "ours": ours,
                "verified": False, "built": True}

    rows = [cell(r.dataset, r.setting, r.method, m, r[f"paper_{m}"], r[m])
            for _, r in t.iterrows() for m in ("cacc", "asr") if not pd.isna(r[f"paper_{m}"])]
    for (ds, setting, method), numbers in PAPER.items():  # paper cells this profile did not run
        if not ((t.dataset == ds) & (t.setting == setting) & (t.method == method)).any():
            rows += [cell(ds, setting, method, m, v, np.nan) for m, v in zip(("cacc", "asr"), numbers) if v is not None]
    for enc in encoders:
        for ds, setting in dict.fromkeys(zip(full.dataset, full.setting)):
            v = verdict(full[full.encoder == enc], ds, setting)
            if v is not None:
                name = VERDICT_CELL.format(ds=ds, setting=setting) + (f" ({enc})" if enc != main else "")
                rows.append({"chapter": "npoe", "artefact": TABLE_ID, "cell": name, "series": f"{TABLE_ID}:{name}",
                             "paper": PAPER.get((ds, setting, "npoe"), (None, np.nan))[1], "ours": v["npoe_asr"],
                             "verified": True, "built": True,
                             "rule": "reproduced" if v["reproduced"] else "not reproduced"})
    return pd.DataFrame(rows)


def _figure_value(config: dict, param: str) -> float:
    if param == "beta":
        return config["poe"]["beta"]
    if param == "poison_rate":
        return 100 * sum(config["rates"].values())
    return config["experts"]["layers" if param == "expert_layers" else "gate_layers"]


def sensitivity_table(runs, figure: str) -> pd.DataFrame:
    """One row per run of a sensitivity figure: the varied value, the method, CACC and ASR (%)."""
    param = FIGURES[figure][0]
    rows = [dict(figure=figure, parameter=param, value=_figure_value(r.config, param), method=r.config["method"],
                 cacc=r.metrics["cacc"], asr=r.metrics["asr"],
                 **{f"asr_{t}": v for t, v in r.metrics["asr_by_trigger"].items()}) for r in runs]
    return pd.DataFrame(rows).groupby(["figure", "parameter", "value", "method"], as_index=False).mean()


def sensitivity_figure(table: pd.DataFrame, figure: str):
    """CACC and ASR against the varied parameter (Figs. 3-5 of the paper), one line per method."""
    label = FIGURES[figure][1]
    methods = [m for m in METHODS if m in set(table.method)]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0))
    for ax, measure in zip(axes, ("cacc", "asr")):
        for m in methods:
            t = table[table.method == m].sort_values("value")
            ax.plot(t.value, t[measure], marker="o", color=style.colour(m), label=METHOD_NAMES[m])
        ax.set(xlabel=label, ylabel=f"{measure.upper()} (%)", ylim=(-3, 103))
        if FIGURES[figure][0] == "beta":
            style.rate_axis(ax, table.value, base=2)
        else:
            ax.set_xticks(sorted(table.value.unique()), [f"{v:g}" for v in sorted(table.value.unique())])
    style.legend_outside(axes[1])
    fig.tight_layout()
    return fig


def trend_text(table: pd.DataFrame, figure: str) -> str:
    """Ours in words: how NPoE's ASR and CACC move from the smallest to the largest value."""
    t = table[table.method == "npoe"].sort_values("value")
    if len(t) < 2:
        return "one value only: no trend"
    lo, hi = t.iloc[0], t.iloc[-1]
    return (f"from {lo.value:g} to {hi.value:g}, NPoE's ASR goes {lo.asr:.1f} → {hi.asr:.1f} % "
            f"and its CACC {lo.cacc:.1f} → {hi.cacc:.1f} %")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def claims_table(table: pd.DataFrame, sensitivity: dict[str, pd.DataFrame], dataset: str = "sst2",
                 setting: str = "mix3") -> pd.DataFrame:
    """The paper's claims beside what our runs show; ``holds`` is computed from our numbers."""
    t = table[(table.dataset == dataset) & (table.setting == setting) & (table.trigger == "")].set_index("method")
    rows = []

    def claim(text, paper, ours, holds):
        rows.append({"claim": text, "paper": paper, "ours": ours,
                     "holds here": "—" if holds is None else ("yes" if holds else "no")})

    if {"no_defense", "npoe"} <= set(t.index):
        nd, n = t.asr["no_defense"], t.asr["npoe"]
        claim(f"NPoE cuts the {setting} ASR on {dataset} below half of No defense's",
              "26.0† vs > 90† (\"most settings\")", f"{n:.1f} vs {nd:.1f}", n < nd / 2)
    if {"dpoe", "npoe"} <= set(t.index):
        claim("NPoE's ASR is below DPoE's", "26.0† vs 34.6†", f"{t.asr['npoe']:.1f} vs {t.asr['dpoe']:.1f}",
              t.asr["npoe"] < t.asr["dpoe"])
    if {"benign", "npoe"} <= set(t.index):
        d = t.cacc["npoe"] - t.cacc["benign"]
        claim("NPoE's CACC stays within 3 points of Benign's", "91.8† vs 92.4†",
              f"{t.cacc['npoe']:.1f} vs {t.cacc['benign']:.1f}", abs(d) <= 3)
    for figure, sens in sensitivity.items():
        s = sens[sens.method == "npoe"].sort_values("value")
        if figure == "npoe-fig-double-rate" and len(s) >= 2:
            claim(_sentence(PAPER_TRENDS[figure]), "Fig. 5†", trend_text(sens, figure), s.asr.iloc[-1] < s.asr.iloc[0])
        elif len(s) >= 2:
            claim(f"{_sentence(FIGURES[figure][1])}: the paper's trend", NOT_OBTAINED, trend_text(sens, figure), None)
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "holds here"])


# the authors' setting (their code's defaults and example; targets.md), for the scale table
PAPER_SCALE = {"encoder": "bert-base-uncased (12 layers)", "training sentences": "all (SST-2: 6,920)",
               "epochs": "3", "max tokens": "256", "lr (main)": "2e-5",
               "lr (NPoE's experts, gate)": "2e-5 (trained jointly, the example script); 5e-4 (the gate alone, the code's default)",
               "lr (DPoE's expert)": "8e-5 (DPoE's script)",
               "expert pre-training (batches)": "1 epoch over 100 sentences: 13 of 8 (the example), 4 of 32 "
                                                "(the code's default); cap 800",
               "batch": "8 to 32", "seeds": "5", "ONION test sentences": "all",
               "BKI sentences scored": "all"}


def _lr(v: float) -> str:
    """3e-05 -> 3e-5."""
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def scale_table(config: dict, fig_config: dict | None, seeds, onion_n_test, bki_n_score=None,
                dpoe_config: dict | None = None, regimes=None) -> pd.DataFrame:
    """What this page ran against the paper's setting, knob by knob (``dpoe_config``: DPoE's run,
    whose expert has its own learning rate; ``regimes``: NPoE's candidate regimes)."""
    r = config["recipe"]
    experts_lr = _lr(r["small_lr"]) if not regimes or len(regimes) == 1 else " or ".join(
        f"{_lr(g['small_lr'])} ({g['name']}: experts {'trained' if g['train_experts'] else 'frozen'})"
        for g in regimes) + ", by pseudo-dev"
    ours = {"encoder": config["encoder"] + (f" ({config['layers']} layers)" if config["layers"] else ""),
            "training sentences": config["n_train"] or "all", "epochs": r["epochs"], "max tokens": r["max_length"],
            "lr (main)": _lr(r["lr"]), "lr (NPoE's experts, gate)": experts_lr,
            "lr (DPoE's expert)": _lr(dpoe_config["recipe"]["small_lr"]) if dpoe_config else "-",
            "expert pre-training (batches)": pretrain_batches(config) if "experts" in config else "-",
            "batch": r["batch_size"],
            "seeds": len(seeds), "ONION test sentences": onion_n_test or "all",
            "BKI sentences scored": bki_n_score or "all"}
    out = pd.DataFrame({"the paper": PAPER_SCALE, "this page": {k: str(v) for k, v in ours.items()}})
    if fig_config is not None:
        out["this page's figures"] = {**out["this page"],
                                      "training sentences": str(fig_config["n_train"] or "all"),
                                      "epochs": str(fig_config["recipe"]["epochs"])}
    return out


def selection_table(selections: dict) -> pd.DataFrame:
    """NPoE's pseudo-dev selection: each candidate β with the signals of both rules (the authors'
    code's and the paper's as we read it), the β each rule picks, and the one the table used."""
    def r3(v):
        return float("nan") if v is None else round(v, 3)

    rows = []
    for (ds, setting, seed), (candidates, chosen, *_) in selections.items():
        signals = [r.metrics["pseudo_dev"] for r in candidates]
        picks = {rule: poe.select_by_pseudo_dev(signals, ds, rule) for rule in poe.PSEUDO_DEV_RULES
                 if rule == "paper" or all("code" in s for s in signals)}
        for k, (r, s) in enumerate(zip(candidates, signals)):
            code = s.get("code", {})
            rows.append({"dataset": ds, "setting": setting, "seed": seed, "regime": regime_name(r.config),
                         "β": r.config["poe"]["beta"],
                         "clean-small accuracy (%)": s["clean_small_acc"],
                         "code: detected rate": r3(code.get("detected_rate")),
                         "code: pseudo-ASR": r3(code.get("pseudo_asr")),
                         "paper: detected rate": r3(s["detected_rate"]),
                         "paper: pseudo-ASR": r3(s.get("pseudo_asr")),
                         "code's pick": "✓" if picks.get("code") == k else "",
                         "paper's pick": "✓" if picks["paper"] == k else "",
                         "table's row": "✓" if k == chosen else ""})
    return pd.DataFrame(rows).set_index(["dataset", "setting", "seed", "regime", "β"]) if rows else None


def regime_name(config: dict) -> str:
    """An NPoE run's regime by name (:data:`config.REGIMES`), else its two settings."""
    lr, trained = config["recipe"]["small_lr"], config["poe"]["train_experts"]
    for name, r in REGIMES.items():
        if r == {"small_lr": lr, "train_experts": trained}:
            return name
    return f"{_lr(lr)}, {'trained' if trained else 'frozen'}"


def selection_text(table: pd.DataFrame) -> str:
    """What the selection table shows, in words: each rule's pick, and whether any candidate
    reached the detected-rate window (else the rule fell back to clean-small accuracy)."""
    if table is None:
        return ""
    lo, hi = poe.DETECTED_WINDOW
    out = []
    for (ds, setting, seed), t in table.groupby(level=["dataset", "setting", "seed"], sort=False):
        betas = [f"{b:g} in the {g} regime" for g, b in zip(t.index.get_level_values("regime"),
                                                           t.index.get_level_values("β"))]
        betas = pd.Index(betas)
        picks = {rule: betas[t[f"{rule}'s pick"] == "✓"] for rule in poe.PSEUDO_DEV_RULES if f"{rule}'s pick" in t}
        parts = []
        for rule, b in picks.items():
            d = t[f"{rule}: detected rate"]
            reached = ((d > lo) & (d < hi)).any()
            parts.append(f"the {rule} rule picks β {b[0]}"
                         + ("" if reached else f" (no candidate's detected rate reached ({lo:g}, {hi:g}): "
                                               f"its highest was {d.max():.3f}, so clean-small accuracy decided)"))
        same = len({b[0] for b in picks.values()}) == 1
        out.append(f"{ds}, {setting}, seed {seed}: " + "; ".join(parts)
                   + (". Both rules agree." if same and len(picks) > 1 else "."))
    return " ".join(out)


def routing_table(run) -> pd.DataFrame | None:
    """Where NPoE's gate sends each kind of non-target training row (``evaluation.routing``): the gate's
    mean weight on each expert, each expert's and the mixture's mean probability of the target,
    and the main model's, in percent. Experts are named by their pre-training trigger type."""
    routing = run.metrics.get("routing")
    if not routing:
        return None
    names = [f"{i + 1} ({p['trigger']})" for i, p in enumerate(run.metrics.get("pretraining", []))] \
        or [str(i + 1) for i in range(len(next(iter(routing.values()))["gate"]))]
    rows = []
    for group, g in routing.items():
        row = {"training rows": group, "n": g["n"]}
        row |= {f"gate → {n}": round(100 * w, 1) for n, w in zip(names, g["gate"])}
        row |= {f"P(target) expert {n}": round(100 * p, 1) for n, p in zip(names, g["experts_p_target"])}
        row |= {"P(target) mixture": round(100 * g["mixture_p_target"], 1),
                "P(target) main model": round(100 * g["main_p_target"], 1)}
        rows.append(row)
    return pd.DataFrame(rows).set_index("training rows")


def expert_separation(table: pd.DataFrame) -> pd.DataFrame:
    """Per expert (index: its name in the routing table): ``separation``, its mean P(target) on the
    triggered rows minus that on clean non-target rows, in points (0: it says nothing about the
    triggers), and ``gate``, its mean gate weight on the triggered rows (%)."""
    triggered = table.drop(index="clean")
    names = [c[len("P(target) expert "):] for c in table.columns if c.startswith("P(target) expert ")]
    return pd.DataFrame({"separation": [triggered[f"P(target) expert {n}"].mean() - table.loc["clean", f"P(target) expert {n}"]
                                        for n in names],
                         "gate": [triggered[f"gate → {n}"].mean() for n in names]}, index=names)


def routing_text(table: pd.DataFrame) -> str:
    """Sentences on the routing table: the expert most sure of the triggers and its gate weight;
    how much of the experts' separation of triggered from clean rows the gate passes on."""
    if table is None:
        return ""
    triggered = table.drop(index="clean", errors="ignore")
    experts = [c for c in table.columns if c.startswith("P(target) expert ")]
    best = max(experts, key=lambda c: triggered[c].mean())
    name = best[len("P(target) expert "):]
    text = (f"Expert {name} is the most confident on the triggered rows (mean P(target) "
            f"{triggered[best].mean():.0f} %, on clean non-target rows {table[best].get('clean', float('nan')):.0f} %); "
            f"the gate gives it {triggered[f'gate → {name}'].mean():.0f} % of its weight on triggered rows "
            f"and {table[f'gate → {name}'].get('clean', float('nan')):.0f} % on clean ones. The main model "
            f"gives the target {triggered['P(target) main model'].mean():.0f} % on the triggered rows.")
    if "clean" not in table.index or triggered.empty:
        return text
    sep = expert_separation(table)
    top = sep.separation.max()
    each = (f" Each expert's separation, its P(target) on triggered rows minus on clean ones, is "
            + ", ".join(f"{s:.0f}" for s in sep.separation.round() + 0.0) + " points (experts " + ", ".join(sep.index) + ")")
    mix, main = table.at["clean", "P(target) mixture"], table.at["clean", "P(target) main model"]
    text += (f" On clean non-target rows the experts' mixture gives the target {mix:.0f} % and the main model "
             f"{main:.0f} %" + (": the experts push clean rows away from the target, so the main model, which "
                                "alone predicts at test time, fits them only together with the experts." if mix < 35 else "."))
    if top < 1:  # no expert tells the triggers apart: nothing for the gate to pass on
        return text + each + ": no expert tells triggered rows from clean ones, so the product holds no trigger signal."
    gates = table[[c for c in table.columns if c.startswith("gate → ")]]
    spread = float((gates.max() - gates.min()).max())  # 0: the same weights whatever the row
    each += (f". Between the kinds of row, no expert's gate weight moves by more than {spread:.1f} points: "
             + ("the gate does not route by input but spreads one fixed weighting over every row"
                if spread < 1 else "the gate routes by input"))
    weighted = float((sep.separation * sep.gate).sum() / sep.gate.sum())
    weak = float(sep.gate[sep.separation < top / 5].sum())
    return text + each + (f"; weighted by the gate on the triggered rows it is {weighted:.0f}, against {top:.0f} for "
                          f"the best expert alone. The gate puts {weak:.0f} % of that weight on experts whose "
                          f"separation is under a fifth of the best's, which pass the product almost nothing; β "
                          f"multiplies only what the gate passes.")


# the page's displays, each from the grid (:func:`experiment.npoe_grid`) and its results
# (:func:`experiment.npoe_results`); a list of str (Markdown) and tables is shown in order

def settings_text(runnable, skipped) -> str:
    """Markdown: which (dataset, setting) pairs run, and why the others cannot."""
    return "\n".join([f"- **{ds}**, {setting}: runs." for ds, setting in runnable] +
                     [f"- **{ds}**, {setting}: not run, no pre-generated {' or '.join(m)} set exists for {ds}."
                      for ds, setting, m in skipped])


def page_scale_table(grid) -> pd.DataFrame | None:
    """:func:`scale_table` for the page: its NPoE run (else its first), its figures' first run, DPoE's run."""
    if not grid.table:
        return None
    p = profile(grid.profile)
    fig_config = next(iter(grid.figures.values()))[0] if grid.figures else None
    return scale_table(grid.config_of("npoe") or grid.table[0], fig_config, grid.seeds, p["onion_n_test"],
                       p["bki_n_score"], grid.config_of("dpoe"), grid.regimes)


def page_glue(grid, res) -> dict:
    """The numbers the page's prose names (glue name -> value)."""
    p = profile(grid.profile)
    fig_scale = next((cs[0] for f, cs in grid.figures.items() if f != "npoe-fig-beta"),
                     grid.table[0] if grid.table else {"n_train": None, "recipe": {"epochs": 0}})
    return {"select_n_train": f"{res.select_n_train:,}" if res.select_n_train else "all",
            "select_rule": grid.select_rule, "train_minutes": float(res.train_minutes),
            "onion_n_test": p["onion_n_test"] or "all", "bki_n_score": f'{p["bki_n_score"] or "all"}',
            "fig_dataset": grid.fig_dataset, "fig_setting": grid.fig_setting,
            "fig_n_train": fig_scale["n_train"] or "all", "fig_epochs": fig_scale["recipe"]["epochs"]}


def tables_1_2(table: pd.DataFrame, runnable, sd: pd.DataFrame | None = None) -> list:
    """Tables 1 and 2: each (dataset, setting) with its heading, as :func:`display_table`."""
    return [x for ds, setting in runnable
            for x in (f"**{ds}, {setting}** (the paper's Table {2 if setting == 'mix4' else 1})",
                      display_table(table, ds, setting, sd))]


def pretraining_table(run) -> pd.DataFrame | None:
    """How well each of a run's experts learned its own pre-training set (None: not pre-trained)."""
    pre = pd.DataFrame(run.metrics.get("pretraining", []))
    if not len(pre):
        return None
    pre.index = [f"expert {i + 1}" for i in range(len(pre))]
    return pre.rename(columns={"trigger": "pre-training trigger type", "train_accuracy": "accuracy on its set (%)",
                               "final_loss": "last batch's loss", "steps": "batches",
                               "peak_lr": "peak learning rate", "seconds": "seconds (when trained)"})


# the expert diagnostics (``evaluation.expert_target_probs``): stages and kinds of training row
DIAGNOSTIC_STAGES = {"before": "pre-trained", "after": "joint"}
ROW_KINDS = {"clean_other": "clean, other class", "clean_target": "clean, target class"}
TRIGGER_NAMES = {"badnet": "BadNet", "insertsent": "InsertSent", "syntactic": "syntactic", "style": "style"}


def expert_diagnostics_table(runs, unnamed_trigger: str = "insertsent") -> pd.DataFrame | None:
    """Did each expert learn its trigger, or the topic, or the class? One row per run, expert and
    stage (after pre-training, after joint training): its mean P(target) (%) on each trigger's
    non-target training rows and on clean rows of the other and of the target class, and its
    separation, P(target) on the rows of the trigger it is read on minus on clean other-class
    rows, in points. An expert is read on its pre-training trigger; one not pre-trained (DPoE's
    shallow model) on ``unnamed_trigger`` (InsertSent, the trigger DPoE left at 100 %). None if no
    run recorded the diagnostics (runs trained before them). Short headers, so that the table
    fits its column."""
    rows = []
    for r in runs:
        d = r.metrics.get("expert_diagnostics")
        if not d:
            continue
        pre = r.metrics.get("pretraining") or []
        for stage, stage_name in DIAGNOSTIC_STAGES.items():
            groups = d[stage]
            for j in range(len(next(iter(groups.values()))["p_target"])):
                trigger = pre[j]["trigger"] if j < len(pre) else None
                read_on = trigger or unnamed_trigger
                name = TRIGGER_NAMES.get(read_on, read_on)
                row = {"run": f"{METHOD_NAMES[r.config['method']]}, seed {r.config['seed']}",
                       "expert": f"{j + 1}: {name}" if trigger else f"{j + 1}: not pre-trained, read on {name}",
                       "stage": stage_name}
                row |= {f"{ROW_KINDS.get(g) or TRIGGER_NAMES.get(g, g) + ' rows'} (%)": round(100 * v["p_target"][j], 1)
                        for g, v in groups.items()}
                row["separation (points)"] = round(100 * (groups[read_on]["p_target"][j]
                                                          - groups["clean_other"]["p_target"][j]), 1) \
                    if read_on in groups and "clean_other" in groups else float("nan")
                rows.append(row)
    if not rows:
        return None
    t = pd.DataFrame(rows)
    clean = [f"{k} (%)" for k in ROW_KINDS.values() if f"{k} (%)" in t.columns]
    kinds = [c for c in t.columns if c.endswith(" rows (%)")]
    return t[["run", "expert", "stage"] + sorted(kinds) + clean + ["separation (points)"]]


def inside_npoe(selections: dict) -> list:
    """Per chosen NPoE run: its experts' pre-training table, then its routing table and text."""
    out = []
    for (ds, setting, seed), (_, _, run) in selections.items():
        pre = pretraining_table(run)
        if pre is not None:
            out += [f"**{ds}, {setting}, seed {seed}, β = {run.config['poe']['beta']:g}**: expert pre-training", pre]
        rt = routing_table(run)
        if rt is not None:
            out += [rt, routing_text(rt)]
    return out


def figure_text(table: pd.DataFrame, figure: str) -> str:
    """Markdown above a sensitivity figure: what it varies, the paper's trend and ours."""
    label = FIGURES[figure][1]
    return (f"**{label[:1].upper() + label[1:]}**. The paper: "
            f"{PAPER_TRENDS[figure] or NOT_OBTAINED}. Ours: {trend_text(table, figure)}.")


def summary_text(table: pd.DataFrame, runnable, sections: dict[str, tuple[int, float]]) -> str:
    """Markdown: NPoE against No defense per setting, and what the page's runs cost
    (``sections``: :func:`runs.minutes_by_section`)."""
    lines = []
    for ds, setting in runnable:
        t = table[(table.dataset == ds) & (table.setting == setting) & (table.trigger == "")].set_index("method")
        if {"no_defense", "npoe"} <= set(t.index):
            lines.append(f"- {ds}, {setting}: NPoE brings the ASR from {t.asr['no_defense']:.1f} % (no defense) "
                         f"to {t.asr['npoe']:.1f} %, at a CACC of {t.cacc['npoe']:.1f} % "
                         f"(no defense {t.cacc['no_defense']:.1f} %).")
    n = sum(k for k, _ in sections.values())
    total = sum(m for _, m in sections.values())
    parts = "; ".join(f"{name} {m:.0f} min ({k} runs)" for name, (k, m) in sections.items() if k)
    lines.append(f"- A cold execution of this page trains {n} runs in {total:.0f} minute{'' if round(total) == 1 else 's'}, "
                 f"as measured when they were trained ({parts}; runs trained before per-run wall times were recorded count their "
                 "training and defense time only). They are cached (`.cache/runs/`): re-running the page retrains "
                 "nothing that exists.")
    return "\n".join(lines)


# issue 26: the differences table and the base-size section

def differences_view(table: pd.DataFrame) -> pd.DataFrame:
    """The differences table as the page shows it: each row's CACC and ASR (mean ± sd over
    seeds) and their change from its reference row (the authors' NPoE, or DPoE's)."""
    ref = {"npoe": table.iloc[0], "dpoe": table[table.difference.str.contains("DPoE as the authors")].iloc[0]}
    rows = []
    for _, r in table.iterrows():
        base = ref["dpoe"] if "DPoE" in r.difference and "NPoE" not in r.difference else ref["npoe"]
        is_ref = r.difference.startswith("none") or r.difference.startswith("No defense")
        rows.append({"difference (switched to ours before)": r.difference, "the authors' code": r.authors,
                     "ours before": r.ours_before, "CACC": mean_std(r.cacc, r.cacc_sd, 3),
                     "ASR": mean_std(r.asr, r.asr_sd, 3),
                     "Δ CACC": "" if is_ref else f"{r.cacc - base.cacc:+.1f}",
                     "Δ ASR": "" if is_ref else f"{r.asr - base.asr:+.1f}"})
    return pd.DataFrame(rows).set_index("difference (switched to ours before)")


def differences_text(n_train: int, by_rung: dict, table: pd.DataFrame, seeds: int) -> str:
    """Markdown under the differences table: the training set the ladder chose, and which
    difference moved NPoE (or DPoE) by more than the seeds' spread."""
    rungs = ", ".join(f"{n:,} sentences: ASR {a:.1f} %, CACC {c:.1f} %" for n, (a, c) in by_rung.items())
    ref = table.iloc[0]
    moved = []
    for _, r in table.iloc[1:].iterrows():
        if r.difference.startswith(("none", "No defense")):
            continue
        base = table[table.difference.str.contains("DPoE as the authors")].iloc[0] if "DPoE" in r.difference else ref
        noise = np.nanmax([r.asr_sd, base.asr_sd, 0.0])
        if abs(r.asr - base.asr) > 2 * noise:
            moved.append(f"{r.difference} ({r.asr - base.asr:+.1f} ASR points, {r.cacc - base.cacc:+.1f} CACC)")
    text = (f"No defense on the ladder's rungs ({seeds} seed{'s' if seeds != 1 else ''} each): {rungs}. The table ran on "
            f"**{n_train:,}** training sentences. With every point as the authors' code, NPoE's ASR is "
            f"{ref.asr:.1f} % at a CACC of {ref.cacc:.1f} %. ")
    if moved:
        text += "Switched back alone, these differences moved the ASR by more than twice the seeds' spread: "                 + "; ".join(moved) + "."
    else:
        text += "No difference, switched back alone, moved the ASR by more than twice the seeds' spread."
    return text


def verdict_text(v: dict | None, where: str, judged: bool = True) -> str:
    """One sentence: the chapter's verdict rule applied to a table (``where``: its encoder and
    scale). ``judged=False`` (smoke): the numbers, no word."""
    if v is None:
        return f"{where}: no verdict (No defense, Benign or NPoE did not run)."
    word = ("**reproduced**" if v["reproduced"] else "**not reproduced**") if judged else \
        "not judged (this profile's numbers mean nothing)"
    return (f"{where}: {word}. NPoE's ASR {v['npoe_asr']:.1f} % against half of No defense's "
            f"({v['no_defense_asr'] / 2:.1f} %), its CACC {v['npoe_cacc']:.1f} % against Benign's "
            f"{v['benign_cacc']:.1f} % less 3 points ({v['benign_cacc'] - VERDICT['cacc_points']:.1f} %).")
