"""A run cache: one directory per configuration, written atomically.

A run directory is named by a hash of its full configuration and holds
``config.json``, ``metrics.json`` and ``tensors.safetensors`` (the model's state
and anything else the run must keep, such as a random trigger). A directory
appears only once all three are written, so an interrupted sweep leaves no
half-written result and resumes at the first run that is missing.

>>> cache = RunCache(tmp_path)
>>> run = cache.get_or_run({"lr": 0.1}, lambda cfg: ({"acc": 0.5}, {}))
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file

from . import executors, paths, progress

Tensors = dict[str, torch.Tensor]
RunFn = Callable[[dict], "tuple[dict, Tensors]"]


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
              label: Callable[[dict], str] | None = None, executor=None) -> list[Run]:
        """Run every configuration missing from the cache, then load them all, in order.

        The missing runs go to ``executor`` (a name or an object; default ``MOEBD_EXECUTOR``,
        else ``local``: see :mod:`moebackdoor.executors`). ``label`` names a run in progress reports.
        """
        configs = list(configs)
        todo = list({config_hash(c): c for c in configs if force or not self.has(c)}.values())
        ex = executors.resolve(executor)
        progress.emit("sweep", desc=desc, total=len(configs), todo=len(todo))
        try:
            ex.run(self, todo, fn, label or default_label)
        finally:
            progress.emit("sweep_done")
        return [self.load(c) for c in configs]


def default_label(config: dict) -> str:
    """A short name for a run: its configuration hash, after a few telling entries when present."""
    keys = ("chapter", "dataset", "trigger", "poison_rate", "seed")
    parts = [f"{k}={config[k]}" for k in keys if config.get(k) is not None]
    return " ".join(parts + [config_hash(config)[:8]])
