"""Tables 1-2 and Figures 3-5 of *Two Heads are Better than One: Nested PoE for Robust Defense
Against Multi-Backdoors* (Graf, Liu, Chen, NAACL 2024), regenerated.

The paper's full text could not be obtained. Its numbers here come from secondary summaries
of the ACL PDF (``targets.md``, Paper 2), so every one of them is **unverified**; the paper
gives them as fractions and they stand here in percent.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


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
# the paper's trends, as the summaries state them (no numbers were obtained for the figures)
PAPER_TRENDS = {
    "npoe-fig-beta": "robust over a range of beta; too small a beta lets the backdoor through",
    "npoe-fig-expert-depth": "shallow experts (few layers) work best: deeper experts learn the task too",
    "npoe-fig-gate-layers": "insensitive to the number of gate layers",
    "npoe-fig-double-rate": "doubling the poison rate lowers NPoE's ASR (more poison, easier to isolate)",
}


def results_table(runs) -> pd.DataFrame:
    """One row per (dataset, setting, method) with the overall ASR (empty ``trigger``), then one
    row per trigger of the setting with its own ASR; the paper's numbers beside ours, in percent."""
    rows = []
    for r in runs:
        c, m = r.config, r.metrics
        paper_cacc, paper_asr = PAPER.get((c["dataset"], c["setting"], c["method"]), (None, None))
        base = {"dataset": c["dataset"], "setting": c["setting"], "method": c["method"]}
        rows.append(dict(base, trigger="", cacc=m["cacc"], asr=m["asr"], paper_cacc=paper_cacc, paper_asr=paper_asr))
        if len(m["asr_by_trigger"]) > 1:
            for trigger, asr in m["asr_by_trigger"].items():
                rows.append(dict(base, trigger=trigger, cacc=np.nan, asr=asr, paper_cacc=None, paper_asr=None))
    table = pd.DataFrame(rows, columns=COLUMNS)
    # several seeds: their mean
    return table.groupby(["dataset", "setting", "method", "trigger"], sort=False, as_index=False).mean()


def display_table(table: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """One setting of one dataset as the chapter shows it: methods as rows, ours | paper (†: unverified)."""
    t = table[(table.dataset == dataset) & (table.setting == setting)]
    overall = t[t.trigger == ""].set_index("method")
    out = pd.DataFrame(index=[METHOD_NAMES[m] for m in overall.index])
    fmt = lambda v: "" if pd.isna(v) else f"{v:.1f}"
    paper = lambda v: "" if pd.isna(v) else f"{v:.1f}†"
    out["CACC"] = [fmt(v) for v in overall.cacc]
    out["CACC (paper)"] = [paper(v) for v in overall.paper_cacc]
    out["ASR"] = [fmt(v) for v in overall.asr]
    out["ASR (paper)"] = [paper(v) for v in overall.paper_asr]
    for trigger in [x for x in t.trigger.unique() if x]:
        per = t[t.trigger == trigger].set_index("method").asr
        out[f"ASR {trigger}"] = [fmt(per.get(m)) for m in overall.index]
    return out


def reproducibility_cells(tables_dir) -> pd.DataFrame:
    """The paper numbers of chapter 3 beside ours (all unverified: see the module's note)."""
    from ..reproducibility import not_built

    path = tables_dir / f"{TABLE_ID}.csv"
    if not path.is_file():
        return pd.DataFrame([not_built("npoe", TABLE_ID)])
    t = pd.read_csv(path, keep_default_na=False, na_values=[""])
    t = t[t.trigger.isna() | (t.trigger == "")]

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
    return pd.DataFrame(rows)
