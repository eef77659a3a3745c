"""Batches for variable-length sequences, shared by the text and LLM domains."""
from __future__ import annotations

import numpy as np


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     bucket_batches: int = 50) -> list[np.ndarray]:
    """Shuffle, sort by length within chunks of ``bucket_batches`` batches, cut into batches,
    and shuffle the batches: every sample once, little padding, still random."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def plain_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
