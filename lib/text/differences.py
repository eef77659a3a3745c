"""Chapter 3's differences from the authors' NPoE and DPoE code, each measured alone.

Six points separated the chapter's NPoE and DPoE (as first written) from the authors' code
(Nested_PoE @1e90edf, DPoE @79d790a). Each is a parameter of :func:`experiment.npoe_grid`
(:data:`DIFFERENCES`: what it is, the authors' choice, ours before). The differences table
trains the authors' configuration (:data:`AUTHORS`) and, one row per difference, the same with
that one point switched back to ours, over three seeds, on the smallest training set on which No
defense still carries the backdoor (:func:`choose_n_train`), so that every row measures a
defense against a backdoor that is there. ``notebooks/npoe.config.yaml`` wrote this down before
the runs.

>>> rows = differences_configs("smoke", n_train=160, seeds=[0])  # every row
>>> list(rows)[:2], rows["dpoe_shallow"][0]["method"]
(['authors_npoe', 'pretrain_schedule'], 'dpoe')
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..params import check_choice, check_choices, check_int, check_list, check_positive
from ..runcache import RunCache
from .config import requires, run_label
from .experiment import npoe_grid
from .runs import run

# each difference as npoe_grid parameters: the authors' value and ours before (at quick)
DIFFERENCES = {
    "pretrain_schedule": dict(
        what="the experts' pre-training: its learning rate and length",
        authors_text="one epoch over the set, at the joint run's warm-up (batch k at k / warm-up x small_lr: close to a no-op)",
        ours_text="800 batches, with its own warm-up and decay",
        authors=dict(pretrain_schedule="authors", pretrain_epochs=1),
        ours=dict(pretrain_schedule="own", pretrain_epochs=200)),
    "pretrain_labels": dict(
        what="the experts' pre-training labels",
        authors_text="triggered rows the target, clean rows of class 0 kept as 0 (about 2/3 triggered)",
        ours_text="half triggered labelled 1, half clean rows of both classes labelled 0",
        authors=dict(pretrain_labels="authors"), ours=dict(pretrain_labels="own")),
    "pretrain_source": dict(
        what="the syntactic (and style) expert's pre-training sentences",
        authors_text="the attacked dataset (its dev rows; the same SCPN template, none other is offline)",
        ours_text="AG News SCPN paraphrases (style: another style of SST-2's training rows)",
        authors=dict(pretrain_source="attacked"), ours=dict(pretrain_source="own")),
    "expert_mode": dict(
        what="dropout in the experts and the gate",
        authors_text="none: eval mode, only the main model trains in train mode",
        ours_text="train mode (dropout 0.1)",
        authors=dict(expert_mode="eval"), ours=dict(expert_mode="train")),
    "learning_rates": dict(
        what="learning rates (main model; NPoE's experts and gate)",
        authors_text="2e-5; 5e-4 (small_lr's default)",
        ours_text="3e-5; 2e-5",
        authors=dict(lr=2e-5, small_lr=5e-4), ours=dict(lr=3e-5, small_lr=2e-5)),
    "dpoe_shallow": dict(
        what="DPoE's shallow model",
        authors_text="3 layers (their script sweeps 2-5), R-drop 3.0",
        ours_text="1 layer, R-drop 15",
        authors=dict(dpoe_layers=3, dpoe_rdrop_alpha=3.0), ours=dict(dpoe_layers=1, dpoe_rdrop_alpha=15.0)),
}
DPOE_ROWS = ("dpoe_shallow",)  # measured on DPoE; the others on NPoE
# the table's authors' configuration: every point at the authors' choice, NPoE at the example's
# β 1, the code's small_lr 5e-4 with the experts trained jointly; DPoE's expert at 8e-5
AUTHORS = {k: v for d in DIFFERENCES.values() for k, v in d["authors"].items()} | dict(
    beta=1.0, train_experts=True, dpoe_small_lr=8e-5, freeze_main_iters=0)
# ours before, at each profile: the npoe_grid parameters that give the page's configurations
# (and cache keys) as they were before the authors' choices became the defaults
OURS_BEFORE = {k: v for d in DIFFERENCES.values() for k, v in d["ours"].items()} | dict(train_experts=True,
                                                                                     dpoe_small_lr=8e-5)
OURS_BEFORE_BY_PROFILE = {
    "smoke": OURS_BEFORE | dict(pretrain_epochs=None, lr=None, small_lr=1e-4, dpoe_small_lr=None),
    "quick": OURS_BEFORE | dict(seeds=[0]),
    "paper": OURS_BEFORE | dict(pretrain_epochs=3, lr=None),
}


def ours_before(profile: str) -> dict:
    """The :func:`experiment.npoe_grid` parameters of the chapter as it ran before (a copy)."""
    return dict(OURS_BEFORE_BY_PROFILE[check_choice("profile", profile, OURS_BEFORE_BY_PROFILE)])


SEEDS = [0, 1, 2]
N_TRAIN_LADDER = [1000, 2000, 3000, 4000, 6920]
MIN_ASR = 80.0  # No defense's mean ASR on the chosen training set, at least
MIN_CACC = 80.0  # and its mean CACC: a model that answers the target for everything carries no trigger
DATASET, SETTING = "sst2", "mix3"
TABLE_ID = "npoe-differences"
COLUMNS = ["difference", "authors", "ours_before", "cacc", "asr", "cacc_sd", "asr_sd"]
REFERENCES = {"no_defense": "No defense (the authors' recipe)",
              "authors_npoe": "none: NPoE as the authors' code", "authors_dpoe": "none: DPoE as the authors' code"}


def _grid(profile: str, method: str, n_train: int, seeds, **params) -> list[dict]:
    return npoe_grid(profile, datasets=[DATASET], settings=[SETTING], methods=[method], seeds=list(seeds),
                     n_train=n_train, figures=[], **(AUTHORS | params)).table


def ladder_configs(profile: str, n_train: int, seeds=SEEDS) -> list[dict]:
    """No defense at the authors' recipe on ``n_train`` sentences, one run per seed."""
    return _grid(profile, "no_defense", n_train, seeds)


