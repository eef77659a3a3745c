"""CIFAR-10 and GTSRB from the offline data directory.

The stored archives (JPEG for CIFAR-10, PNG for the GTSRB subset) are checked
against the manifest, decoded once, and kept as uint8 arrays in the cache.
Images are NHWC uint8; :func:`to_tensor` turns them into the float NCHW [0, 1]
tensors that models and triggers take.
"""
from __future__ import annotations

import functools
import io
import os
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import paths
from ..manifest import data_file, sha256_of

SOURCES = {
    "cifar10": ("cifar10/cifar10_jpeg.npz", "jpeg", "class_names"),
    "gtsrb": ("gtsrb/gtsrb32_png.npz", "png", "class_folder_names"),
}
# images in the offline archives (train, test) and classes: checked on load, used to validate settings
SIZES = {"cifar10": (50000, 10000, 10), "gtsrb": (25087, 7949, 43)}


@dataclass
class ImageDataset:
    name: str
    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _decode(buf: np.ndarray, offsets: np.ndarray, desc: str) -> np.ndarray:
    out = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
    raw = buf.tobytes()
    for i in tqdm(range(len(out)), desc=desc, mininterval=2):
        img = Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]])).convert("RGB")
        out[i] = np.asarray(img)
    return out


def load_dataset(name: str) -> ImageDataset:
    """Load ``cifar10`` or ``gtsrb`` (decoding and caching it on first use).

    Loaded once per process and data location; the arrays are read-only.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(SOURCES)}")
    return _load(name, paths.data_dir(), paths.cache_dir())


@functools.lru_cache(maxsize=4)
def _load(name: str, data_root, cache_root) -> ImageDataset:
    data = _read_or_decode(name)
    if (len(data.y_train), len(data.y_test), data.num_classes) != SIZES[name]:
        raise ValueError(f"the {name} archive holds {len(data.y_train)} / {len(data.y_test)} images and "
                         f"{data.num_classes} classes, not the expected {SIZES[name]}")
    for arr in (data.x_train, data.y_train, data.x_test, data.y_test):
        arr.setflags(write=False)
    return data


def _read_or_decode(name: str) -> ImageDataset:
    relative, kind, names_key = SOURCES[name]
    cached = paths.cache_dir() / "data" / f"{name}.npz"
    source = paths.data_dir() / relative
    if cached.is_file():
        with np.load(cached) as d:
            # a cache decoded from another copy of the archive is rebuilt
            if source.is_file() and str(d["source_sha256"]) == sha256_of(source):
                return ImageDataset(name, d["x_train"], d["y_train"], d["x_test"], d["y_test"],
                                    [str(c) for c in d["class_names"]])
    path = data_file(relative, f"The {name} archive")
    with np.load(path) as d:
        arrays = {
            "x_train": _decode(d[f"train_{kind}"], d["train_offsets"], f"decoding {name} train"),
            "x_test": _decode(d[f"test_{kind}"], d["test_offsets"], f"decoding {name} test"),
            "y_train": d["train_labels"].astype(np.int64),
            "y_test": d["test_labels"].astype(np.int64),
            "class_names": np.array([str(c) for c in d[names_key]]),
        }
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.stem}-{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, source_sha256=np.array(sha256_of(path)), **arrays)
    os.replace(tmp, cached)
    return ImageDataset(name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                        arrays["y_test"], list(arrays["class_names"]))


def subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, stratified: bool = True):
    """Take ``n`` samples (class-balanced where the classes allow), or all of them if ``n`` is None."""
    if n is None or n >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    if not stratified:
        idx = rng.choice(len(y), n, replace=False)
    else:  # the same fraction of every class, as the authors' per-class slices
        idx = np.concatenate([
            rng.choice(np.flatnonzero(y == c), round(n * (y == c).mean()), replace=False)
            for c in np.unique(y)])
    idx = np.sort(idx)
    return x[idx], y[idx]


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)  # the cached arrays are read-only
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
