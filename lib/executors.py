"""Where a sweep's missing runs are trained: the executor.

``local`` (the default) trains them one after another in this process. ``ray`` spreads them
over a Ray cluster (``pip install "moebackdoor[cluster]"``). The user picks one with
``MOEBD_EXECUTOR`` (or the ``executor`` argument of :meth:`RunCache.sweep`), so that a
notebook runs unchanged at any scale.

An executor's ``run(cache, configs, fn, label)`` trains every configuration with
``fn(config) -> (metrics, tensors)`` and stores each through ``cache.save`` (atomic).

The ``ray`` executor:

- connects to the cluster that ``RAY_ADDRESS`` names (without it, starts a local instance),
  unless Ray is already initialised in this process;
- submits each missing run as one task that trains and writes its run directory itself,
  through the same atomic ``cache.save``: the cache root (and ``MOEBD_CACHE_DIR``,
  ``MOEBD_DATA_DIR``) must be a directory every node mounts at the same path. The driver's
  ``MOEBD_*`` variables reach the tasks (``runtime_env``); worker output stays in Ray's logs;
- asks for ``MOEBD_RAY_CPUS`` CPUs per task (default 1; torch uses as many threads) and
  ``MOEBD_RAY_GPUS`` GPUs (default: 1 when the cluster has a GPU, else 0; fractions share one);
- retries a task whose worker died (``max_retries``, default 3); a run that raises is not
  retried: the others go on and are cached, then :class:`SweepError` lists the failed runs.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import progress

ENV = "MOEBD_EXECUTOR"
INSTALL_HINT = 'pip install "moebackdoor[cluster]"'


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others finished and are cached."""

    def __init__(self, failures: list[tuple[str, dict, str]]):
        self.failures = failures  # (label, config, error) per failed run
        lines = [f"{len(failures)} run(s) failed; the others are cached, and running the sweep "
                 "again trains only what is missing:"]
        lines += [f"- {lab}: {err}\n  config: {json.dumps(cfg, sort_keys=True)}" for lab, cfg, err in failures]
        super().__init__("\n".join(lines))


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


def _train_and_save(cache, config: dict, fn: Callable, threads: int) -> float:
    """One Ray task: train ``config`` and write its run directory into the shared cache."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    metrics, tensors = fn(config)
    cache.save(config, metrics, tensors)
    return time.perf_counter() - start


class RayExecutor:
    """One Ray task per missing run (see the module's docstring)."""

    name = "ray"

    def __init__(self, num_cpus: float | None = None, num_gpus: float | None = None, max_retries: int = 3):
        try:
            import ray
        except ImportError as exc:
            raise ImportError(f"the ray executor needs Ray: {INSTALL_HINT}") from exc
        self.ray = ray
        self.num_cpus = float(num_cpus if num_cpus is not None else os.environ.get("MOEBD_RAY_CPUS", 1))
        gpus = num_gpus if num_gpus is not None else os.environ.get("MOEBD_RAY_GPUS")
        self.num_gpus = None if gpus is None else float(gpus)
        self.max_retries = max_retries

    def _running(self, pending: int, gpus: float) -> int:
        """How many of the pending tasks the cluster runs now (the rest wait in Ray's queue)."""
        res = self.ray.cluster_resources()
        slots = [res.get("CPU", 0) // self.num_cpus] if self.num_cpus else []
        slots += [res.get("GPU", 0) // gpus] if gpus else []
        return int(min(slots + [pending]))

    def run(self, cache, configs: list[dict], fn: Callable, label: Callable[[dict], str]) -> None:
        if not configs:
            return
        ray = self.ray
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        gpus = self.num_gpus if self.num_gpus is not None else float(ray.cluster_resources().get("GPU", 0) > 0)
        env = {k: v for k, v in os.environ.items() if k.startswith("MOEBD_") and k not in (ENV, progress.ENV)}
        task = ray.remote(_train_and_save).options(
            num_cpus=self.num_cpus, num_gpus=gpus, max_retries=self.max_retries,
            retry_exceptions=False, runtime_env={"env_vars": env})
        threads = max(1, int(self.num_cpus))
        pending = {task.remote(cache, config, fn, threads): config for config in configs}
        failures, first_error = [], None
        bar = tqdm(total=len(configs), desc="training on Ray")

        def report():
            running = self._running(len(pending), gpus)
            bar.set_postfix(running=running, failed=len(failures))
            progress.emit("running", running=running, done=bar.n - len(failures), failed=len(failures))

        try:
            report()
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                config = pending.pop(ref)
                try:
                    seconds = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
                    error = f"{type(cause).__name__}: {cause}".splitlines()[0]
                    failures.append((label(config), config, error))
                    first_error = first_error or exc
                    progress.emit("run_failed", label=label(config), error=error)
                else:
                    progress.emit("run_done", label=label(config), seconds=seconds)
                bar.update()
                report()
        except BaseException:  # interrupted: free the cluster; finished runs stay cached
            for ref in pending:
                ray.cancel(ref)
            raise
        finally:
            bar.close()
        if failures:
            raise SweepError(failures) from first_error


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def resolve(executor=None):
    """An executor object from a name, an object, or ``MOEBD_EXECUTOR`` (default ``local``)."""
    if executor is not None and not isinstance(executor, str):
        return executor
    name = executor or os.environ.get(ENV) or "local"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r} (from {'the argument' if executor else ENV}); "
                         f"choose one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]()
