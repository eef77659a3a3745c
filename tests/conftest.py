import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache for the whole session: datasets are decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def companion_env(monkeypatch, session_cache, tmp_path):
    """Point the library's cache and outputs at temporary folders (never the user's)."""
    monkeypatch.setenv("MOEBD_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("MOEBD_OUTPUT_DIR", str(tmp_path / "generated"))
    return tmp_path


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory, session_cache):
    """Every chapter and summary page executed at smoke, and the book built (-W), once per session.

    Yields (root, site, executed): outputs under ``root/generated``, the book under ``site``.
    """
    import shutil

    from moebackdoor import book

    root = tmp_path_factory.mktemp("smoke-book")
    site = root / "book"
    shutil.copytree(book.BOOK, site, ignore=shutil.ignore_patterns("_build", "chapters", "generated"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOEBD_CACHE_DIR", str(session_cache))
        mp.setenv("MOEBD_OUTPUT_DIR", str(root / "generated"))
        executed = book.execute_all("smoke", out_dir=site / "chapters")
        book.build(site)  # raises on any Sphinx warning
        yield root, site, executed
