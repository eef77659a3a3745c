"""STRIP for text (Gao et al., 2021; OpenBackdoor's ``STRIPDefender``): a backdoored input
keeps its (target) prediction however much of it is perturbed, so the classifier's
prediction on perturbed copies has a low entropy.

Each input is perturbed ``repeat`` times (default 5). A perturbation replaces
``int(swap_ratio * n_words)`` (default half) of its whitespace words, at positions drawn
without replacement, by the most important words of a randomly drawn clean held-out
sentence: that sentence's words ranked by tf-idf over the clean pool (as OpenBackdoor,
scikit-learn's ``TfidfVectorizer(smooth_idf=True, norm=None)`` weights: raw count times
``ln((1 + n) / (1 + df)) + 1``, lower-cased tokens of two or more word characters). When that
sentence has too few words, the next words come from another drawn sentence. Differences to
OpenBackdoor: positions are distinct (it draws them with replacement), there is no stop-word
list (stop words rank last by tf-idf anyway), and the entropy (natural log; the base does
not change which inputs are flagged) is averaged over each input's own copies. The
threshold is the clean dev entropy that a share ``frr`` (default 1 %) of the clean dev
inputs lies below; an input below it is flagged poisoned.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

from ..params import ParameterError, check_fraction, check_int

TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


def entropy(probs) -> np.ndarray:
    """Shannon entropy (nats) of each row of class probabilities, with ``0 ln 0 = 0``."""
    p = np.asarray(probs, dtype=float)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(-1)


def ranked_words(clean_pool: Sequence[str]) -> list[list[str]]:
    """For each clean sentence, its distinct tokens by decreasing tf-idf over the pool
    (ties: first occurrence first)."""
    tokens = [TOKEN.findall(s.lower()) for s in clean_pool]
    df = Counter(w for t in tokens for w in set(t))
    n = len(tokens)
    ranked = []
    for t in tokens:
        tf = Counter(t)
        weight = {w: c * (math.log((1 + n) / (1 + df[w])) + 1) for w, c in tf.items()}
        ranked.append(sorted(tf, key=lambda w: -weight[w]))  # sorted is stable; Counter keeps order
    return ranked


def perturb(sentence: str, ranked: list[list[str]], swap_ratio: float, rng: np.random.Generator) -> str:
    """One STRIP copy: ``int(swap_ratio * n)`` words replaced by the top tf-idf words of
    randomly drawn clean sentences."""
    words = sentence.split()
    m = int(len(words) * swap_ratio)
    donors = [r for r in ranked if r]
    replacements: list[str] = []
    while len(replacements) < m:
        replacements += donors[rng.integers(len(donors))]
    for pos, word in zip(rng.choice(len(words), m, replace=False), replacements):
        words[pos] = word
    return " ".join(words)


def strip_entropies(classifier, sentences: Sequence[str], clean_pool: Sequence[str], repeat: int = 5,
                    swap_ratio: float = 0.5, seed: int = 0) -> np.ndarray:
    """Mean prediction entropy over ``repeat`` perturbed copies of each sentence.

    ``classifier`` is anything with ``.predict_proba(sentences)`` (a ``TextClassifier``);
    the replacement words come from ``clean_pool`` (clean held-out sentences).
    """
    repeat = check_int("repeat", repeat, minimum=1)
    swap_ratio = check_fraction("swap_ratio", swap_ratio)
    ranked = ranked_words(clean_pool)
    if not any(ranked):
        raise ParameterError("clean_pool", "clean sentences with at least one word", list(clean_pool)[:3])
    rng = np.random.default_rng(seed)
    copies = [perturb(s, ranked, swap_ratio, rng) for s in sentences for _ in range(repeat)]
    if not copies:
        return np.zeros(0)
    probs = classifier.predict_proba(copies)
    return entropy(probs).reshape(len(sentences), repeat).mean(1)


def fit_threshold(clean_dev_entropies, frr: float = 0.01) -> float:
    """The ``int(n * frr)``-th smallest clean dev entropy (0-based, OpenBackdoor's rule):
    at most a share ``frr`` of the clean dev inputs lie strictly below it."""
    frr = check_fraction("frr", frr)
    values = np.sort(np.asarray(clean_dev_entropies, dtype=float))
    if values.size == 0:
        raise ParameterError("clean_dev_entropies", "at least one value", [])
    return float(values[min(int(len(values) * frr), len(values) - 1)])


def detect(classifier, sentences: Sequence[str], clean_dev: Sequence[str], repeat: int = 5,
           swap_ratio: float = 0.5, frr: float = 0.01, seed: int = 0) -> np.ndarray:
    """True for each input flagged poisoned: its STRIP entropy is below the clean dev threshold.

    The clean dev sentences are both the replacement pool and the threshold's reference.
    """
    frr = check_fraction("frr", frr)
    threshold = fit_threshold(strip_entropies(classifier, clean_dev, clean_dev, repeat, swap_ratio, seed), frr)
    return strip_entropies(classifier, sentences, clean_dev, repeat, swap_ratio, seed) < threshold
