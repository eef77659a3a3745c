"""Find data files in the data directory and check them against ``MANIFEST.md``.

Each file's expected sha256 comes from the ``MANIFEST.md`` that sits in the data directory
itself; a data directory without one (filled by ``make data``) is checked against the
committed list ``data_sources.json`` (:mod:`moebackdoor.datafetch`), which a test keeps equal
to the manifest.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from . import paths


class DataError(RuntimeError):
    """Missing or corrupt data, with a message that says where it should be."""


def _missing(path: Path, what: str) -> DataError:
    return DataError(
        f"{what} not found: expected {path}. Run `make data` (python -m moebackdoor.datafetch) to "
        f"download it, or point MOEBD_DATA_DIR at the folder that holds the companion's offline data; "
        f"now it is {paths.data_dir()}."
    )


def committed_checksums() -> dict[str, str]:
    """Each relative path of the committed data list (``data_sources.json``) and its sha256."""
    from . import datafetch

    return {path: e["sha256"] for path, e in datafetch.entries().items()}


@functools.lru_cache(maxsize=4)
def manifest_checksums(data_dir: Path) -> dict[str, str]:
    """Map each relative path in ``data_dir/MANIFEST.md`` to the sha256 of the stored file.

    Without a ``MANIFEST.md`` (data fetched by ``make data``), the committed list's sha256s.
    """
    manifest = data_dir / "MANIFEST.md"
    if not manifest.is_file():
        return committed_checksums()
    sums: dict[str, str] = {}
    heading = None  # a '### `path`' section whose sha256 is on a '- sha256:' line
    columns: list[str] | None = None
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^###\s+`([^`]+)`", line):
            heading = m.group(1)
        elif heading and (m := re.match(r"^- sha256:\s*`([0-9a-f]{64})`", line)):
            sums[heading] = m.group(1)
            heading = None
        elif line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if "sha256 (stored)" in cells:
                columns = cells
            elif columns and len(cells) == len(columns) and not set(cells[0]) <= {"-"}:
                sums[cells[columns.index("file")]] = cells[columns.index("sha256 (stored)")]
        else:
            columns = None
    return sums


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_file(relative: str, what: str | None = None) -> Path:
    """Return ``data_dir/relative`` after checking it exists and matches the manifest."""
    root = paths.data_dir()
    path = root / relative
    if not path.is_file():
        raise _missing(path, what or relative)
    expected = manifest_checksums(root).get(relative)
    source = "MANIFEST.md" if (root / "MANIFEST.md").is_file() else "the data list"
    if expected is None:
        raise DataError(f"{relative} is not listed in {source} of {root}; cannot verify it")
    actual = sha256_of(path)
    if actual != expected and actual != _content_verified(root, relative):
        raise DataError(
            f"{path} is corrupt: sha256 {actual} but {source} expects {expected}. "
            "Delete it and run `make data` to fetch it again."
        )
    return path


def _content_verified(root: Path, relative: str) -> str | None:
    """The sha256 ``make data`` recorded for a file it rebuilt and accepted by its content
    (an archive whose PNG encoder differs from the one that made the stored bytes)."""
    from . import datafetch

    return datafetch.content_verified_sha256(root, relative)
