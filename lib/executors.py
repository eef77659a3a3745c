"""Where a sweep's missing runs are trained: the executor.

``local`` (the default) trains them one after another in this process. The user picks
another with ``MOEBD_EXECUTOR`` (or the ``executor`` argument of :meth:`RunCache.sweep`),
so that a notebook runs unchanged at any scale.

An executor's ``run(cache, configs, fn, label)`` trains every configuration with
``fn(config) -> (metrics, tensors)`` and stores each through ``cache.save`` (atomic).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from tqdm.auto import tqdm

from . import progress

ENV = "MOEBD_EXECUTOR"


class LocalExecutor:
    """Train the runs in this process, in order; a run that raises stops the sweep."""

    name = "local"

    def run(self, cache, configs: list[dict], fn: Callable, label: Callable[[dict], str]) -> None:
        for config in tqdm(configs, desc="training", disable=not configs):
            progress.emit("run_start", label=label(config))
            start = time.perf_counter()
            try:
                metrics, tensors = fn(config)
            except Exception as exc:
                progress.emit("run_failed", label=label(config), error=f"{type(exc).__name__}: {exc}")
                raise
            cache.save(config, metrics, tensors)
            progress.emit("run_done", label=label(config), seconds=time.perf_counter() - start)


EXECUTORS = {"local": LocalExecutor}


def resolve(executor=None):
    """An executor object from a name, an object, or ``MOEBD_EXECUTOR`` (default ``local``)."""
    if executor is not None and not isinstance(executor, str):
        return executor
    name = executor or os.environ.get(ENV) or "local"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r} (from {'the argument' if executor else ENV}); "
                         f"choose one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]()
