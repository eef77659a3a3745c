"""A run cache: one directory per configuration, written atomically.

A run directory is named by a hash of its full configuration and holds
``config.json``, ``metrics.json`` and ``tensors.safetensors`` (the model's state
and anything else the run must keep, such as a random trigger). A directory
appears only once all three are written, so an interrupted sweep leaves no
half-written result and resumes at the first run that is missing.

Runs may need other runs: a defense needs the model it defends. A domain says so with
``requires(config) -> [configs]``; :meth:`RunCache.sweep` then trains what is missing layer by
layer (the runs nothing missing is needed for first, then the runs that need them), each layer
through the same executor and this same cache, and hands each run its dependencies, loaded.
So a dependency is trained once, even when many runs that need it go out at once on a cluster,
and no run function opens a cache of its own.

A save interrupted by a killed process leaves a ``.tmp-*`` folder; a cache removes those that
nobody has written to for a day (``STALE_S``) when it opens.

>>> cache = RunCache(tmp_path)
>>> run = cache.get_or_run({"lr": 0.1}, lambda cfg: ({"acc": 0.5}, {}))
>>> runs = cache.sweep([defense], train, requires=lambda c: [c["attack"]] if "attack" in c else [])
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file

from . import executors, paths, progress

Tensors = dict[str, torch.Tensor]
RunFn = Callable[[dict], "tuple[dict, Tensors]"]
Requires = Callable[[dict], "list[dict]"]
STALE_S = 24 * 3600  # a temporary folder untouched this long belongs to a save that died


def config_hash(config: dict) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Run:
    config: dict
    metrics: dict
    path: Path

    def tensors(self) -> Tensors:
        return load_file(self.path / "tensors.safetensors")


class RunCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else paths.runs_dir()
        self.remove_stale()

    def remove_stale(self, older_than_s: float = STALE_S) -> list[str]:
        """Remove the temporary folders of saves that died (none written to for ``older_than_s``);
        a save in progress writes into its folder within seconds, so it is never one of them."""
        removed = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for tmp in [*self.root.glob(".tmp-*"), *self.root.glob(".old-*")]:
            try:
                newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
                if now - newest > older_than_s:
                    shutil.rmtree(tmp)
                    removed.append(tmp.name)
            except FileNotFoundError:  # another process finished (or removed) it meanwhile
                continue
        return removed

    def path(self, config: dict) -> Path:
        return self.root / config_hash(config)

    def has(self, config: dict) -> bool:
        return (self.path(config) / "metrics.json").is_file()

    def load(self, config: dict) -> Run:
        path = self.path(config)
        metrics = json.loads((path / "metrics.json").read_text())
        return Run(json.loads((path / "config.json").read_text()), metrics, path)

    def save(self, config: dict, metrics: dict, tensors: Tensors) -> Run:
        final = self.path(config)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  tmp / "tensors.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        if final.exists():  # a forced re-run replaces the old result
            old = self.root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        return Run(config, metrics, final)

    def get_or_run(self, config: dict, fn: RunFn, force: bool = False) -> Run:
        """Load the run for ``config``, or compute it with ``fn(config)`` and store it."""
        if self.has(config) and not force:
            return self.load(config)
        metrics, tensors = fn(config)
        return self.save(config, metrics, tensors)

    def sweep(self, configs: Iterable[dict], fn: RunFn, force: bool = False, desc: str = "runs",
              label: Callable[[dict], str] | None = None, executor=None,
              requires: Requires | None = None) -> list[Run]:
        """Run every configuration missing from the cache, then load them all, in order.

        The missing runs go to ``executor`` (a name or an object; default ``MOEBD_EXECUTOR``,
        else ``local``: see :mod:`moebackdoor.executors`). ``label`` names a run in progress reports.

        ``requires(config)`` lists the runs a configuration needs (trained by the same ``fn``);
        with it, ``fn(config, deps)`` receives them as loaded :class:`Run` objects, in that order.
        The missing runs are trained in layers (:meth:`plan`): dependencies first, each once.
        ``force`` retrains ``configs`` themselves, not what they need.
        """
        configs = list(configs)
        layers = self.plan(configs, requires, force)
        ex = executors.resolve(executor)
        run_fn = fn if requires is None else WithDependencies(fn, requires, self)
        label = label or default_label
        if len(layers) <= 1:  # one sweep as ever: every run asked for, the cached ones counted
            steps = [(desc, len({config_hash(c) for c in configs}), layers[0] if layers else [], {})]
        else:
            steps = [(f"{desc}, layer {i + 1} of {len(layers)} "
                      f"({'needed by the next' if i < len(layers) - 1 else 'the runs asked for'})",
                      len(layer), layer, {"layer": i + 1, "layers": len(layers)}) for i, layer in enumerate(layers)]
        for text, total, todo, where in steps:
            progress.emit("sweep", desc=text, total=total, todo=len(todo), **where)
            try:
                ex.run(self, todo, run_fn, label)
            finally:
                progress.emit("sweep_done")
        return [self.load(c) for c in configs]

    def sweep_groups(self, groups: dict[str, list[dict]], fn: RunFn, **kwargs) -> dict[str, list[Run]]:
        """:meth:`sweep` over named groups of configurations at once (one sweep, so that a
        cluster gets every missing run together): the runs, by the same names."""
        flat = [c for configs in groups.values() for c in configs]
        runs = iter(self.sweep(flat, fn, **kwargs))
        return {name: [next(runs) for _ in configs] for name, configs in groups.items()}

    def plan(self, configs: Iterable[dict], requires: Requires | None = None,
             force: bool = False) -> list[list[dict]]:
        """The missing runs in the order they can be trained: layer 0 needs nothing that is
        missing, layer k needs only runs of layers below k. A run that is cached (and not forced)
        is not looked into: what it needed was there when it ran."""
        asked = {config_hash(c): c for c in configs}
        depth: dict[str, int | None] = {}  # None: cached, nothing to train
        visiting: set[str] = set()
        order: list[tuple[str, dict]] = []

        def visit(c: dict) -> int | None:
            h = config_hash(c)
            if h in depth:
                return depth[h]
            if h in visiting:
                raise ValueError(f"runs that need each other: {json.dumps(c, sort_keys=True)[:200]}")
            if self.has(c) and not (force and h in asked):
                depth[h] = None
                return None
            visiting.add(h)
            below = [visit(d) for d in (requires(c) if requires is not None else [])]
            visiting.discard(h)
            depth[h] = 1 + max([d for d in below if d is not None], default=-1)
            order.append((h, c))
            return depth[h]

        for c in asked.values():
            visit(c)
        layers: list[list[dict]] = [[] for _ in range(1 + max([d for d in depth.values() if d is not None],
                                                            default=-1))]
        for h, c in order:
            layers[depth[h]].append(c)
        return layers


def with_requirements(runs: Iterable[Run], requires: Requires, cache: RunCache) -> list[Run]:
    """The runs and every run they needed, transitively, loaded once each."""
    seen, todo = {}, list(runs)
    while todo:
        r = todo.pop()
        if r.path.name not in seen:
            seen[r.path.name] = r
            todo += [cache.load(d) for d in requires(r.config)]
    return list(seen.values())


def wall_minutes(runs: Iterable[Run]) -> float:
    """The minutes the runs took when they were trained (their ``wall_seconds``)."""
    return sum(r.metrics.get("wall_seconds", 0) for r in runs) / 60


def minutes_by_section(sections: dict[str, list[Run]], requires: Requires, cache: RunCache,
                       minutes: Callable[[list[Run]], float] = wall_minutes) -> dict[str, tuple[int, float]]:
    """``{section: (runs, minutes)}``: what a cold execution of a page trains for each of its
    sections, with what the runs needed; a run two sections share counts in the first that uses it."""
    counted, out = set(), {}
    for name, runs in sections.items():
        new = [r for r in with_requirements(runs, requires, cache) if r.path.name not in counted]
        counted |= {r.path.name for r in new}
        out[name] = (len(new), minutes(new))
    return out


@dataclass
class WithDependencies:
    """``fn(config, deps)`` as a run function of one argument: it loads ``requires(config)`` from
    ``cache`` (where the sweep's earlier layers put them). Picklable, for the ``ray`` executor."""
    fn: Callable
    requires: Requires
    cache: RunCache

    def __call__(self, config: dict):
        return self.fn(config, [self.cache.load(d) for d in self.requires(config)])


def default_label(config: dict) -> str:
    """A short name for a run: its configuration hash, after a few telling entries when present."""
    keys = ("chapter", "dataset", "trigger", "poison_rate", "seed")
    parts = [f"{k}={config[k]}" for k in keys if config.get(k) is not None]
    return " ".join(parts + [config_hash(config)[:8]])
