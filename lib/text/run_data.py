"""The data one run of chapter 3 sees: its training subset and that subset poisoned, the clean
dev sentences a defense fits its thresholds on, and its test sets (cut at ``smoke``).

Every subset is drawn with a fixed seed, so a run's data follow from its configuration.
"""
from __future__ import annotations

import numpy as np

from .data import TextSet, load_split
from .poisoning import poison_training_set, triggered_test_set


def training_set(config: dict):
    """The run's training subset (seeded) and its poisoned version (the poison is drawn on the subset)."""
    full = load_split(config["dataset"], "train")
    rows = np.arange(len(full))
    if config["n_train"] is not None:
        rows = np.sort(np.random.default_rng(config["seed"]).permutation(len(full))[:config["n_train"]])
    clean = full.subset(rows)
    return clean, poison_training_set(clean, config["rates"], config["dataset"], config["target"],
                                      config["seed"], config["style"], rows_in_full=rows)


def dev_set(dataset: str, n: int | None = None) -> TextSet:
    """The clean dev set, or ``n`` of its sentences drawn with seed 0."""
    dev = load_split(dataset, "dev")
    return dev if not n else dev.subset(np.random.default_rng(0).permutation(len(dev))[:n])


def cut(s: TextSet, n: int | None) -> TextSet:
    """``n`` sentences of a test set, drawn with seed 0 (smoke only), else the whole set."""
    return s if n is None or n >= len(s) else s.subset(np.random.default_rng(0).permutation(len(s))[:n])


def evaluation_sets(config: dict, n: int | None = None) -> tuple[TextSet, dict[str, TextSet]]:
    """The clean test set and each trigger's triggered non-target test set, cut to ``n``."""
    clean = cut(load_split(config["dataset"], "test"), n)
    return clean, {t: cut(triggered_test_set(config["dataset"], t, config["target"], config["seed"], config["style"]), n)
                   for t in config["rates"]}
