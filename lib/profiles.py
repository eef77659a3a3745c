"""The three profiles every chapter runs at, and the lookup each domain's table of them shares.

- ``smoke``: every code path in minutes (the tests); the numbers mean nothing;
- ``quick``: this book's default, sized for a 2-core CPU; meaningful trends;
- ``paper``: the papers' own settings, for a GPU or a cluster.

>>> lookup({"smoke": {"epochs": 1}, "quick": {"epochs": 2}, "paper": {"epochs": 25}}, "quick")
{'epochs': 2}
"""
from __future__ import annotations

import copy

from .params import check_choice

NAMES = ("smoke", "quick", "paper")


def lookup(profiles: dict, name: str) -> dict:
    """A domain's settings at profile ``name`` (a copy: the caller may change it)."""
    check_choice("profile", name, NAMES)
    missing = set(NAMES) - set(profiles)
    if missing:
        raise KeyError(f"a profile table lacks {sorted(missing)}")
    return copy.deepcopy(profiles[name])
