"""The reproducibility report: every paper number beside ours, with a verdict per cell.

A paper module lists its cells (``chapter, artefact, cell, series, paper, ours, verified``);
:func:`verdicts` judges each one:

- ``reproduced``: ours within ``tolerance`` points of the paper's;
- ``trend reproduced``: not within tolerance, but along its series (the same measure over
  poison rates, pruning rates, ...) ours moves the way the paper's does from the neighbouring
  cell (up, down, or flat within the tolerance);
- ``not reproduced``: neither;
- a cell with a ``rule`` (a claim that its chapter judges by a rule written down beforehand,
  such as chapter 3's "NPoE's ASR below half of No defense's, its CACC within 3 points of
  Benign's") takes that verdict, ``reproduced`` or ``not reproduced``;
- ``paper number unverified``: the paper's number comes from a secondary source;
- ``not run at this profile``: the chapter ran, but not this cell (a rate outside its grid);
- ``not judged at smoke``: the chapter ran at ``smoke``, whose numbers mean nothing;
- ``not built yet``: the chapter's table does not exist yet.

>>> cells = pd.DataFrame({"chapter": "c", "artefact": "t", "cell": ["a", "b"], "series": "s",
...                       "paper": [10.0, 50.0], "ours": [12.0, 30.0], "verified": True})
>>> list(verdicts(cells, tolerance=5).verdict)
['reproduced', 'trend reproduced']
>>> list(verdicts(cells, tolerance=5, profiles={"c": "smoke"}).verdict)
['not judged at smoke', 'not judged at smoke']
>>> list(verdicts(cells.assign(rule=[None, "not reproduced"]), tolerance=5).verdict)
['reproduced', 'not reproduced']
"""
from __future__ import annotations

import numpy as np
import pandas as pd

VERDICTS = ("reproduced", "trend reproduced", "not reproduced", "paper number unverified",
            "not run at this profile", "not judged at smoke", "not built yet")
COLUMNS = ["chapter", "artefact", "cell", "paper", "ours", "verdict"]


def _direction(a: float, b: float, tolerance: float) -> int:
    """-1, 0 or +1: how ``b`` lies from ``a``, flat within the tolerance."""
    d = b - a
    return 0 if abs(d) <= tolerance else int(np.sign(d))


def verdicts(cells: pd.DataFrame, tolerance: float = 5.0, profiles: dict | None = None) -> pd.DataFrame:
    """Add a ``verdict`` column; ``tolerance`` is in the cells' unit (points of a percentage).
    ``profiles`` (chapter -> the profile it ran at): a chapter run at ``smoke`` is not judged."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    out = cells.copy()
    verdict = pd.Series("not reproduced", index=out.index, dtype=object)
    built = out.get("built", pd.Series(True, index=out.index)).astype(bool)
    for _, series in out[built].groupby("series", sort=False):
        idx = list(series.index)
        for pos, i in enumerate(idx):
            paper, ours = out.at[i, "paper"], out.at[i, "ours"]
            if pd.isna(ours):
                verdict[i] = "not run at this profile"
            elif abs(ours - paper) <= tolerance:
                verdict[i] = "reproduced"
            else:  # compare the step to a neighbour that both have
                neighbours = [j for j in idx[:pos][::-1] + idx[pos + 1:] if not pd.isna(out.at[j, "ours"])]
                if neighbours:
                    j = neighbours[0]
                    same = _direction(out.at[j, "paper"], paper, tolerance) == \
                        _direction(out.at[j, "ours"], ours, tolerance)
                    verdict[i] = "trend reproduced" if same else "not reproduced"
    verdict[~out.verified.astype(bool)] = "paper number unverified"
    if "rule" in out:  # a cell judged by its chapter's own rule (a claim, not one number)
        ruled = out.rule.notna() & out.rule.isin(VERDICTS[:3])
        verdict[ruled] = out.rule[ruled]
    smoke = out.chapter.map(lambda c: (profiles or {}).get(c) == "smoke").astype(bool)
    verdict[smoke & built] = "not judged at smoke"
    verdict[~built] = "not built yet"
    out["verdict"] = verdict
    return out


def not_built(chapter: str, artefact: str) -> dict:
    """The row that stands for an artefact whose chapter has not been built."""
    return {"chapter": chapter, "artefact": artefact, "cell": "", "series": f"{artefact}:",
            "paper": np.nan, "ours": np.nan, "verified": True, "built": False}


def counts(report: pd.DataFrame) -> pd.DataFrame:
    """Verdicts per chapter and artefact, in the order of :data:`VERDICTS`."""
    table = pd.crosstab([report.chapter, report.artefact], report.verdict)
    return table.reindex(columns=[v for v in VERDICTS if v in table.columns]).fillna(0).astype(int)


# what the report says of a chapter beside its cells
NOTES = {
    "npoe": "Every paper number of this chapter comes from a secondary summary of the paper (its full text "
            "could not be obtained), so each is marked unverified and judged by no verdict; ours stands beside it.",
    "locphylax": "The paper's only number obtained is its abstract's headline, the average ASR after the defense "
                 "(4.41 %); the chapter sets our average over its attacks beside it.",
}


def chapter_cells(report: pd.DataFrame, chapter: str):
    """One chapter's cells as the report shows them (a styled table), or None if it is not built."""
    r = report[report.chapter == chapter]
    if r.empty or (r.verdict == "not built yet").all():
        return None
    from . import tables

    return tables.view(r[["artefact", "cell", "paper", "ours", "verdict"]], align="left")


