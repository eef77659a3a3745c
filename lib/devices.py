"""Where models run: ``MOEBD_DEVICE`` if set, else CUDA when present, else the CPU; and in which
precision the fast training paths compute.

bf16 autocast pays only where the hardware multiplies bf16 faster than fp32, and the CPU's flags
do not say where: on an Intel CPU with avx512_bf16 but no AMX, bf16 matmuls measured 2x *slower*
than fp32 (92 against 206 GFLOP/s), on an AMD EPYC with the same flags 2.7x faster (388 against 145). :func:`fast_precision` therefore measures both once per process
and picks the faster; ``MOEBD_PRECISION=bf16|fp32`` overrides the choice.
"""
from __future__ import annotations

import functools
import os
import time

import torch

PRECISIONS = ("bf16", "fp32")


def default_device() -> torch.device:
    name = os.environ.get("MOEBD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _matmul_seconds(dtype: torch.dtype, n: int = 384, m: int = 512, k: int = 1536, reps: int = 20) -> float:
    """The best of three timings of ``reps`` (m x n) @ (n x k) products: a transformer FFN's shape."""
    a, b = torch.randn(m, n, dtype=dtype), torch.randn(n, k, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def _cpu_precision() -> str:
    # on its own random stream: the first call comes inside a seeded training run, whose dropout
    # masks must not depend on whether this process has measured already
    with torch.random.fork_rng(devices=[]):
        return "bf16" if _matmul_seconds(torch.bfloat16) * 1.1 < _matmul_seconds(torch.float32) else "fp32"


def fast_precision(device: torch.device | None = None) -> str:
    """``"bf16"`` or ``"fp32"``: the precision of the library's fast training step on ``device``."""
    forced = os.environ.get("MOEBD_PRECISION")
    if forced:
        if forced not in PRECISIONS:
            raise ValueError(f"MOEBD_PRECISION must be one of {PRECISIONS}, got {forced!r}")
        return forced
    device = device or default_device()
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return _cpu_precision() if device.type == "cpu" else "fp32"
