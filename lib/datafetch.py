"""The data step: fetch every data file from its pinned public source, rebuild it, verify it.

    python -m moebackdoor.datafetch          # what `make data` runs (and `make book`, `make test` first)
    python -m moebackdoor.datafetch --verify # hash every file again, ignoring the record of past checks

Every file of the companion's data, its source (repository, commit, path), how the stored file is made
from the source and its sha256 are listed in ``data_sources.json`` beside this module (made from the
data's ``MANIFEST.md`` by ``python -m moebackdoor.datafetch sources``). A file is downloaded from
``https://raw.githubusercontent.com/<repo>/<commit>/<path>`` (``MOEBD_DATA_MIRROR`` or ``--mirror``
replaces the part before ``<repo>``), then built:

- ``copy``: the source bytes unchanged (the trigger images);
- ``gzip``: the source bytes gzip-compressed as ``MANIFEST.md`` says (level 9, mtime 0, no name);
- ``cifar10_npz``: CIFAR-10's 60,000 JPEGs concatenated in path order, with offsets and labels;
- ``gtsrb_npz``: GTSRB's 33,036 PPMs resized to 32x32 (PIL bilinear), stored as PNG (``optimize=True``).

Both archives are written as ``numpy.savez`` would, with the zip entries' dates fixed at 1980-01-01,
which is how the stored archives were made: the rebuild reproduces their sha256. A built file whose
bytes differ only because of a library version (a PNG or gzip encoder) is accepted when its content
matches (decoded pixels and labels, or the uncompressed bytes) and recorded as verified "by content".

Downloads resume from a ``.part`` file (HTTP Range) and every file is written atomically. A file that
verifies is never touched. With the data in place the step hashes nothing: it compares each file's
size and modification time with a record of the last full check (``.verified.json`` in the data
folder, or in the cache for a bundle that comes with its ``MANIFEST.md``), so it needs no network and
takes a fraction of a second.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import paths
from .manifest import DataError, sha256_of

SOURCES_FILE = Path(__file__).with_name("data_sources.json")
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
MIRROR_ENV = "MOEBD_DATA_MIRROR"
STAMP_NAME = ".verified.json"
STAGING = ".download"  # downloads in progress, inside the data folder
ATTEMPTS = 4  # tries per download (a dropped connection resumes where it stopped)
TIMEOUT_S = 60
CHUNK = 1 << 16


# ----------------------------------------------------------------------------------------------
# The committed list of files

@functools.lru_cache(maxsize=2)
def load_sources(path: Path = SOURCES_FILE) -> dict:
    """``{"files": [entry, ...], ...}``; each entry has path, repo, commit, source, sha256, size, build."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def entries(path: Path = SOURCES_FILE) -> dict[str, dict]:
    """The committed list as ``{relative path: entry}``."""
    return {e["path"]: e for e in load_sources(path)["files"]}


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def build_kind(path: str) -> str:
    if path == "cifar10/cifar10_jpeg.npz":
        return "cifar10_npz"
    if path == "gtsrb/gtsrb32_png.npz":
        return "gtsrb_npz"
    return "gzip" if path.endswith(".gz") else "copy"