def choose_n_train(by_rung: dict[int, tuple[float, float]], ladder=N_TRAIN_LADDER, min_asr: float = MIN_ASR,
                   min_cacc: float = MIN_CACC) -> int | None:
    """The smallest rung of ``ladder`` at which No defense's mean (ASR, CACC) reach ``min_asr`` and
    ``min_cacc``; the largest if none does; None while the rungs measured so far leave it open.

    >>> choose_n_train({1000: (99.0, 50.0), 2000: (85.0, 86.0)}), choose_n_train({1000: (60.0, 85.0)})
    (2000, None)
    """
    for n in ladder:
        if n not in by_rung:
            return None
        asr, cacc = by_rung[n]
        if asr >= min_asr and cacc >= min_cacc:
            return n
    return ladder[-1]


def differences_configs(profile: str, n_train: int, seeds=SEEDS, rows=None) -> dict[str, list[dict]]:
    """Every row's runs (one per seed): No defense, the authors' NPoE, each NPoE difference switched
    back to ours, the authors' DPoE and DPoE's difference (``rows``: which differences; None: all)."""
    seeds = check_list("seeds", seeds, check_int, allow_none=False)
    wanted = list(DIFFERENCES) if rows is None else check_choices("rows", rows, DIFFERENCES)
    rows = {"authors_npoe": _grid(profile, "npoe", n_train, seeds)}
    rows |= {d: _grid(profile, "npoe", n_train, seeds, **DIFFERENCES[d]["ours"])
             for d in wanted if d not in DPOE_ROWS}
    rows["authors_dpoe"] = _grid(profile, "dpoe", n_train, seeds)
    rows |= {d: _grid(profile, "dpoe", n_train, seeds, **DIFFERENCES[d]["ours"]) for d in wanted if d in DPOE_ROWS}
    rows["no_defense"] = ladder_configs(profile, n_train, seeds)
    return rows


def differences_table(rows: dict[str, list]) -> pd.DataFrame:
    """The table of ``npoe-differences.csv``: per row, the mean and the sample sd over seeds of
    CACC and ASR (percent)."""
    out = []
    for name, runs in rows.items():
        cacc = np.array([r.metrics["cacc"] for r in runs], float)
        asr = np.array([r.metrics["asr"] for r in runs], float)
        sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else np.nan)
        d = DIFFERENCES.get(name)
        out.append({"difference": REFERENCES.get(name) or d["what"], "authors": d["authors_text"] if d else "",
                    "ours_before": d["ours_text"] if d else "", "cacc": cacc.mean(), "asr": asr.mean(),
                    "cacc_sd": sd(cacc), "asr_sd": sd(asr)})
    return pd.DataFrame(out, columns=COLUMNS)


# the ladder and seeds per profile (smoke: every code path, one tiny rung)
# (smoke: every code path, one tiny rung, one NPoE row whose experts are the reference's, DPoE's row)
PLANS = {"smoke": dict(ladder=[160], seeds=[0], rows=["expert_mode", "dpoe_shallow"]),
         "quick": dict(ladder=N_TRAIN_LADDER, seeds=SEEDS, rows=list(DIFFERENCES)),
         "paper": dict(ladder=N_TRAIN_LADDER, seeds=SEEDS, rows=list(DIFFERENCES))}


@dataclass
class Differences:
    n_train: int  # the training sentences the rows ran on
    by_rung: dict[int, tuple[float, float]]  # No defense's mean (ASR, CACC) per rung climbed
    runs: dict[str, list]  # each row's runs, one per seed
    table: pd.DataFrame  # :func:`differences_table`
    seeds: list[int]
    ladder_runs: list  # No defense on every rung climbed, all seeds


def differences_results(profile: str, cache: RunCache | None = None, seeds=None, ladder=None,
                        min_asr: float = MIN_ASR, min_cacc: float = MIN_CACC, executor=None,
                        force: bool = False) -> Differences:
    """Climb the ladder (No defense per rung, all seeds) until a rung carries the backdoor, then run
    every row there (``seeds``, ``ladder``: None, the profile's :data:`PLANS`)."""
    plan = PLANS[check_choice("profile", profile, PLANS)]
    seeds = check_list("seeds", seeds, check_int) or plan["seeds"]
    ladder = check_list("ladder", ladder, lambda n, v: check_int(n, v, 1)) or plan["ladder"]
    cache = cache or RunCache()
    min_asr, min_cacc = check_positive("min_asr", min_asr), check_positive("min_cacc", min_cacc)
    kw = dict(force=force, label=run_label, executor=executor, requires=requires)
    by_rung, n_train, climbed = {}, None, []
    for n in ladder:
        runs_ = cache.sweep(ladder_configs(profile, n, seeds), run, desc=f"No defense on {n:,} sentences", **kw)
        climbed += runs_
        by_rung[n] = tuple(float(np.mean([r.metrics[k] for r in runs_])) for k in ("asr", "cacc"))
        n_train = choose_n_train(by_rung, ladder, min_asr, min_cacc)
        if n_train is not None:
            break
    configs = differences_configs(profile, n_train, seeds, plan["rows"])
    loaded = cache.sweep_groups(configs, run, desc="the differences table", **kw)
    return Differences(n_train, by_rung, loaded, differences_table(loaded), list(seeds), climbed)
