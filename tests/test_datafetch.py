"""The data step against a local HTTP mirror built from the data folder (no network needed)."""
import gzip
import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moebackdoor import datafetch, manifest, paths
from moebackdoor.manifest import DataError

from datamirror import MirrorServer, add_cifar10, add_sources, mirror_file

DATA = paths.data_dir()
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"no MANIFEST.md in {DATA}")
TEXT = [e for e in datafetch.load_sources()["files"] if e["build"] in ("gzip", "copy")]
SMALL = [datafetch.entries()[p] for p in ("sst2/dev.tsv.gz", "olid/train.tsv.gz", "triggers/hellokitty_32.png")]


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEBD_CACHE_DIR", str(tmp_path / "cache"))  # stamps of read-only folders go there


def _mirror(tmp_path, files):
    mirror = tmp_path / "mirror"
    add_sources(mirror, DATA, files)
    return mirror


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and (p.name.endswith((".part", ".tmp")) or ".download" in p.parts))


@needs_data
def test_committed_list_agrees_with_manifest():
    parsed = {e["path"]: e for e in datafetch.parse_manifest((DATA / "MANIFEST.md").read_text(encoding="utf-8"))}
    committed = datafetch.entries()
    assert sorted(parsed) == sorted(committed) and len(committed) == 168
    for path, e in parsed.items():
        for key in ("sha256", "size", "raw_sha256", "repo", "commit", "source", "build"):
            assert committed[path].get(key) == e.get(key), (path, key)
    assert manifest.manifest_checksums(DATA) == {p: e["sha256"] for p, e in committed.items()}
    # every stored file is where the list says, with its size
    assert all((DATA / p).stat().st_size == e["size"] for p, e in committed.items())


def test_data_folder_defaults_to_shared_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MOEBD_DATA_DIR", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.data_dir() == (tmp_path / "xdg" / "moebackdoor" / "data").resolve()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert paths.data_dir() == (tmp_path / "shared" / "data").resolve()
    monkeypatch.setenv("MOEBD_DATA_DIR", str(tmp_path / "elsewhere"))
    assert paths.data_dir() == (tmp_path / "elsewhere").resolve()


def test_gzip_and_archive_containers_reproduce_the_stored_bytes():
    sst2 = DATA / "sst2/dev.tsv.gz"
    assert datafetch.gzip_bytes(gzip.decompress(sst2.read_bytes())) == sst2.read_bytes()
    for rel in ("cifar10/cifar10_jpeg.npz", "gtsrb/gtsrb32_png.npz"):
        with np.load(DATA / rel) as d:
            arrays = {k: d[k] for k in d.files}
        out = Path(os.environ["MOEBD_CACHE_DIR"]) / "rebuilt.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        datafetch.savez_deterministic(out, arrays)
        assert manifest.sha256_of(out) == datafetch.entries()[rel]["sha256"], rel
        out.unlink()


@needs_data
def test_every_text_file_rebuilds_from_the_mirror_then_nothing_to_do(tmp_path):
    mirror = _mirror(tmp_path, TEXT)
    target = tmp_path / "data"
    with MirrorServer(mirror) as server:
        built = datafetch.fetch(target, server.url, TEXT, progress=False)
    assert sorted(built) == sorted(e["path"] for e in TEXT)
    for e in TEXT:  # the same bytes as the stored files
        assert manifest.sha256_of(target / e["path"]) == e["sha256"], e["path"]
    assert _leftovers(target) == [] and not (target / ".download").exists()
    # in place: no network (the server is gone), nothing touched, and quick
    mtimes = {e["path"]: (target / e["path"]).stat().st_mtime_ns for e in TEXT}
    start = time.perf_counter()
    assert datafetch.fetch(target, "http://127.0.0.1:9", TEXT, progress=False) == []
    assert time.perf_counter() - start < 1.0
    assert mtimes == {e["path"]: (target / e["path"]).stat().st_mtime_ns for e in TEXT}
    # the library reads them without a MANIFEST.md, against the committed list
    sums = manifest.manifest_checksums(target)
    assert sums["sst2/dev.tsv.gz"] == datafetch.entries()["sst2/dev.tsv.gz"]["sha256"]