def headline(report: pd.DataFrame, chapters: list[str]) -> str:
    """One chapter group's verdicts in a phrase: ``"3 reproduced, 1 not reproduced of 4 judged"``,
    or why none is judged."""
    r = report[report.chapter.isin(chapters)]
    if r.empty or (r.verdict == "not built yet").all():
        return "not built yet"
    if (r.verdict == "not judged at smoke").all():
        return "not judged (built at smoke)"
    judged = r[r.verdict.isin(VERDICTS[:3])]
    counts_ = judged.verdict.value_counts()
    parts = [f"{int(counts_[v])} {v}" for v in VERDICTS[:3] if v in counts_]
    unverified = int((r.verdict == "paper number unverified").sum())
    text = (", ".join(parts) + f" of {len(judged)} judged") if parts else "none judged"
    return text + (f"; {unverified} paper number{'s' if unverified != 1 else ''} unverified" if unverified else "")


# the landing page's line per paper: its chapters and one headline cell (artefact, cell)
PAPERS = (
    ("Backdoor attacks against patch-based MoE", ("pmoe_attacks", "pmoe_routing_pruning"),
     ("pmoe-table1-cifar10", "square, 2 %, ASR"), "CIFAR-10, square trigger at 2 %: ASR"),
    ("Nested PoE", ("npoe",), ("npoe-results", "sst2, mix3, NPoE, ASR"), "SST-2, 3-trigger mix, NPoE: ASR"),
    ("Locphylax", ("locphylax",), ("locphylax-results", "mean ASR after Locphylax"), "mean ASR after Locphylax"),
)


def paper_lines(report: pd.DataFrame, chapters: list[str] | None = None) -> str:
    """Markdown, one line per paper whose chapters are in ``chapters`` (default: all): the
    report's verdicts and its headline number beside the paper's."""
    lines = []
    for name, group, (artefact, cell), what in PAPERS:
        if chapters is not None and not set(group) & set(chapters):
            continue
        line = f"- **{name}**: {headline(report, list(group))}."
        row = report[(report.artefact == artefact) & (report.cell == cell)]
        if len(row) and not pd.isna(row.ours.iloc[0]):
            r = row.iloc[0]
            mark = "" if r.verdict != "paper number unverified" else " (unverified)"
            line += f" {what} {r.ours:.1f} % here, {r.paper:g} % in the paper{mark}."
        lines.append(line)
    return "\n".join(lines)


def chapter_lines(report: pd.DataFrame, builds: pd.DataFrame) -> str:
    """Markdown, one line per chapter of ``builds`` (:func:`book.chapter_builds`: chapter, title,
    profile) that has cells in the report: the profile it ran at, its verdicts, and each claim
    it judges by its own rule with that verdict."""
    lines = []
    for _, b in builds.iterrows():
        r = report[report.chapter == b.chapter]
        if r.empty:
            continue
        at = f" at `{b.profile}`" if isinstance(b.profile, str) else ""
        line = f"- **{b.title}**{at}: {headline(report, [b.chapter])}."
        if "rule" in r:
            judged = r[r.rule.notna() & r.verdict.isin(VERDICTS[:3])]
            if len(judged):
                line += " By its own rule: " + "; ".join(f"{c.cell}: {c.verdict}" for c in judged.itertuples()) + "."
        lines.append(line)
    return "\n".join(lines)
