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
