"""Find data files in the data directory and check them against ``MANIFEST.md``.

The manifest is read, never copied: each file's expected sha256 comes from the
manifest that sits in the data directory itself.
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
        f"{what} not found: expected {path}. Point MOEBD_DATA_DIR at the folder that holds the "
        f"companion's offline data (it has MANIFEST.md at its top); now it is {paths.data_dir()}."
    )


@functools.lru_cache(maxsize=4)
def manifest_checksums(data_dir: Path) -> dict[str, str]:
    """Map each relative path in ``data_dir/MANIFEST.md`` to the sha256 of the stored file."""
    manifest = data_dir / "MANIFEST.md"
    if not manifest.is_file():
        raise _missing(manifest, "The data manifest")
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
    if expected is None:
        raise DataError(f"{relative} is not listed in {root / 'MANIFEST.md'}; cannot verify it")
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path} is corrupt: sha256 {actual} but MANIFEST.md expects {expected}. "
            "Restore the file from the companion's data bundle."
        )
    return path