def parse_manifest(text: str) -> list[dict]:
    """Every file of ``MANIFEST.md``: its source repository and commit, source path, sha256s and sizes.

    Sections are headed by ``- source repo: `owner/name ...` @ `commit```; a file is either a
    ``### `path``` section (the two archives) or a row of a table with a ``sha256 (stored)`` column.
    """
    files: list[dict] = []
    repo = commit = None
    section: dict | None = None
    columns: list[str] | None = None
    for line in text.splitlines():
        if m := re.match(r"^- source repo: `([^`]+)` @ `([0-9a-f]{40})`", line):
            repo, commit = m.group(1).split()[0], m.group(2)  # "owner/name (fork of ...)": the first word
            if section is not None:
                section.update(repo=repo, commit=commit)
            continue
        if m := re.match(r"^###\s+`([^`]+)`", line):
            section = {"path": m.group(1), "build": build_kind(m.group(1))}
            files.append(section)
            continue
        if re.match(r"^##?#?\s", line):  # another heading closes a file section
            section = None
        if section is not None:
            if m := re.match(r"^- sha256:\s*`([0-9a-f]{64})`", line):
                section["sha256"] = m.group(1)
            elif m := re.match(r"^- size:\s*([\d,]+) bytes", line):
                section["size"] = _int(m.group(1))
            elif m := re.match(r"^- source paths:\s*(.+)$", line):
                section["source"] = m.group(1).strip()
            continue
        if line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if "sha256 (stored)" in cells:
                columns = cells
            elif columns and len(cells) == len(columns) and not set(cells[0]) <= {"-"}:
                row = dict(zip(columns, cells))
                files.append({
                    "path": row["file"], "repo": repo, "commit": commit, "source": row["source path"],
                    "sha256": row["sha256 (stored)"], "size": _int(row["stored bytes"]),
                    "raw_sha256": row["raw sha256"], "raw_size": _int(row["raw bytes"]),
                    "build": build_kind(row["file"]),
                })
        else:
            columns = None
    return files


def gtsrb_members_from_listing(names: list[str]) -> dict:
    """Compress a listing of GTSRB's PPM paths (``git ls-tree -r --name-only``) into runs per folder.

    ``{"train": {folder: ["00000:13-29,31", ...]}, "test": {folder: ["11,13,40-41", ...]}}``: a train
    stem is ``TTTTT_NNNNN`` (the prefix before ``:``), a test stem ``NNNNN``; numbers are 5 digits wide.
    """
    out: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    groups: dict[tuple, dict[str, list[int]]] = {}
    for name in sorted(names):
        if m := re.fullmatch(r"GTSRB/Final_(Training|Test)/Images/([^/]+)/(?:(\d{5})_)?(\d{5})\.ppm", name):
            split = "train" if m.group(1) == "Training" else "test"
            groups.setdefault((split, m.group(2)), {}).setdefault(m.group(3) or "", []).append(int(m.group(4)))
    for (split, folder), by_prefix in sorted(groups.items()):
        encoded = []
        for prefix, nums in by_prefix.items():
            runs, start, end = [], nums[0], nums[0]
            for n in nums[1:] + [None]:
                if n is not None and n == end + 1:
                    end = n
                    continue
                runs.append(str(start) if start == end else f"{start}-{end}")
                if n is not None:
                    start = end = n
            encoded.append((f"{prefix}:" if prefix else "") + ",".join(runs))
        out[split][folder] = encoded
    return out


def gtsrb_source_paths(members: dict, split: str) -> list[tuple[str, str]]:
    """``[(source path, folder), ...]`` of one split, in path order."""
    top = {"train": "GTSRB/Final_Training/Images", "test": "GTSRB/Final_Test/Images"}[split]
    out = []
    for folder, groups in members[split].items():
        for group in groups:
            prefix, _, runs = group.rpartition(":")
            for run in runs.split(","):
                a, _, b = run.partition("-")
                for n in range(int(a), int(b or a) + 1):
                    stem = f"{prefix}_{n:05d}" if prefix else f"{n:05d}"
                    out.append((f"{top}/{folder}/{stem}.ppm", folder))
    return sorted(out)


def cifar10_source_paths(entry: dict, split: str) -> list[tuple[str, int]]:
    """``[(source path, label), ...]`` of one split, in path order: ``<split>/<class>/NNNN.jpg``."""
    count = entry["members"]["per_class"][split]
    return sorted((f"{split}/{name}/{i:04d}.jpg", label)
                  for label, name in enumerate(entry["members"]["class_names"]) for i in range(count))


