"""RAP, Robustness-Aware Perturbations (Yang et al., 2021): a backdoored input is more robust
than a clean one, so a learned perturbation word barely lowers its target-class probability.

Construction (the authors' ``rap_defense.py``; OpenBackdoor's ``RAPDefender``): the RAP word
(``cf``) is put before each clean dev sentence of the protected (target) class, and only that
word's input-embedding row is trained, by plain gradient steps (lr 1e-2, batch 32, 5 epochs,
dev order, model in eval mode) on ``scale * mean(relu(d - a)) + mean(relu(b - d))`` with
``d = p_target(cf + x) - p_target(x)`` and ``(a, b) = prob_range = (-0.1, -0.3)``, so that the
word lowers the target probability of clean inputs by 0.1 to 0.3. After each step the row is
rescaled to its original norm; gradients accumulate over the steps (never zeroed), as in both
implementations. The original ``p_target(x)`` is taken without gradient: it depends on the
row only when ``cf`` already occurs in ``x``.

Detection: an input's drop is ``p_target(x) - p_target(cf + x)``; the threshold is the ``frr``
percentile (``np.nanpercentile``, default 1 %) of the drops of the clean dev target-class
sentences the model predicts as target. An input is flagged poisoned when the model predicts
the target for it and its drop is below the threshold; inputs predicted as another class are
never flagged (the authors only test inputs with the protected output).

All of it happens on a deep copy of the classifier's model: the caller's model is untouched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..params import ParameterError, check_fraction, check_int
from .models import TextClassifier, encode

RAP_WORD = "cf"
PROB_RANGE = (-0.1, -0.3)


def insert_word(sentences: Sequence[str], word: str = RAP_WORD) -> list[str]:
    """Each sentence with ``word`` as its first word."""
    return [" ".join([word] + s.split()) for s in sentences]


def fit_threshold(clean_drops, frr: float = 0.01) -> float:
    """The ``100 * frr``-th percentile (linear interpolation) of the clean drops."""
    frr = check_fraction("frr", frr)
    drops = np.asarray(clean_drops, dtype=float)
    if drops.size == 0 or np.isnan(drops).all():
        raise ParameterError("clean_drops", "at least one probability drop", list(drops))
    return float(np.nanpercentile(drops, 100 * frr))


def rap_drops(classifier: TextClassifier, sentences: Sequence[str], target: int,
              rap_word: str = RAP_WORD) -> tuple[np.ndarray, np.ndarray]:
    """(predicted as target?, target-probability drop when ``rap_word`` is inserted) per input."""
    probs = classifier.predict_proba(sentences)
    rap_probs = classifier.predict_proba(insert_word(sentences, rap_word))
    return probs.argmax(1) == target, probs[:, target] - rap_probs[:, target]


@dataclass
class RapDetector:
    """A model copy with the learned RAP word, and the threshold on its probability drops."""

    classifier: TextClassifier  # wraps the copy
    rap_word: str
    target: int
    threshold: float

    def detect(self, sentences: Sequence[str]) -> np.ndarray:
        """True for each input flagged poisoned: predicted as target, and its drop below the threshold."""
        as_target, drop = rap_drops(self.classifier, sentences, self.target, self.rap_word)
        return as_target & (drop < self.threshold)


def _token_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ParameterError("rap_word", "a word that is a single token of the classifier's vocabulary", word)
    return ids[0]


def fit_rap(classifier: TextClassifier, clean_dev_sentences: Sequence[str], clean_dev_labels, target: int = 1,
            rap_word: str = RAP_WORD, epochs: int = 5, lr: float = 1e-2, prob_range=PROB_RANGE,
            scale: float = 1.0, frr: float = 0.01, batch_size: int = 32) -> RapDetector:
    """Learn the RAP word's embedding on a copy of the classifier, and its detection threshold."""
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    frr = check_fraction("frr", frr)
    upper, lower = (float(p) for p in prob_range)  # (-0.1, -0.3): drop at least 0.1, at most 0.3
    if not -1 <= lower <= upper <= 0:
        raise ParameterError("prob_range", "(a, b) with -1 <= b <= a <= 0", prob_range)
    labels = np.asarray(clean_dev_labels)
    protected = [s for s, y in zip(clean_dev_sentences, labels) if y == target]
    if not protected:
        raise ParameterError("clean_dev_labels", f"at least one clean dev sentence of the target {target}",
                             sorted(set(labels.tolist())))

    model = copy.deepcopy(classifier.model).eval()
    tokenizer = classifier.tokenizer
    word_id = _token_id(tokenizer, rap_word)
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(True)
    norm = weight[word_id].norm().item()

    def target_prob(texts: list[str]) -> torch.Tensor:
        batch = encode(tokenizer, texts, classifier.max_length).to(weight.device)
        return torch.softmax(model(**batch).logits.float(), -1)[:, target]

    for _ in range(epochs):
        for start in range(0, len(protected), batch_size):
            texts = protected[start:start + batch_size]
            with torch.no_grad():
                p = target_prob(texts)
            d = target_prob(insert_word(texts, rap_word)) - p
            loss = scale * torch.relu(d - upper).mean() + torch.relu(lower - d).mean()
            loss.backward()
            with torch.no_grad():  # gradients accumulate across steps, as the authors' code
                row = weight[word_id] - lr * weight.grad[word_id]
                weight[word_id] = row * (norm / row.norm())
    weight.requires_grad_(False)
    weight.grad = None

    rap_classifier = TextClassifier(model, tokenizer, classifier.max_length, classifier.batch_size)
    as_target, drop = rap_drops(rap_classifier, protected, target, rap_word)
    if not as_target.any():
        raise ValueError(f"no clean dev sentence of class {target} is predicted as {target}: no RAP threshold")
    return RapDetector(rap_classifier, rap_word, target, fit_threshold(drop[as_target], frr))
