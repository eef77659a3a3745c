"""Execute the chapters with papermill and build the book with Jupyter Book 1.x.

    python -m moebackdoor.book execute --profile quick   # every chapter, then the summary pages
    python -m moebackdoor.book run pmoe_attacks -p seeds "[0, 1]"   # one chapter, new parameters
    python -m moebackdoor.book build                     # book/ -> book/_build/html, warnings as errors
    python -m moebackdoor.book execute --only npoe       # a book of some chapters (a course's, say)
    python -m moebackdoor.book build --no-solutions      # the exercises without their solutions

The chapters are the notebooks of ``book/_toc.yml`` (jupytext MyST files in ``notebooks/``),
executed in its order; the summary pages (landing page, reproducibility report, performance
appendix) read the chapters' outputs and are executed after them. ``execute --only`` chooses the
book's chapters (its *contents*, recorded for the summary pages and the build); a chapter in the
contents that has not been executed renders as a short page saying how to build it. While a chapter runs, the
terminal shows which run is training, with bars and the time left (:mod:`moebackdoor.progress`).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from . import machine, paths, profiles
from .params import ParameterError, check_choice, check_choices
from .paths import REPO_ROOT
from .progress import ENV as PROGRESS_ENV, Monitor

NOTEBOOKS = REPO_ROOT / "notebooks"
BOOK = REPO_ROOT / "book"
EXPERIMENTS = REPO_ROOT / "experiments"
PROFILES = profiles.NAMES
# pages that summarise the chapters' outputs: executed after every chapter, in this order
SUMMARY_PAGES = ("reproducibility", "performance", "intro")
CONTENTS = "contents.json"  # in the builds folder: the chapters the book is made of
# the first line of a page that stands in for a chapter not executed yet (build replaces it)
PLACEHOLDER = "<!-- moebackdoor: not built yet -->"


def toc_stems(toc: Path = BOOK / "_toc.yml") -> list[str]:
    """The executed notebooks named in the table of contents (``chapters/<stem>``), in order."""
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("root", "file") and str(value).startswith("chapters/"):
                    yield str(value).split("/", 1)[1]
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
    return list(dict.fromkeys(walk(yaml.safe_load(toc.read_text()))))


def chapter_sources() -> list[Path]:
    """The chapters (not the summary pages), in the book's order."""
    return [NOTEBOOKS / f"{s}.md" for s in toc_stems() if s not in SUMMARY_PAGES]


def summary_sources() -> list[Path]:
    return [NOTEBOOKS / f"{s}.md" for s in SUMMARY_PAGES]


def chapter_titles() -> dict[str, str]:
    """Every chapter's title (its first heading), by file stem, in the book's order."""
    return {s.stem: title(s) for s in chapter_sources()}


def contents() -> list[str]:
    """The chapters of the book being made, in the book's order: those the last ``execute`` was
    given (``--only``, ``make book CHAPTERS=...``), else every chapter."""
    stems = [s.stem for s in chapter_sources()]
    path = paths.builds_dir() / CONTENTS
    if not path.is_file():
        return stems
    chosen = set(json.loads(path.read_text())["chapters"])
    return [s for s in stems if s in chosen]


def record_contents(chapters: list[str]) -> Path:
    """Note the book's chapters (atomically), for the summary pages and :func:`build`."""
    return _write_json(paths.builds_dir() / CONTENTS, {"chapters": list(chapters)})


def _write_json(path: Path, data) -> Path:
    """``data`` as JSON at ``path``, written atomically (a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def parameters_of(source: Path) -> dict[str, dict]:
    """A notebook's parameters: name -> {"default": source text, "help": the line's comment}."""
    import jupytext

    cells = [c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    code = cells[0].source
    lines = code.splitlines()
    found = {}
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            line = lines[node.end_lineno - 1]
            comment = line.split("#", 1)[1].strip() if "#" in line[node.end_col_offset:] else ""
            found[node.targets[0].id] = {"default": ast.get_source_segment(code, node.value), "help": comment}
    return found


def parameter_table(chapter: str, values: dict) -> "pd.DataFrame":
    """A chapter's parameters as its first section lists them: the value this page ran with,
    the default, and what the parameter does (the comment beside it in the parameters cell)."""
    import pandas as pd

    rows = [{"parameter": name, "this page": repr(values.get(name)), "default": p["default"],
             "what it does": p["help"]} for name, p in parameters_of(NOTEBOOKS / f"{chapter}.md").items()]
    return pd.DataFrame(rows).set_index("parameter")


def show_parameters(chapter: str, values: dict):
    """:func:`parameter_table` in the book's table style, left-aligned."""
    from . import tables

    return tables.view(parameter_table(chapter, values), align="left")