def test_a_corrupt_source_is_refused_naming_the_file_and_both_hashes(tmp_path, monkeypatch):
    mirror = _mirror(tmp_path, SMALL)
    bad = SMALL[0]
    source = mirror_file(mirror, bad, bad["source"])
    raw = bytearray(source.read_bytes())
    raw[10] ^= 0xFF
    source.write_bytes(bytes(raw))
    target = tmp_path / "data"
    with MirrorServer(mirror) as server, pytest.raises(DataError) as err:
        datafetch.fetch(target, server.url, SMALL, progress=False)
    message = str(err.value)
    assert bad["path"] in message and bad["raw_sha256"] in message
    assert hashlib.sha256(bytes(raw)).hexdigest() in message
    assert not (target / bad["path"]).exists() and _leftovers(target) == []
    assert all((target / e["path"]).is_file() for e in SMALL[1:])  # the others were built
    # the library refuses a corrupt stored file too, saying how to fetch it again
    monkeypatch.setenv("MOEBD_DATA_DIR", str(target))
    (target / SMALL[2]["path"]).write_bytes(b"not a png")
    with pytest.raises(DataError, match="corrupt.*make data"):
        manifest.data_file(SMALL[2]["path"])


def test_a_missing_source_names_its_url(tmp_path):
    mirror = _mirror(tmp_path, SMALL)
    gone = SMALL[1]
    mirror_file(mirror, gone, gone["source"]).unlink()
    with MirrorServer(mirror) as server, pytest.raises(DataError) as err:
        datafetch.fetch(tmp_path / "data", server.url, SMALL, progress=False)
    url = f"{server.url}/{gone['repo']}/{gone['commit']}/{gone['source']}"
    assert url in str(err.value) and "404" in str(err.value)


def test_a_dropped_connection_resumes_from_the_part_file(tmp_path):
    mirror = _mirror(tmp_path, SMALL)
    entry = SMALL[1]
    rel = f"{entry['repo']}/{entry['commit']}/{entry['source']}"
    with MirrorServer(mirror) as server:
        server.drop_once.add(rel)
        built = datafetch.fetch(tmp_path / "data", server.url, SMALL, progress=False)
    assert entry["path"] in built
    assert manifest.sha256_of(tmp_path / "data" / entry["path"]) == entry["sha256"]
    tries = [r for path, r in server.requests if path == rel]
    assert tries[0] is None and tries[1] == f"bytes={entry['raw_size'] // 2}-" and len(tries) == 2


def test_an_existing_file_that_verifies_is_never_touched(tmp_path):
    target = tmp_path / "data"
    e = SMALL[2]
    (target / e["path"]).parent.mkdir(parents=True)
    (target / e["path"]).write_bytes((DATA / e["path"]).read_bytes())
    before = (target / e["path"]).stat().st_mtime_ns
    assert datafetch.fetch(target, "http://127.0.0.1:9", [e], progress=False) == []
    assert (target / e["path"]).stat().st_mtime_ns == before
    # a file changed since the last check is hashed again and rebuilt
    (target / e["path"]).write_bytes(b"x" * e["size"])
    mirror = _mirror(tmp_path, [e])
    with MirrorServer(mirror) as server:
        assert datafetch.fetch(target, server.url, [e], progress=False) == [e["path"]]
    assert manifest.sha256_of(target / e["path"]) == e["sha256"]


