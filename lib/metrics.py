"""Attack and accuracy metrics, in percent.

ASR counts only samples whose true label differs from the target: a target-class
image classified as the target is no evidence of a backdoor.
"""
from __future__ import annotations

import numpy as np


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return float((pred == labels).mean() * 100)


def attack_success_rate(pred_triggered, labels, target: int) -> float:
    """% of triggered non-target samples predicted as ``target``."""
    pred, labels = np.asarray(pred_triggered), np.asarray(labels)
    keep = labels != target
    if not keep.any():
        raise ValueError("no non-target samples to measure the attack on")
    return float((pred[keep] == target).mean() * 100)


def clean_accuracy_drop(clean_model_accuracy: float, backdoored_accuracy: float) -> float:
    """CAD: clean model's accuracy minus the backdoored model's clean accuracy (BA)."""
    return float(clean_model_accuracy - backdoored_accuracy)