def write_sources(manifest: Path, out: Path = SOURCES_FILE, gtsrb_listing: Path | None = None,
                  data_dir: Path | None = None) -> dict:
    """Make ``data_sources.json`` from ``MANIFEST.md`` (and, for GTSRB, a listing of its source files).

    The archives' member lists and content checksums are kept from the existing list unless a
    listing (GTSRB) or the stored archives (``data_dir``) are given to compute them again.
    """
    import numpy as np

    old = entries(out) if Path(out).is_file() else {}
    files = parse_manifest(Path(manifest).read_text(encoding="utf-8"))
    for e in files:
        if e["build"] == "cifar10_npz":
            e["members"] = old.get(e["path"], {}).get("members") or {
                "layout": "<split>/<class>/NNNN.jpg, path order; label = the class's index",
                "class_names": ["airplane", "automobile", "bird", "cat", "deer",
                                "dog", "frog", "horse", "ship", "truck"],
                "per_class": {"train": 5000, "test": 1000}}
        elif e["build"] == "gtsrb_npz":
            previous = old.get(e["path"], {})
            e["members"] = (gtsrb_members_from_listing(Path(gtsrb_listing).read_text().split())
                            if gtsrb_listing else previous["members"])
            e["class_folder_names"] = previous.get("class_folder_names")
            e["content_sha256"] = previous.get("content_sha256")
            if data_dir is not None:
                with np.load(Path(data_dir) / e["path"]) as d:
                    e["class_folder_names"] = [str(c) for c in d["class_folder_names"]]
                    e["content_sha256"] = archive_content_sha256(d, "png")
    Path(out).write_text(json.dumps({
        "about": "The companion's data files, their pinned sources and checksums; made from MANIFEST.md "
                 "by `python -m moebackdoor.datafetch sources` (moebackdoor.datafetch)",
        "files": files}, indent=1) + "\n", encoding="utf-8")
    load_sources.cache_clear()
    return load_sources(out)


# ----------------------------------------------------------------------------------------------
# Building the stored files

def gzip_bytes(raw: bytes) -> bytes:
    """gzip as the stored files were made: deflate level 9, mtime 0, no file name, OS byte 255."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(raw) + c.flush()
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x02\xff"
    return header + body + zlib.crc32(raw).to_bytes(4, "little") + (len(raw) & 0xFFFFFFFF).to_bytes(4, "little")


def savez_deterministic(path: Path, arrays: dict) -> None:
    """``numpy.savez`` (stored, zip64 headers) with every entry dated 1980-01-01 and mode 0600."""
    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def _concat(blobs: list[bytes]):
    import numpy as np

    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), np.uint8), offsets


def decode_images(buf, offsets):
    """The (N, 32, 32, 3) uint8 pixels of concatenated image files."""
    import numpy as np
    from PIL import Image

    raw = buf.tobytes()
    return np.stack([np.asarray(Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]])).convert("RGB"))
                     for i in range(len(offsets) - 1)])


def archive_content_sha256(d, kind: str) -> dict[str, str]:
    """sha256 of what an archive holds, independent of the image encoder: pixels, labels, names."""
    import numpy as np

    out = {}
    for split in ("train", "test"):
        out[f"{split}_pixels"] = hashlib.sha256(
            np.ascontiguousarray(decode_images(d[f"{split}_{kind}"], d[f"{split}_offsets"])).tobytes()).hexdigest()
        out[f"{split}_labels"] = hashlib.sha256(np.asarray(d[f"{split}_labels"], np.int64).tobytes()).hexdigest()
    return out


def gtsrb_png(ppm: bytes) -> bytes:
    """One GTSRB image as stored: the 35x35 PPM resized to 32x32 (PIL bilinear), PNG with optimize."""
    from PIL import Image

    img = Image.open(io.BytesIO(ppm)).convert("RGB").resize((32, 32), Image.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------
# Downloads

def base_url(override: str | None = None) -> str:
    return (override or os.environ.get(MIRROR_ENV) or DEFAULT_BASE_URL).rstrip("/")


def source_url(base: str, repo: str, commit: str, source: str) -> str:
    return f"{base}/{repo}/{commit}/{urllib.request.quote(source)}"


def download(url: str, dest: Path, attempts: int = ATTEMPTS, progress=None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it (HTTP Range) after a drop.

    ``dest`` appears only once the download is whole; an HTTP error names the URL.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                mode = "ab" if have and response.status == 206 else "wb"  # a server without Range: anew
                expected = response.headers.get("Content-Length")
                got = 0
                with open(part, mode) as f:
                    while block := response.read(CHUNK):
                        f.write(block)
                        got += len(block)
                        if progress is not None:
                            progress.update(len(block))
                if expected is not None and got < int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - got)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the .part already holds the whole file
                os.replace(part, dest)
                return dest
            if e.code in (404, 410) or attempt == attempts:
                raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # dropped connection, timeout, reset
            if attempt == attempts:
                raise DataError(f"cannot download {url} after {attempts} tries ({e!r}); "
                                f"run the data step again to resume from {part}") from None
        time.sleep(min(0.2 * 2 ** attempt, 5))
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# The record of verified files

def stamp_path(data_dir: Path) -> Path:
    """``.verified.json`` in a data folder the data step fills (it has no ``MANIFEST.md``); for a
    bundle that comes with its ``MANIFEST.md`` (``../shared/data``), which is left as it is, in the cache."""
    data_dir = Path(data_dir)
    own = data_dir / STAMP_NAME
    if own.is_file() or not (data_dir / "MANIFEST.md").is_file():
        return own
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return paths.cache_dir() / "data" / f"verified-{key}.json"


def read_stamp(data_dir: Path) -> dict:
    try:
        return json.loads(stamp_path(data_dir).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError):
        return {}


def write_stamp(data_dir: Path, records: dict) -> None:
    target = stamp_path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"data_dir": str(Path(data_dir).resolve()), "files": records}, indent=1),
                   encoding="utf-8")
    os.replace(tmp, target)


def content_verified_sha256(data_dir: Path, relative: str) -> str | None:
    """The sha256 of a file the data step built and accepted by its content (else None)."""
    rec = read_stamp(data_dir).get(relative)
    return rec["sha256"] if rec and rec.get("verified") == "content" else None


def _record(path: Path, sha: str, verified: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "verified": verified}


def _check_existing(entry: dict, path: Path, rec: dict | None, full: bool) -> dict | None:
    """The file's record if it verifies (by the record alone unless ``full``), else None."""
    st = path.stat()
    accepted = {entry["sha256"]} | ({rec["sha256"]} if rec and rec.get("verified") == "content" else set())
    if (not full and rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns
            and rec.get("sha256") in accepted):
        return rec
    sha = sha256_of(path)
    if sha in accepted:
        return _record(path, sha, "sha256" if sha == entry["sha256"] else "content")
    return None