@needs_data
def test_cifar10_archive_rebuilds_from_its_jpegs(tmp_path):
    full = datafetch.entries()["cifar10/cifar10_jpeg.npz"]
    per_class = {"train": 3, "test": 2}
    entry = {**full, "members": {**full["members"], "per_class": per_class}}
    mirror = tmp_path / "mirror"
    add_cifar10(mirror, DATA, full, per_class)
    # the expected archive: the stored archive's arrays, cut to those images
    with np.load(DATA / full["path"]) as d:
        expected = {}
        for split, n in per_class.items():
            idx = [c * full["members"]["per_class"][split] + i for c in range(10) for i in range(n)]
            buf, off = d[f"{split}_jpeg"].tobytes(), d[f"{split}_offsets"]
            blobs = [buf[off[k]:off[k + 1]] for k in idx]
            expected[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
            expected[f"{split}_labels"] = d[f"{split}_labels"][idx]
            expected[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
        expected["class_names"] = d["class_names"]
    reference = tmp_path / "expected.npz"
    datafetch.savez_deterministic(reference, {k: expected[k] for k in (
        "train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels", "class_names")})
    entry["sha256"] = manifest.sha256_of(reference)
    with MirrorServer(mirror) as server:
        built = datafetch.fetch(tmp_path / "data", server.url, [entry], progress=False, workers=4)
    assert built == [entry["path"]]
    assert manifest.sha256_of(tmp_path / "data" / entry["path"]) == entry["sha256"]
    with np.load(tmp_path / "data" / entry["path"]) as got:
        for key, value in expected.items():
            assert np.array_equal(got[key], value), key
    assert _leftovers(tmp_path / "data") == []


def _ppm(rng) -> bytes:
    pixels = rng.integers(0, 256, (35, 35, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PPM")
    return out.getvalue()


def test_gtsrb_transformation_on_a_tiny_synthetic_source(tmp_path):
    """PPMs in the source layout; the rebuilt archive is checked by its decoded content."""
    rng = np.random.default_rng(0)
    names = ["zz_stopp", "100_kmh"]  # ClassId 0, 1: path order is not ClassId order
    listing = {"GTSRB/Final_Training/Images/zz_stopp/00000_00000.ppm": 0,
               "GTSRB/Final_Training/Images/zz_stopp/00000_00001.ppm": 0,
               "GTSRB/Final_Training/Images/100_kmh/00003_00007.ppm": 1,
               "GTSRB/Final_Test/Images/100_kmh/00042.ppm": 1,
               "GTSRB/Final_Test/Images/zz_stopp/00011.ppm": 0}
    entry = {"path": "gtsrb/gtsrb32_png.npz", "build": "gtsrb_npz", "repo": "someone/gtsrb", "commit": "c" * 40,
             "sha256": "0" * 64, "size": 0, "class_folder_names": names,
             "members": datafetch.gtsrb_members_from_listing(list(listing))}
    mirror = tmp_path / "mirror"
    pixels = {}
    for path in listing:
        blob = _ppm(rng)
        out = mirror_file(mirror, entry, path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
        pixels[path] = np.asarray(Image.open(io.BytesIO(blob)).resize((32, 32), Image.BILINEAR))
    order = {s: sorted(p for p in listing if ("Training" in p) == (s == "train")) for s in ("train", "test")}
    assert [p for p, _ in datafetch.gtsrb_source_paths(entry["members"], "train")] == order["train"]
    def sha(a):
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    entry["content_sha256"] = {
        **{f"{s}_pixels": sha(np.stack([pixels[p] for p in order[s]])) for s in order},
        **{f"{s}_labels": sha(np.array([listing[p] for p in order[s]], np.int64)) for s in order}}
    target = tmp_path / "data"
    with MirrorServer(mirror) as server:
        assert datafetch.fetch(target, server.url, [entry], progress=False) == [entry["path"]]
    with np.load(target / entry["path"]) as d:
        assert d["train_labels"].tolist() == [1, 0, 0] and d["test_labels"].tolist() == [1, 0]
        assert list(d["class_folder_names"]) == names
        assert np.array_equal(datafetch.decode_images(d["train_png"], d["train_offsets"])[0],
                              pixels[order["train"][0]])
    # accepted by content (its sha256 is not the list's), recorded, and the library accepts it
    sha = manifest.sha256_of(target / entry["path"])
    assert datafetch.content_verified_sha256(target, entry["path"]) == sha
    assert datafetch.fetch(target, "http://127.0.0.1:9", [entry], progress=False) == []
    # a rebuild whose pixels differ is refused
    (target / entry["path"]).unlink()
    entry["content_sha256"] = {**entry["content_sha256"], "test_pixels": "f" * 64}
    with MirrorServer(mirror) as server, pytest.raises(DataError, match="test_pixels"):
        datafetch.fetch(target, server.url, [entry], progress=False)
    assert not (target / entry["path"]).exists() and _leftovers(target) == []
