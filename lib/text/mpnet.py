"""Chapter 3 at base size: No defense, Benign, DPoE and NPoE on SST-2 under the 3-trigger mix
with MPNet-base (109 M parameters, BERT-base's size), at ``quick``.

Does the gap between the paper's NPoE and ours close with a base-size encoder? The section
trains on as much of SST-2 as the time allows: MPNet's seconds per batch are measured once on
this machine (:func:`step_seconds`, a cached run) and the largest rung of the ladder whose
estimated cost fits the budget is trained (:func:`choose_n_train`). NPoE runs as the differences
table's authors' configuration (β 1, experts at 5e-4, trained jointly), DPoE with the authors'
three-layer shallow model; ``notebooks/npoe.config.yaml`` wrote this down before the runs.

>>> choose_n_train(1.5)  # seconds per batch -> the training sentences
2000

Where No defense's ASR on that rung is below 80 % there is no backdoor to remove, and the section
climbs the ladder until there is (:func:`backdoored_rung`), whatever it costs beyond the budget.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..params import check_positive
from ..runcache import RunCache
from .config import SCHEMA, profile as profile_settings
from .data import load_split
from .models import load_classifier, load_tokenizer
from .training import Recipe, Tokenized, train_classifier

ENCODER = "mpnet-base"
SEED = 0
METHODS = ["no_defense", "benign", "dpoe", "npoe"]
NPOE = dict(beta=1.0, small_lr=5e-4, train_experts=True)  # the differences table's authors' NPoE
N_TRAIN_LADDER = [1000, 2000, 3000, 4000, 6920]
BUDGET_MINUTES = 50  # training; about 10 more for evaluation
COST_FACTOR = 6.5  # the four methods' batches in No defense batches (R-drop's two passes, the experts)
# notebooks/npoe.config.yaml's amendment: from the budget's rung up until No defense carries the
# backdoor (its ASR at least this), whatever it costs beyond the budget
MIN_ASR = 80.0
TIMING_CHAPTER = "npoe-step-time"
TIMED_BATCHES = 6  # after one warm-up batch


def timing_config(profile: str, encoder: str = ENCODER) -> dict:
    """The step-time measurement as a run of its own (its cache key: what the time depends on)."""
    p = profile_settings(profile)
    return {"schema": SCHEMA, "chapter": TIMING_CHAPTER, "encoder": encoder, "max_length": p["max_length"],
            "batch_size": p["recipe"]["batch_size"], "batches": TIMED_BATCHES}


def measure(config: dict, deps=()) -> tuple[dict, dict]:
    """Seconds per No defense training batch of ``config["encoder"]`` on SST-2 (length-bucketed,
    the chapter's recipe), after one warm-up batch."""
    train = load_split("sst2", "train")
    n = (config["batches"] + 1) * config["batch_size"]
    data = Tokenized(load_tokenizer(config["encoder"]), train.subset(np.arange(n)), config["max_length"])
    recipe = Recipe(epochs=1, batch_size=config["batch_size"], max_length=config["max_length"])
    model = load_classifier(config["encoder"], 2)
    train_classifier(model, data, recipe, max_steps=1, progress=False)  # warm-up
    start = time.perf_counter()
    train_classifier(model, data, recipe, max_steps=config["batches"], progress=False)
    return {"seconds_per_batch": (time.perf_counter() - start) / config["batches"]}, {}


def step_seconds(profile: str = "quick", cache: RunCache | None = None) -> float:
    """MPNet-base's measured seconds per training batch (measured once, then cached)."""
    run_, = (cache or RunCache()).sweep([timing_config(profile)], measure, desc="timing MPNet-base",
                                        label=lambda c: f"{c['encoder']}: seconds per batch")
    return run_.metrics["seconds_per_batch"]


def estimated_minutes(n_train: int, seconds_per_batch: float, epochs: int = 2, batch_size: int = 16) -> float:
    """The four methods' training minutes on ``n_train`` sentences."""
    return COST_FACTOR * seconds_per_batch * epochs * -(-n_train // batch_size) / 60


def choose_n_train(seconds_per_batch: float, ladder=N_TRAIN_LADDER, budget: float = BUDGET_MINUTES,
                   epochs: int = 2, batch_size: int = 16) -> int:
    """The largest rung whose estimated training fits ``budget`` minutes (the smallest if none does)."""
    check_positive("seconds_per_batch", seconds_per_batch)
    fits = [n for n in ladder if estimated_minutes(n, seconds_per_batch, epochs, batch_size) <= budget]
    return max(fits) if fits else min(ladder)


def backdoored_rung(start: int, no_defense_asr: Callable[[int], float], ladder=N_TRAIN_LADDER,
                    min_asr: float = MIN_ASR) -> tuple[int, dict[int, float]]:
    """From rung ``start`` up the ladder: the first rung on which No defense's ASR (trained on
    demand by ``no_defense_asr``) is at least ``min_asr`` (the largest if none), and the ASR of
    every rung tried.

    >>> backdoored_rung(4000, {4000: 71.8, 6920: 85.0}.get)
    (6920, {4000: 71.8, 6920: 85.0})
    >>> backdoored_rung(2000, {2000: 90.0}.get)
    (2000, {2000: 90.0})
    """
    tried = {}
    for rung in [r for r in ladder if r >= start] or [max(ladder)]:
        tried[rung] = no_defense_asr(rung)
        if tried[rung] >= min_asr:
            break
    return rung, tried


def mpnet_grid_args(profile: str, n_train: int) -> dict:
    """The :func:`experiment.npoe_grid` parameters of the section's four runs."""
    return dict(datasets=["sst2"], settings=["mix3"], methods=METHODS, seeds=[SEED], encoder=ENCODER,
                n_train=n_train, figures=[], **NPOE)
