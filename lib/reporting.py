"""Save the book's artefacts under stable names: tables as CSV, figures as PNG."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

from . import paths


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return path


def save_table(df: pd.DataFrame, table_id: str) -> Path:
    """Write ``df`` to ``<output>/tables/<table_id>.csv``."""
    return _atomic(paths.tables_dir() / f"{table_id}.csv", lambda p: df.to_csv(p, index=False))


def save_figure(fig, figure_id: str, dpi: int = 150) -> Path:
    """Write ``fig`` to ``<output>/figures/<figure_id>.png``, once it keeps the book's figure
    conventions (:func:`moebackdoor.style.figure_problems`)."""
    from .style import figure_problems

    problems = figure_problems(fig)
    if problems:
        raise ValueError(f"figure {figure_id!r} breaks the book's conventions: " + "; ".join(problems))
    return _atomic(paths.figures_dir() / f"{figure_id}.png",
                   lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))


def mean_std(mean: float, std: float, n: int, digits: int = 1) -> str:
    """'84.1 ± 0.3' over several seeds, '84.1' for one, '—' for none."""
    if pd.isna(mean):
        return "—"
    if n > 1 and not pd.isna(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def bench_view(df: pd.DataFrame):
    """A bench table for the page: measure, value (2 decimals; "not measured" where empty), target."""
    from . import tables

    view = df[["measure", "value", "target"]].assign(target=df["target"].fillna(""))
    return tables.view(view, digits=2, missing="not measured")


def show_all(items) -> None:
    """Display each item in a notebook: a string as Markdown, anything else (a table) as it is."""
    from IPython.display import Markdown, display

    display(*[Markdown(x) if isinstance(x, str) else x for x in items])
