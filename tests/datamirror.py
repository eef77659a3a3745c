"""A local mirror of the data's sources, served over HTTP, for the data step's tests and the by-hand rebuild.

The mirror has the layout of ``raw.githubusercontent.com`` (``<repo>/<commit>/<path>``); its files are
recovered from a data folder: the gunzipped text files, the trigger images, CIFAR-10's JPEGs cut out
of the archive. The server answers HTTP Range requests and can drop a connection mid-file.
"""
from __future__ import annotations

import gzip
import http.server
import re
import shutil
import threading
from pathlib import Path

import numpy as np


def mirror_file(mirror: Path, entry: dict, source: str) -> Path:
    return mirror / entry["repo"] / entry["commit"] / source


def add_sources(mirror: Path, data_dir: Path, files: list[dict]) -> None:
    """Put the source bytes of the text files and trigger images of ``files`` into the mirror."""
    for e in files:
        if e["build"] not in ("gzip", "copy"):
            continue
        out = mirror_file(mirror, e, e["source"])
        out.parent.mkdir(parents=True, exist_ok=True)
        stored = (data_dir / e["path"]).read_bytes()
        out.write_bytes(gzip.decompress(stored) if e["build"] == "gzip" else stored)


def add_cifar10(mirror: Path, data_dir: Path, entry: dict, per_class: dict[str, int]) -> None:
    """CIFAR-10's first JPEGs of every class (``per_class`` per split), cut from the stored archive."""
    full = entry["members"]["per_class"]
    with np.load(data_dir / entry["path"]) as d:
        for split in ("train", "test"):
            buf, off = d[f"{split}_jpeg"].tobytes(), d[f"{split}_offsets"]
            for label, name in enumerate(entry["members"]["class_names"]):
                for i in range(per_class[split]):
                    k = label * full[split] + i  # path order: class by class, NNNN within
                    out = mirror_file(mirror, entry, f"{split}/{name}/{i:04d}.jpg")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(buf[off[k]:off[k + 1]])


class MirrorServer:
    """``http.server`` on 127.0.0.1 (port 0) in a thread; ``drop_once`` paths lose their connection
    halfway through the first GET; ``requests`` records (path, Range header) of every GET."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rel = self.path.lstrip("/")
                server.requests.append((rel, self.headers.get("Range")))
                path = server.root / rel
                if not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                start = 0
                if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if rel in server.drop_once:
                    server.drop_once.discard(rel)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