# ----------------------------------------------------------------------------------------------
# The builders: one per kind of stored file

class VerifyError(DataError):
    """Bytes that arrived whole but are not the listed ones (their downloads are discarded)."""

def _staging(data_dir: Path, entry: dict, source: str) -> Path:
    return data_dir / STAGING / entry["repo"] / entry["commit"] / source


def _fetch_source(ctx: dict, entry: dict, source: str, bar=None) -> Path:
    dest = _staging(ctx["data_dir"], entry, source)
    if dest.is_file():
        return dest
    return download(source_url(ctx["base"], entry["repo"], entry["commit"], source), dest, progress=bar)


def _fetch_many(ctx: dict, entry: dict, sources: list[str]) -> list[bytes]:
    """The bytes of many small source files, downloaded in parallel (kept in staging until built)."""
    from tqdm.auto import tqdm

    with tqdm(total=len(sources), desc=f"  {entry['path']}", unit="file", disable=not ctx["progress"],
              mininterval=1, leave=False) as bar, ThreadPoolExecutor(ctx["workers"]) as pool:
        def one(source):
            path = _fetch_source(ctx, entry, source)
            bar.update(1)
            return path
        return [p.read_bytes() for p in pool.map(one, sources)]


def _verify_raw(entry: dict, raw: bytes, where: Path) -> None:
    want = entry.get("raw_sha256")
    if want and (got := hashlib.sha256(raw).hexdigest()) != want:
        where.unlink(missing_ok=True)
        raise VerifyError(f"{entry['path']}: the source {entry['repo']}@{entry['commit'][:12]}:{entry['source']} "
                        f"has sha256 {got}, but the list expects {want}; refused, nothing written")


def build_copy(ctx: dict, entry: dict, out: Path) -> str:
    src = _fetch_source(ctx, entry, entry["source"], ctx["bar"])
    _verify_raw(entry, src.read_bytes(), src)
    shutil.copyfile(src, out)
    return "sha256"