def check_parameters(source: Path, parameters: dict) -> None:
    """Refuse parameters for a notebook without a ``parameters`` cell, or a parameter it does not
    have (papermill would only warn, and the notebook's defaults would silently win)."""
    import difflib

    known = parameters_of(source)
    if parameters and not known:
        raise ValueError(f"{source} has no cell tagged 'parameters'; papermill cannot set its parameters")
    unknown = [name for name in parameters if name not in known]
    if unknown:  # every unknown name at once, each with the nearest known one
        hints = {n: difflib.get_close_matches(n, known, n=1) for n in unknown}
        guess = "; ".join(f"did you mean `{hints[n][0]}` for `{n}`?" for n in unknown if hints[n])
        raise ParameterError(", ".join(unknown), f"one of the parameters of {source.stem}: {', '.join(known)}"
                             + (f" ({guess})" if guess else ""),
                             parameters[unknown[0]] if len(unknown) == 1 else {n: parameters[n] for n in unknown})


def _kernel_manager(socket_dir: str):
    """A kernel manager talking to its kernel over IPC sockets in ``socket_dir`` (not plain TCP)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

        @default("ip")
        def _ip_default(self):
            return os.path.join(socket_dir, "kernel")
    return IPCKernelManager


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hide_injected_parameters(path: Path) -> None:
    """The cell papermill adds with the given parameters stays out of the page: the page's
    parameter table shows every value it ran with."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


