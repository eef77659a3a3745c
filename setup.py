"""The package list, found in the tree: every folder of ``lib/`` with an ``__init__.py`` is a
subpackage of ``moebackdoor`` (so a new one cannot be left out of the wheel). Everything else
is in ``pyproject.toml``."""
from setuptools import find_packages, setup

setup(packages=["moebackdoor"] + [f"moebackdoor.{p}" for p in find_packages("lib")])