def build_gzip(ctx: dict, entry: dict, out: Path) -> str:
    src = _fetch_source(ctx, entry, entry["source"], ctx["bar"])
    raw = src.read_bytes()
    _verify_raw(entry, raw, src)
    out.write_bytes(gzip_bytes(raw))
    # the raw bytes verified; another zlib may compress them differently: then accepted by content
    return "sha256" if sha256_of(out) == entry["sha256"] else "content"


def build_cifar10_npz(ctx: dict, entry: dict, out: Path) -> str:
    import numpy as np

    arrays = {}
    for split in ("train", "test"):
        members = cifar10_source_paths(entry, split)
        jpegs = _fetch_many(ctx, entry, [p for p, _ in members])
        arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = _concat(jpegs)
        arrays[f"{split}_labels"] = np.array([label for _, label in members], np.int64)
    savez_deterministic(out, {k: arrays[k] for k in ("train_jpeg", "train_offsets", "train_labels",
                                                      "test_jpeg", "test_offsets", "test_labels")}
                        | {"class_names": np.array(entry["members"]["class_names"])})
    return "sha256"  # the JPEG bytes are unchanged: only the sha256 can accept it


def build_gtsrb_npz(ctx: dict, entry: dict, out: Path) -> str:
    import numpy as np

    names = entry["class_folder_names"]
    arrays = {}
    for split in ("train", "test"):
        members = gtsrb_source_paths(entry["members"], split)
        ppms = _fetch_many(ctx, entry, [p for p, _ in members])
        arrays[f"{split}_png"], arrays[f"{split}_offsets"] = _concat([gtsrb_png(b) for b in ppms])
        arrays[f"{split}_labels"] = np.array([names.index(folder) for _, folder in members], np.int64)
    savez_deterministic(out, {k: arrays[k] for k in ("train_png", "train_offsets", "train_labels",
                                                      "test_png", "test_offsets", "test_labels")}
                        | {"class_folder_names": np.array(names)})
    if sha256_of(out) == entry["sha256"]:
        return "sha256"
    with np.load(out) as d:  # another PNG encoder: compare what the archive holds
        content = archive_content_sha256(d, "png")
    if content != entry["content_sha256"]:
        bad = sorted(k for k in content if content[k] != entry["content_sha256"].get(k))
        raise VerifyError(f"{entry['path']}: the rebuilt archive differs from the stored one in {', '.join(bad)}")
    return "content"


BUILDERS = {"copy": build_copy, "gzip": build_gzip, "cifar10_npz": build_cifar10_npz,
            "gtsrb_npz": build_gtsrb_npz}


def _build(ctx: dict, entry: dict) -> dict:
    """Build one file into a temporary file beside it, check it, then move it into place."""
    final = ctx["data_dir"] / entry["path"]
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        verified = BUILDERS[entry["build"]](ctx, entry, tmp)
        sha = sha256_of(tmp)
        if verified == "sha256" and sha != entry["sha256"]:
            raise VerifyError(f"{entry['path']}: the built file has sha256 {sha}, but the list expects "
                            f"{entry['sha256']}; refused, nothing written")
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except VerifyError:
        _discard_staged(ctx, entry)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    _discard_staged(ctx, entry)
    return _record(final, sha, verified)


