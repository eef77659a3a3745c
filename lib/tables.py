"""The book's one table style: human headers, numbers rounded for reading, no index, no
True/False, no cell ever cut short, and wide tables that scroll inside their column.

Chapters call :func:`moebackdoor.style.use` once; from then on every DataFrame a cell shows is
drawn by :func:`view`. A table function that needs other digits or alignment calls
:func:`view` itself.

>>> df = pd.DataFrame({"poison_rate": [0.5, 1.0], "asr": [91.234, 100.0], "flagged": [True, False]})
>>> list(view(df).data.columns)
['poison rate (%)', 'ASR (%)', 'flagged']
"""
from __future__ import annotations

import numbers
import re

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

# the names the library gives columns, as a reader reads them
HEADERS = {
    "poison_rate": "poison rate (%)", "pruning_rate": "pruning rate (%)",
    "asr": "ASR (%)", "cacc": "CACC (%)", "ba": "BA (%)", "ca": "CA (%)", "cad": "CAD (points)",
    "asr_sd": "ASR sd", "cacc_sd": "CACC sd", "asr_lo": "ASR 95 % low", "asr_hi": "ASR 95 % high",
    "no_label": "no label (%)", "n_train": "training rows", "wall_seconds": "wall time (s)",
    "ours_before": "ours before", "paper_asr": "ASR paper", "paper_cacc": "CACC paper",
}
# words that read as acronyms wherever they stand in a generated header
ACRONYMS = {"asr": "ASR", "cacc": "CACC", "ba": "BA", "ca": "CA", "cad": "CAD", "lr": "lr", "bki": "BKI",
            "onion": "ONION", "strip": "STRIP", "rap": "RAP", "npoe": "NPoE", "dpoe": "DPoE", "poe": "PoE",
            "moe": "MoE", "pmoe": "pMoE", "wrn": "WRN", "llm": "LLM", "sst2": "SST-2", "lora": "LoRA",
            "crow": "CROW", "id": "ID"}
BOOLEANS = {True: "yes", False: "no"}
MISSING = "—"
CLASS = "book-table"
MEASURES = ("(%)", "(points)")


def header(name) -> str:
    """A reader's header for a column named by the library: ``poison_rate`` -> ``poison rate (%)``,
    ``expert_1`` -> ``expert 1``, ``asr_by_trigger`` -> ``ASR by trigger``."""
    if not isinstance(name, str):
        return " ".join(header(n) for n in name if n != "") if isinstance(name, tuple) else str(name)
    if name in HEADERS:
        return HEADERS[name]
    if "_" not in name and name.lower() not in ACRONYMS:
        return name  # already written for readers
    return " ".join(ACRONYMS.get(w.lower(), w) for w in re.split(r"_+", name) if w)


def _cell(v, digits: int, integral: bool, missing: str):
    if isinstance(v, (bool, np.bool_)):
        return BOOLEANS[bool(v)]
    if v is None or (isinstance(v, numbers.Real) and pd.isna(v)):
        return missing
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}" if abs(int(v)) >= 1000 else str(int(v))
    if isinstance(v, numbers.Real):
        if abs(v) >= 1e9:  # a diverged loss or perplexity: its power of ten is what a reader needs
            return f"{v:.1e}"
        return f"{v:,.0f}" if integral else f"{v:,.{digits}f}"
    return str(v)


def _index_as_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The index as the first columns, unless it only numbers the rows (an unnamed index of
    integers: 0, 1, 2…, or what is left of it after filtering). Unnamed labels (method names, a
    knob per row) keep a blank header."""
    named = any(n is not None for n in df.index.names)
    if not named and all(lvl.dtype.kind in "iu" for lvl in getattr(df.index, "levels", [df.index])):
        return df.reset_index(drop=True)
    names = [n if n is not None else " " * i for i, n in enumerate(df.index.names)]
    return df.rename_axis(names if len(names) > 1 else names[0]).reset_index()


def view(obj, digits: int | dict = 1, align: str = "right", missing: str = MISSING) -> Styler:
    """``obj`` (a DataFrame, or a Styler of one) as the book shows tables. The index becomes
    ordinary columns (an unnamed index of integers is dropped); headers go through :func:`header`;
    floats get ``digits`` decimals (a dict gives them per column), a float column of whole
    numbers none unless it is a measure (a header ending in "(%)" or "(points)"); booleans read yes/no; missing values ``missing``."""
    df = _index_as_columns(obj.data if isinstance(obj, Styler) else obj)
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        s = df[col]
        d = digits.get(col, 1) if isinstance(digits, dict) else digits
        values = s if s.dtype.kind == "f" else None
        name = header(col)
        integral = (values is not None and values.notna().any() and bool((values.dropna() % 1 == 0).all())
                    and not name.endswith(MEASURES))
        out[name] = [_cell(v, d, integral, missing) for v in s]
    left = align == "left"
    return (out.style.hide(axis="index")
            .set_table_attributes(f'class="{CLASS}"')
            .set_table_styles([{"selector": "td, th", "props": [("text-align", "left" if left else "right"),
                                                                 ("white-space", "normal")]},
                               {"selector": "td:first-child, th:first-child", "props": [("text-align", "left")]}]))


def html(obj, **kw) -> str:
    return view(obj, **kw).to_html()


def install() -> None:
    """Draw every DataFrame (and every Styler) a notebook cell shows through :func:`view`."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the notebooks' dependencies
        return
    ip = get_ipython()
    if ip is None:
        return
    formatter = ip.display_formatter.formatters["text/html"]
    formatter.for_type(pd.DataFrame, html)
    formatter.for_type(Styler, lambda s: s.to_html() if CLASS in (s.table_attributes or "") else html(s))
    pd.set_option("display.max_colwidth", None)
