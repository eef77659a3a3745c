"""Where the companion reads data and writes caches and book artefacts.

Every location can be moved with an environment variable:

- ``MOEBD_DATA_DIR``: the offline data (default ``../shared/data`` beside the repository where it
  exists, else ``~/.cache/moebackdoor/data``; ``make data`` fills it: :mod:`moebackdoor.datafetch`)
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


def default_data_dir() -> Path:
    """``../shared/data`` beside the repository where it exists, else the user's cache folder."""
    shared = (REPO_ROOT.parent / "shared" / "data").resolve()
    if shared.is_dir():
        return shared
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return (cache_home / "moebackdoor" / "data").resolve()


def data_dir() -> Path:
    return _from_env("MOEBD_DATA_DIR", default_data_dir())


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
