"""Dirty-label, source-agnostic poisoning of an image training set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..params import check_fraction
from .triggers import Trigger, WarpTrigger


def check_rate(rate, name: str = "poison_rate") -> float:
    return check_fraction(name, rate, "a fraction in [0, 1] (0.02 for 2 %)")


@dataclass
class PoisonedSet:
    x: torch.Tensor
    y: torch.Tensor
    poison_idx: np.ndarray   # relabelled to the target, trigger added
    cross_idx: np.ndarray    # WaNet noise-mode samples, labels kept


def poison_training_set(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, rate: float,
                        target: int = 0, seed: int = 0, cross_ratio: float = 0.0) -> PoisonedSet:
    """Replace ``int(rate * N)`` samples, drawn from every class without replacement,
    by their triggered versions labelled ``target``.

    ``cross_ratio > 0`` adds WaNet's noise-mode samples (``int(cross_ratio * n)``
    other images, randomly re-warped, labels unchanged); only the original
    WaNet variant has them.
    """
    rate = check_rate(rate)
    n_classes = int(y.max()) + 1
    if not 0 <= target < n_classes:
        raise ValueError(f"target {target} is not one of the {n_classes} classes")
    rng = np.random.default_rng(seed)
    n = int(rate * len(y))
    order = rng.permutation(len(y))
    poison_idx = np.sort(order[:n])
    x, y = x.clone(), y.clone()
    if n:
        x[poison_idx] = trigger(x[poison_idx])
        y[poison_idx] = target
    cross_idx = np.array([], dtype=np.int64)
    if cross_ratio:
        if not (isinstance(trigger, WarpTrigger) and trigger.variant == "wanet"):
            raise ValueError("cross_ratio (noise mode) needs the warp trigger with variant='wanet'")
        n_cross = min(int(cross_ratio * n), len(y) - n)
        cross_idx = np.sort(order[n:n + n_cross])
        g = torch.Generator().manual_seed(seed + 1)
        x[cross_idx] = trigger.noise_mode(x[cross_idx], g)
    return PoisonedSet(x, y, poison_idx, cross_idx)


def triggered_test_set(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, target: int = 0):
    """Every test image whose true label is not the target, with the trigger added."""
    keep = y != target
    return trigger(x[keep]), y[keep]
