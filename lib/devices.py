"""Where models run: ``MOEBD_DEVICE`` if set, else CUDA when present, else the CPU."""
from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    name = os.environ.get("MOEBD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
