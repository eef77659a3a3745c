"""Execute the chapters with papermill and build the book with Jupyter Book 1.x.

    python -m moebackdoor.book execute --profile quick   # notebooks/*.md -> book/chapters/*.ipynb
    python -m moebackdoor.book build                     # book/ -> book/_build/html, warnings as errors
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .paths import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
BOOK = REPO_ROOT / "book"
PROFILES = ("smoke", "quick", "paper")


def chapter_sources() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.md"))


def execute_notebook(source: Path, out_dir: Path, parameters: dict | None = None) -> Path:
    """Run one jupytext notebook through papermill into ``out_dir/<name>.ipynb``.

    A notebook without a cell tagged ``parameters`` is refused: papermill would
    only warn, and the notebook's defaults would silently win.
    """
    import jupytext
    import papermill as pm

    nb = jupytext.read(source)
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise ValueError(f"{source} has no cell tagged 'parameters'; papermill cannot set its parameters")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{source.stem}.ipynb"
    tmp = out_dir / f".{source.stem}-{uuid.uuid4().hex[:8]}.ipynb"
    try:
        pm.execute_notebook(nb, str(tmp), parameters=parameters or {}, kernel_name="python3",
                            cwd=str(NOTEBOOKS), progress_bar=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def execute_all(profile: str, out_dir: Path = BOOK / "chapters", only: list[str] | None = None,
                verbose: bool = False) -> list[Path]:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    sources = [s for s in chapter_sources() if not only or s.stem in only]
    done = []
    for source in sources:
        start = time.perf_counter()
        done.append(execute_notebook(source, out_dir, {"profile": profile}))
        if verbose:
            print(f"executed {source.name} at {profile} in {time.perf_counter() - start:.0f} s", flush=True)
    return done


def build(book_dir: Path = BOOK, config: Path = REPO_ROOT / "_config.yml",
          toc: Path | None = None) -> None:
    """Build the HTML book into ``book_dir/_build/html``; any warning fails the build."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(book_dir), "--config", str(config),
           "--toc", str(toc or book_dir / "_toc.yml"), "--path-output", str(book_dir),
           "-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m moebackdoor.book")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute every chapter at a profile")
    ex.add_argument("--profile", default="quick", choices=PROFILES)
    ex.add_argument("--only", nargs="*", help="chapter names (file stems) to execute")
    sub.add_parser("build", help="build the HTML book")
    args = parser.parse_args(argv)
    if args.command == "execute":
        execute_all(args.profile, only=args.only, verbose=True)
    else:
        build()


if __name__ == "__main__":
    main()
