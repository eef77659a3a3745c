"""Progress a reader can see: bars in the notebook, and on the terminal that runs the book.

A chapter runs in a papermill kernel, whose output lands in the notebook, not on the
terminal. So the run cache and the training loops also report *events*: when the
environment variable ``MOEBD_PROGRESS`` names a file (``moebackdoor.book`` sets it), each
event is appended to it as one JSON line, and :class:`Monitor`, a thread of the process
that runs ``make book``, draws them there as bars with the time left.

>>> bar = Bar(total=100, desc="training")   # a tqdm bar in the notebook; events on the side
>>> bar.update(10); bar.close()
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

ENV = "MOEBD_PROGRESS"
STEP_EVERY_S = 2.0  # at most one step event this often


def emit(event: str, **fields) -> None:
    """Append one event to the progress file, if a terminal is listening."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "time": time.time(), **fields})
    with open(path, "a") as f:
        f.write(line + "\n")


class Bar:
    """A tqdm bar in the notebook whose progress also reaches the terminal (as ``steps`` events).
    Under ``moebackdoor.book`` (a terminal is listening) only the terminal draws it, so that no
    bar lands in a page."""

    def __init__(self, total: int, desc: str, disable: bool = False):
        self.total, self.done, self._last = total, 0, 0.0
        disable = disable or bool(os.environ.get(ENV))
        self._bar = tqdm(total=total, desc=desc, disable=disable, mininterval=5, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        now = time.monotonic()
        if now - self._last >= STEP_EVERY_S or self.done >= self.total:
            self._last = now
            emit("steps", done=self.done, total=self.total)

    def close(self) -> None:
        self._bar.close()


class Monitor(threading.Thread):
    """Follow a progress file and draw it on the terminal: one bar over the runs of the current
    sweep (with the time left) and one over the steps of the run that is training."""

    def __init__(self, path: Path, stream=None, poll_s: float = 0.5):
        super().__init__(daemon=True)
        self.path, self.stream, self.poll_s = Path(path), stream or sys.stderr, poll_s
        self.finished_runs = 0  # trained and saved while this monitor watched
        self._halt = threading.Event()
        self._runs = self._steps = None
        self._label = ""
        self._cached = ""

    def run(self) -> None:
        offset = 0
        while True:
            stopping = self._halt.is_set()
            if self.path.exists():
                with open(self.path) as f:
                    f.seek(offset)
                    while (line := f.readline()).endswith("\n"):
                        offset += len(line.encode())
                        self.handle(json.loads(line))
            if stopping:
                break
            self._halt.wait(self.poll_s)
        self._close_bars()

    def stop(self) -> None:
        """Draw what is left in the file, then end (safe to call twice)."""
        self._halt.set()
        if self.is_alive():
            self.join()

    def _bar(self, total, desc, position):
        return tqdm(total=total, desc=desc, file=self.stream, position=position, leave=position == 0,
                    dynamic_ncols=True, mininterval=1)

    def _close_bars(self, runs: bool = True) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        if runs and self._runs is not None:
            self._runs.close()
            self._runs = None

    def handle(self, e: dict) -> None:
        kind = e["event"]
        if kind == "sweep":
            self._close_bars()
            if not e["todo"]:
                tqdm.write(f"  {e['desc']}: all {e['total']} cached", file=self.stream)
                return
            self._runs = self._bar(e["todo"], f"  {e['desc']}", 0)
            self._cached = f"{e['total'] - e['todo']} of {e['total']} cached"
            self._runs.set_postfix_str(self._cached)
        elif kind == "running" and self._runs is not None:  # a cluster trains several at once
            self._runs.set_postfix_str(f"{self._cached}, {e['running']} running, {e['failed']} failed")
        elif kind == "run_start":
            self._close_bars(runs=False)
            self._label = e["label"]
        elif kind == "steps" and self._runs is not None:  # a training loop inside a sweep's run
            if self._steps is None or self._steps.total != e["total"]:
                self._close_bars(runs=False)
                self._steps = self._bar(e["total"], f"    training {self._label}", 1)
            self._steps.update(e["done"] - self._steps.n)
        elif kind == "run_done":
            self.finished_runs += 1
            self._close_bars(runs=False)
            tqdm.write(f"    trained {e['label']} in {e['seconds']:.0f} s", file=self.stream)
            if self._runs is not None:
                self._runs.update()
        elif kind == "run_failed":
            self._close_bars(runs=False)
            tqdm.write(f"  run failed: {e['label']}: {e['error']}", file=self.stream)
        elif kind == "sweep_done":
            self._close_bars()