def _discard_staged(ctx: dict, entry: dict) -> None:
    """Remove an entry's downloads (kept while it is unbuilt, so that an interrupted step resumes)."""
    staged = ctx["data_dir"] / STAGING / entry["repo"] / entry["commit"]
    if entry["build"] in ("copy", "gzip"):
        (staged / entry["source"]).unlink(missing_ok=True)
    else:
        shutil.rmtree(staged, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The data step

def fetch(data_dir: Path | None = None, mirror: str | None = None, files: list[dict] | None = None,
          verify: bool = False, progress: bool = True, workers: int = 16) -> list[str]:
    """Make every listed file present and verified in ``data_dir``; return the paths it built.

    ``files`` replaces the committed list (a test's subset); ``verify`` hashes every file present
    instead of trusting the record of the last check. Errors are collected and raised together.
    """
    from tqdm.auto import tqdm

    data_dir = Path(data_dir) if data_dir is not None else paths.data_dir()
    files = files if files is not None else load_sources()["files"]
    records = read_stamp(data_dir)
    todo, changed = [], False
    for entry in files:
        path = data_dir / entry["path"]
        rec = records.get(entry["path"])
        ok = _check_existing(entry, path, rec, verify) if path.is_file() else None
        if ok is None:
            if path.is_file():
                print(f"{path} does not match its sha256 {entry['sha256']}: building it again", file=sys.stderr)
            todo.append(entry)
        elif ok != rec:
            records[entry["path"]], changed = ok, True
    if not todo:
        if changed and (data_dir.is_dir()):
            write_stamp(data_dir, records)
        return []
    if data_dir.exists() and not os.access(data_dir, os.W_OK):
        raise DataError(f"{len(todo)} data files are missing or corrupt in {data_dir} (e.g. {todo[0]['path']}), "
                        "and that folder is read-only; point MOEBD_DATA_DIR at a writable folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    base = base_url(mirror)
    print(f"fetching {len(todo)} data files into {data_dir} from {base}", file=sys.stderr)
    errors, built = [], []
    total = sum(e.get("raw_size", e["size"]) for e in todo if e["build"] in ("copy", "gzip"))
    with tqdm(total=total, unit="B", unit_scale=True, desc="data", disable=not progress, mininterval=1) as bar:
        ctx = {"data_dir": data_dir, "base": base, "bar": bar, "progress": progress, "workers": workers}
        for entry in todo:
            bar.set_postfix_str(entry["path"], refresh=False)
            try:
                records[entry["path"]] = _build(ctx, entry)
                built.append(entry["path"])
            except DataError as e:
                errors.append(str(e))
            write_stamp(data_dir, records)
    staging = data_dir / STAGING
    if staging.is_dir() and not any(p.is_file() for p in staging.rglob("*")):
        shutil.rmtree(staging, ignore_errors=True)
    if errors:
        raise DataError(f"{len(errors)} of {len(todo)} data files could not be fetched:\n  " + "\n  ".join(errors))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moebackdoor.datafetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="fetch", choices=["fetch", "sources"],
                        help="fetch (default): the data step; sources: remake data_sources.json from MANIFEST.md")
    parser.add_argument("--data-dir", type=Path, help="the data folder (default: $MOEBD_DATA_DIR, else "
                                                      "../shared/data, else ~/.cache/moebackdoor/data)")
    parser.add_argument("--mirror", help=f"base URL before <repo>/<commit>/<path> (default: ${MIRROR_ENV} or "
                                         f"{DEFAULT_BASE_URL})")
    parser.add_argument("--verify", action="store_true", help="hash every file present again")
    parser.add_argument("--only", nargs="+", metavar="PATH", help="only these files (relative paths)")
    parser.add_argument("--manifest", type=Path, help="sources: the MANIFEST.md to read")
    parser.add_argument("--gtsrb-listing", type=Path, help="sources: GTSRB's source paths, one a line")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.resolve() if args.data_dir else paths.data_dir()
    if args.command == "sources":
        manifest = args.manifest or data_dir / "MANIFEST.md"
        out = write_sources(manifest, gtsrb_listing=args.gtsrb_listing, data_dir=data_dir)
        print(f"{SOURCES_FILE}: {len(out['files'])} files")
        return 0
    files = load_sources()["files"]
    if args.only:
        unknown = sorted(set(args.only) - {e["path"] for e in files})
        if unknown:
            parser.error(f"not in the data list: {', '.join(unknown)}")
        files = [e for e in files if e["path"] in set(args.only)]
    start = time.perf_counter()
    try:
        built = fetch(data_dir, args.mirror, files, verify=args.verify, progress=sys.stderr.isatty())
    except DataError as e:
        print(f"data step failed: {e}", file=sys.stderr)
        return 1
    what = f"built {len(built)}" if built else "nothing to do"
    print(f"data: {len(files)} files in {data_dir} verified ({what}, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