def execute_notebook(source: Path, out_dir: Path, parameters: dict | None = None,
                     progress_file: Path | None = None) -> Path:
    """Run one jupytext notebook through papermill into ``out_dir/<name>.ipynb``.

    The output appears only once the whole notebook has run; a notebook that fails is kept
    as ``<name>.failed.ipynb``. ``progress_file`` receives the progress events of the runs
    the notebook trains (see :class:`moebackdoor.progress.Monitor`).
    """
    import jupytext
    import papermill as pm

    parameters = parameters or {}
    check_parameters(source, parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{source.stem}.ipynb"
    tmp = out_dir / f".{source.stem}-{uuid.uuid4().hex[:8]}.ipynb"
    env = {"PYDEVD_DISABLE_FILE_VALIDATION": 1, **({PROGRESS_ENV: progress_file} if progress_file else {})}
    try:
        with tempfile.TemporaryDirectory(prefix="moebd-kernel-") as sockets, _environ(**env):
            pm.execute_notebook(jupytext.read(source), str(tmp), parameters=parameters,
                                kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
                                kernel_manager_class=_kernel_manager(sockets))
        hide_injected_parameters(tmp)
        os.replace(tmp, out)
    except pm.PapermillExecutionError as exc:
        if tmp.exists():
            exc.kept = out_dir / f"{source.stem}.failed.ipynb"  # where the failed notebook is kept
            os.replace(tmp, exc.kept)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return out


def title(source: Path) -> str:
    """A notebook's title: its first level-1 heading."""
    return next((line[2:].strip() for line in source.read_text().splitlines() if line.startswith("# ")),
                source.stem)


def record_build(source: Path, parameters: dict, seconds: float, started: float) -> Path:
    """Note when, at which profile and on what machine a chapter was executed (for the landing page)."""
    record = {"chapter": source.stem, "title": title(source), "profile": parameters.get("profile"),
              "parameters": parameters, "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
              "wall_seconds": round(seconds, 1), "machine": machine.describe()}
    return _write_json(paths.builds_dir() / f"{source.stem}.json", record)


def chapter_builds() -> "pd.DataFrame":
    """One row per chapter of the book (:func:`contents`): when, at which profile, on what machine
    and how long it was last executed (chapters never executed have empty cells)."""
    import pandas as pd

    rows = []
    for source in [NOTEBOOKS / f"{c}.md" for c in contents()]:
        path = paths.builds_dir() / f"{source.stem}.json"
        r = json.loads(path.read_text()) if path.is_file() else {}
        rows.append({"chapter": source.stem, "title": title(source), "profile": r.get("profile"),
                     "executed": r.get("started"),
                     "machine": machine.text(r["machine"]) if r else None,
                     "wall time": _duration(r["wall_seconds"]) if r else None})
    return pd.DataFrame(rows)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _execute_with_report(source: Path, out_dir: Path, parameters: dict, step: str, record: bool) -> Path:
    print(f"{step} {source.stem}" + (f" at {parameters['profile']}" if "profile" in parameters else ""),
          file=sys.stderr, flush=True)
    started, start = time.time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moebd-progress-") as scratch:
        monitor = Monitor(Path(scratch) / "progress.jsonl")
        monitor.start()
        try:
            out = execute_notebook(source, out_dir, parameters, progress_file=monitor.path)
        except KeyboardInterrupt:
            monitor.stop()
            print(f"\nInterrupted during {source.stem}. Every finished run is kept in {paths.runs_dir()} "
                  f"({monitor.finished_runs} trained in this chapter before the interruption) and no "
                  "half-written run or page is left; run the same command again to resume: only the "
                  "missing runs are trained.", file=sys.stderr, flush=True)
            raise
        finally:
            monitor.stop()
    seconds = time.perf_counter() - start
    if record:
        record_build(source, parameters, seconds, started)
    print(f"  done: {source.stem} in {_duration(seconds)} -> {out}", file=sys.stderr, flush=True)
    return out


def execute_all(profile: str, out_dir: Path = BOOK / "chapters", only: list[str] | None = None,
                verbose: bool = False) -> list[Path]:
    """Execute the chapters (all, or those named in ``only``) at ``profile``, then the summary pages
    (always: they are quick, and name only summary pages in ``only`` to refresh just them). The
    chapters executed become the book's :func:`contents`."""
    check_choice("profile", profile, PROFILES)
    sources = chapter_sources()
    if only is not None:
        check_choices("only", only, [s.stem for s in sources] + list(SUMMARY_PAGES))
        sources = [s for s in sources if s.stem in only]
    if only is None or sources:  # naming only summary pages refreshes them and keeps the contents
        record_contents([s.stem for s in sources])
    pages = summary_sources()
    done = []
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(sys.stderr if verbose else quiet):
        for i, source in enumerate(sources + pages, 1):
            params = {"profile": profile} if source in sources else {}
            done.append(_execute_with_report(source, out_dir, params, f"[{i}/{len(sources) + len(pages)}]",
                                             record=source in sources))
    return done


def run_experiment(chapter: str, parameters: dict, out_dir: Path | None = None,
                   publish: bool = False) -> Path:
    """Re-execute one chapter with new parameters.

    The notebook and its tables and figures go to ``experiments/<chapter>-<time>/`` (or
    ``out_dir``), so the published chapter is untouched; ``publish`` writes them into the book
    instead. Runs come from the shared run cache: only missing ones are trained.
    """
    stems = [s.stem for s in chapter_sources()]
    check_choice("chapter", chapter, stems)
    source = NOTEBOOKS / f"{chapter}.md"
    check_parameters(source, parameters)
    if publish:
        return _execute_with_report(source, BOOK / "chapters", parameters, "[1/1]", record=True)
    out_dir = Path(out_dir or EXPERIMENTS / f"{chapter}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    with _environ(MOEBD_OUTPUT_DIR=out_dir / "generated"):
        out = _execute_with_report(source, out_dir, parameters, "[1/1]", record=False)
    print(f"  tables and figures of this experiment: {out_dir / 'generated'}", file=sys.stderr)
    return out


def book_toc(chapters: list[str], toc: Path = BOOK / "_toc.yml") -> dict:
    """The table of contents with only ``chapters`` among the chapters (the summary pages and
    the references stay); a part left empty is dropped."""
    keep = set(chapters) | set(SUMMARY_PAGES)

    def kept(entry) -> bool:
        f = str(entry.get("file", ""))
        return not f.startswith("chapters/") or f.split("/", 1)[1] in keep

    data = yaml.safe_load(toc.read_text())
    parts = []
    for part in data.get("parts", []):
        entries = [e for e in part.get("chapters", []) if kept(e)]
        if entries:
            parts.append({**part, "chapters": entries})
    return {**data, "parts": parts}


def placeholder_pages(stems: list[str], book_dir: Path = BOOK, chapters: list[str] | None = None) -> list[Path]:
    """A short page for each of ``stems`` not executed yet (``chapters/<stem>.ipynb`` missing),
    saying so and how to build it as part of the book of ``chapters`` (default :func:`contents`);
    stand-in pages of earlier builds are removed first."""
    chapters = contents() if chapters is None else chapters
    folder = book_dir / "chapters"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.md"):
        if old.read_text().startswith(PLACEHOLDER):
            old.unlink()
    written = []
    for stem in stems:
        if (folder / f"{stem}.ipynb").is_file():
            continue
        chapter = stem not in SUMMARY_PAGES
        command = (f"make book CHAPTERS=\"{' '.join(chapters)}\"" if chapter
                   else "python -m moebackdoor.book execute --only " + stem)
        page = folder / f"{stem}.md"
        page.write_text(f"{PLACEHOLDER}\n# {title(NOTEBOOKS / f'{stem}.md')}\n\n"
                        f"This {'chapter' if chapter else 'page'} has not been built yet. "
                        f"Build it with\n\n```bash\n{command}\n```\n\n"
                        + ("which executes it (training only the runs missing from the cache) and rebuilds "
                           "the book; `make run NB=" + stem + " ARGS='--publish'` executes it alone.\n"
                           if chapter else "which reads the chapters' outputs.\n"))
        written.append(page)
    return written


def build(book_dir: Path = BOOK, config: Path = REPO_ROOT / "_config.yml", toc: Path | None = None,
          chapters: list[str] | None = None, solutions: bool = True) -> None:
    """Build the HTML book into ``book_dir/_build/html``; any warning fails the build.

    ``chapters``: the chapters in the book (default :func:`contents`); one not executed yet
    renders as a page that says how to build it. ``solutions=False`` leaves out the exercises'
    solutions (for pages handed out before a class)."""
    stems = [s.stem for s in chapter_sources()]
    chosen = contents() if chapters is None else check_choices("chapters", chapters, stems)
    placeholder_pages(list(chosen) + list(SUMMARY_PAGES), book_dir, chosen)
    generated = book_dir / "_build" / ".config"
    generated.mkdir(parents=True, exist_ok=True)
    toc_file = generated / "_toc.yml"
    toc_file.write_text(yaml.safe_dump(book_toc(chosen, toc or book_dir / "_toc.yml"), sort_keys=False))
    settings = yaml.safe_load(config.read_text())
    settings.setdefault("sphinx", {}).setdefault("config", {})["moebd_solutions"] = bool(solutions)
    has_url = bool((settings.get("repository") or {}).get("url"))
    settings.setdefault("html", {}).update(use_repository_button=has_url, use_issues_button=has_url)
    if not has_url:
        settings.pop("repository", None)  # Jupyter Book's own placeholder address must not show either
    config_file = config.with_name(f".{config.stem}.build.yml")  # beside the original: its paths hold
    config_file.write_text(yaml.safe_dump(settings, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(book_dir), "--config", str(config_file),
           "--toc", str(toc_file), "--path-output", str(book_dir),
           "-W", "-n", "--keep-going"]
    try:
        subprocess.run(cmd, check=True, cwd=REPO_ROOT)  # _config.yml's paths are relative to it
    finally:
        config_file.unlink(missing_ok=True)


def _parse_value(text: str):
    """A command-line value as papermill reads ``-p``: YAML (numbers, lists, None/null, booleans)."""
    value = yaml.safe_load(text)
    return None if value == "None" else value


def main(argv=None):
    from papermill.exceptions import PapermillExecutionError

    parser = argparse.ArgumentParser(prog="python -m moebackdoor.book")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute every chapter at a profile, then the summary pages")
    ex.add_argument("--profile", default="quick", choices=PROFILES)
    ex.add_argument("--only", nargs="+", help="chapter names (file stems) to execute, the book's chapters; "
                    "the summary pages always run")
    run = sub.add_parser("run", help="re-execute one chapter with new parameters")
    run.add_argument("chapter", help=f"a chapter: {', '.join(s.stem for s in chapter_sources())}")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter and its value (YAML: 0.02, [0, 1], None, true)")
    run.add_argument("-y", "--yaml", action="append", default=[], help="parameters as a YAML mapping")
    run.add_argument("--out", type=Path, help="output folder (default experiments/<chapter>-<time>/)")
    run.add_argument("--publish", action="store_true", help="write into the book instead of a separate folder")
    run.add_argument("--list", action="store_true", help="list the chapter's parameters, defaults and what they accept")
    bd = sub.add_parser("build", help="build the HTML book")
    bd.add_argument("--chapters", nargs="+", help="the chapters in the book (default: those last executed)")
    bd.add_argument("--no-solutions", action="store_true", help="leave out the exercises' solutions")
    args = parser.parse_args(argv)
    try:
        if args.command == "execute":
            execute_all(args.profile, only=args.only, verbose=True)
        elif args.command == "run" and args.list:
            check_choice("chapter", args.chapter, [s.stem for s in chapter_sources()])
            for name, p in parameters_of(NOTEBOOKS / f"{args.chapter}.md").items():
                print(f"{name} = {p['default']}\n    {p['help']}")
        elif args.command == "run":
            parameters = {}
            for text in args.yaml:
                mapping = yaml.safe_load(text)
                if not isinstance(mapping, dict):
                    parser.error(f"-y expects a YAML mapping, got {text!r}")
                parameters.update(mapping)
            parameters.update({k: _parse_value(v) for k, v in args.parameter})
            run_experiment(args.chapter, parameters, args.out, args.publish)
        else:
            build(chapters=args.chapters, solutions=not args.no_solutions)
    except ParameterError as exc:
        parser.exit(2, f"error: {exc}\n")
    except PapermillExecutionError as exc:
        kept = getattr(exc, "kept", None)
        parser.exit(1, f"error: a chapter stopped with {exc.ename}: {exc.evalue}\n"
                       + (f"(the failed notebook is kept as {kept})\n" if kept else ""))
    except KeyboardInterrupt:
        parser.exit(130)


if __name__ == "__main__":
    main()
