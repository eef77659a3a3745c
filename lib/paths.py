"""Where the companion reads data and writes caches and book artefacts.

Every location can be moved with an environment variable:

- ``MOEBD_DATA_DIR``: the offline data (default ``../shared/data`` beside the repository)
- ``MOEBD_CACHE_DIR``: decoded datasets and the run cache (default ``.cache/`` in the repository)
- ``MOEBD_OUTPUT_DIR``: tables and figures for the book (default ``book/generated/``)
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path:
    return _from_env("MOEBD_DATA_DIR", (REPO_ROOT.parent / "shared" / "data").resolve())


def cache_dir() -> Path:
    return _from_env("MOEBD_CACHE_DIR", REPO_ROOT / ".cache")


def runs_dir() -> Path:
    return cache_dir() / "runs"


def output_dir() -> Path:
    return _from_env("MOEBD_OUTPUT_DIR", REPO_ROOT / "book" / "generated")


def tables_dir() -> Path:
    return output_dir() / "tables"


def figures_dir() -> Path:
    return output_dir() / "figures"


def builds_dir() -> Path:
    """One JSON record per executed chapter: profile, time, machine, wall time."""
    return output_dir() / "builds"
