"""Chapter 3's defenses on No defense's trained model, one function each, in one table
(:data:`DEFENDERS`, as OpenBackdoor's): adding a defense is one function and one line.

At test time ``onion`` rewrites inputs, ``strip`` and ``rap`` reject inputs; ``bki`` lets the
model name suspected trigger words, drops the training sentences holding them and trains a new
model. Their settings are OpenBackdoor's defaults (:data:`config.DEFENSE_PARAMS`), fitted on the
clean dev set only (STRIP's and RAP's thresholds at a 1 % false rejection rate).

A defense is ``fn(config, classifier, dev) -> (metrics, tensors)``: ``classifier`` is the No
defense model (:func:`config.base_config`), ``dev`` the clean dev sentences it may fit on.
"""
from __future__ import annotations

import time

import numpy as np

from . import bki, onion, rap, strip
from .config import run_label
from .evaluation import evaluate
from .methods import main_model
from .models import TextClassifier, load_tokenizer
from .run_data import dev_set, training_set
from .training import Recipe, Tokenized, train_classifier


def onion_defense(config: dict, classifier: TextClassifier, dev) -> tuple[dict, dict]:
    """ONION: drop the words whose removal lowers GPT-2's perplexity (on ``n_test`` test sentences per set)."""
    d = config["defense"]
    lm = onion.Perplexity(precision=d.get("precision", "fp32"))
    rewrite = lambda s: (onion.onion_filter(s, lm, d["threshold"], progress=False), np.ones(len(s), dtype=bool))
    return {"lm_precision": lm.precision, **evaluate(classifier, dict(config, n_test=d["n_test"]), rewrite)}, {}


def strip_defense(config: dict, classifier: TextClassifier, dev) -> tuple[dict, dict]:
    """STRIP: reject inputs whose prediction entropy under word swaps is low."""
    d = config["defense"]
    entropies = lambda s: strip.strip_entropies(classifier, s, dev.sentences, d["repeat"], d["swap_ratio"], config["seed"])
    threshold = strip.fit_threshold(entropies(dev.sentences), d["frr"])
    metrics = {"threshold": float(threshold)}
    return metrics | evaluate(classifier, config, lambda s: (s, entropies(s) >= threshold)), {}


def rap_defense(config: dict, classifier: TextClassifier, dev) -> tuple[dict, dict]:
    """RAP: a learned perturbation word; reject inputs whose target probability barely drops."""
    d = config["defense"]
    detector = rap.fit_rap(classifier, dev.sentences, dev.labels, config["target"], d["rap_word"], d["epochs"],
                           d["lr"], tuple(d["prob_range"]), frr=d["frr"])
    metrics = {"threshold": float(detector.threshold)}
    return metrics | evaluate(classifier, config, lambda s: (s, ~detector.detect(s))), {}


def bki_defense(config: dict, classifier: TextClassifier, dev) -> tuple[dict, dict]:
    """BKI: drop the training sentences holding the suspected words, train anew."""
    d = config["defense"]
    _, poisoned = training_set(config)
    scored = poisoned.data.sentences
    if d.get("n_score") is not None and d["n_score"] < len(scored):  # quick: the statistics on a seeded subset
        pick = np.sort(np.random.default_rng(config["seed"]).permutation(len(scored))[:d["n_score"]])
        scored = [scored[i] for i in pick]
    keywords = bki.bki_keywords(classifier, scored, d["top_k"], d["n_keywords"])
    keep = bki.bki_filter(poisoned.data.sentences, keywords)
    metrics = {"n_scored": len(scored), "keywords": [[w, float(v)] for w, v in keywords],
               "removed": int((~keep).sum()),
               "removed_poison": {t: int((~keep[i]).sum()) for t, i in poisoned.poison_idx.items()}}
    recipe, tokenizer, model = Recipe(**config["recipe"]), load_tokenizer(config["encoder"]), main_model(config)
    kept = poisoned.data.subset(np.flatnonzero(keep))
    metrics["history"] = train_classifier(model, Tokenized(tokenizer, kept, recipe.max_length), recipe,
                                          config["seed"], desc=run_label(config))
    metrics.update(evaluate(TextClassifier(model, tokenizer, recipe.max_length), config))
    return metrics, {f"model.{k}": v for k, v in model.state_dict().items()}


DEFENDERS = {"onion": onion_defense, "strip": strip_defense, "rap": rap_defense, "bki": bki_defense}


def defend(config: dict, classifier: TextClassifier) -> tuple[dict, dict]:
    """Apply ``config``'s defense to No defense's ``classifier``: its metrics (with the defense's
    own seconds) and tensors (BKI's new model)."""
    dev = dev_set(config["dataset"], config["defense"].get("n_dev"))
    start = time.perf_counter()
    metrics, tensors = DEFENDERS[config["method"]](config, classifier, dev)
    metrics["defense_seconds"] = time.perf_counter() - start
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return metrics, tensors
