"""Every chapter executes at the smoke profile, and the book builds with warnings as errors."""
import re

import pandas as pd
import pytest

from moebackdoor import book, reproducibility
from moebackdoor.llm import locphylax_paper
from moebackdoor.vision import pmoe_paper

CSV_COLUMNS = ["trigger", "poison_rate", "asr", "ba", "cad", "paper_asr", "paper_ba", "paper_cad"]


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = tmp_path / "bare.md"
    nb.write_text("---\njupytext:\n  text_representation:\n    format_name: myst\n---\n"
                  "# A page\n\n```{code-cell} ipython3\nprofile = 'quick'\n```\n")
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        book.execute_notebook(nb, tmp_path / "out", {"profile": "smoke"})


def test_chapters_execute_at_smoke_and_the_book_builds(smoke_book):
    root, site, executed = smoke_book
    assert [p.stem for p in executed] == [s.stem for s in book.chapter_sources() + book.summary_sources()]

    tables = root / "generated" / "tables"
    for table_id in ("pmoe-table1-cifar10", "pmoe-table2-gtsrb"):
        df = pd.read_csv(tables / f"{table_id}.csv")
        assert list(df.columns) == CSV_COLUMNS
        assert set(df.trigger) == {"square", "blend", "warp"}
        assert df.paper_asr.notna().all() and df.asr.notna().any()
    t3 = pd.read_csv(tables / "pmoe-table3-fine-pruning.csv")
    assert list(t3.columns) == ["pruning_rate", "stage", "ca", "asr", "paper_ca", "paper_asr"]
    assert {"before", "after_pruning", "after_fine_tuning"} <= set(t3.stage)
    assert set(t3.pruning_rate) == {0, 10, 20, 30}
    assert t3[t3.stage == "after_pruning"].paper_asr.notna().all()
    assert {"expert_1", "mean_experts", "none", "model"} <= set(pd.read_csv(tables / "pmoe-routing-rates.csv").columns)
    figures = root / "generated" / "figures"
    for fig_id in ("pmoe-fig2-triggers", "pmoe-asr-vs-rate-cifar10", "pmoe-asr-vs-rate-gtsrb",
                   "pmoe-fig3-trigger-routing", "pmoe-fig4-clean-routing", "pmoe-fig5-patch-values",
                   "pmoe-fig6-fine-pruning-routing", "pmoe-routing-rates"):
        assert (figures / f"{fig_id}.png").stat().st_size > 1000

    npoe = pd.read_csv(tables / "npoe-results.csv", keep_default_na=False, na_values=[""])
    assert list(npoe.columns) == ["dataset", "setting", "method", "trigger", "cacc", "asr", "paper_cacc", "paper_asr",
                                  "encoder"]
    overall = npoe[npoe.trigger.isna()]
    diff = pd.read_csv(tables / "npoe-differences.csv")
    assert list(diff.columns) == ["difference", "authors", "ours_before", "cacc", "asr", "cacc_sd", "asr_sd"]
    assert set(overall.method) == {"no_defense", "benign", "dpoe", "npoe", "onion", "bki", "strip", "rap"}
    assert set(npoe.trigger.dropna()) == {"badnet", "insertsent", "syntactic", "style"}  # smoke: the 4-trigger mix
    assert npoe.asr.between(0, 100).all() and overall.cacc.between(0, 100).all()
    for fig_id in ("npoe-fig-beta", "npoe-fig-expert-depth", "npoe-fig-gate-layers", "npoe-fig-double-rate"):
        assert (figures / f"{fig_id}.png").stat().st_size > 1000
        assert len(pd.read_csv(tables / f"{fig_id}.csv")) >= 2

    loc = pd.read_csv(tables / "locphylax-results.csv")
    assert list(loc.columns) == ["model", "task", "attack", "method", "asr", "cacc"]
    for fig_id in ("locphylax-fig-aggregation", "locphylax-fig-critical-layers", "locphylax-fig-asr-steps"):
        assert (figures / f"{fig_id}.png").stat().st_size > 1000

    html = (site / "_build" / "html" / "chapters" / "pmoe_attacks.html").read_text()
    assert "smoke" in html and "Table 1" in html
    assert "Table 3" in (site / "_build" / "html" / "chapters" / "pmoe_routing_pruning.html").read_text()

    # the summary pages: reproducibility report, landing page, references, downloads
    report = pd.read_csv(tables / "reproducibility.csv")
    assert list(report.columns) == ["chapter", "artefact", "cell", "paper", "ours", "verdict", "rule"]
    assert set(report.chapter) == {"pmoe_attacks", "pmoe_routing_pruning", "npoe", "locphylax"}
    loc = report[report.chapter == "locphylax"]  # the abstract's headline: a verified number, and the rule's cell
    assert list(loc.cell) == ["mean ASR after Locphylax", locphylax_paper.VERDICT_CELL]
    assert (loc.paper == 4.41).all() and loc.rule.iloc[1] in ("reproduced", "not reproduced")
    assert set(report.verdict) == {"not judged at smoke"}  # smoke's numbers mean nothing: no verdict
    report_page = (site / "_build" / "html" / "chapters" / "reproducibility.html").read_text()
    assert "every chapter ran at smoke, whose numbers are not judged" in report_page
    assert "tolerance = " not in report_page  # the parameters cell is not shown as code
    for chapter in ("npoe", "locphylax"):  # nor do the chapters' own verdict lines
        page = (site / "_build" / "html" / "chapters" / f"{chapter}.html").read_text()
        assert "<strong>reproduced</strong>" not in page and "<strong>not reproduced</strong>" not in page
        assert "not judged (this profile" in page
    npoe_page = (site / "_build" / "html" / "chapters" / "npoe.html").read_text()
    assert re.search(r"<td[^>]*>ONION</td>", npoe_page)  # Tables 1-2 name each row's method
    html_dir = site / "_build" / "html"
    intro = (html_dir / "chapters" / "intro.html").read_text()
    assert len(re.findall(r"<td[^>]*>smoke</td>", intro)) == len(book.chapter_sources())  # each chapter's profile in the table
    # a line per paper and one per chapter, glued from the report
    assert intro.count("not judged (built at smoke)") == 3 + len(book.chapter_sources())
    assert "executablebooks/jupyter-book" not in intro and "repository-button" not in intro  # no address set: no link
    for page in ("pmoe_attacks", "locphylax", "intro", "reproducibility"):  # a banner under each title
        text = (html_dir / "chapters" / f"{page}.html").read_text()
        assert text.count("Not the papers' scale") == 1 and "ran at profile smoke, on " in text
    refs = (html_dir / "references.html").read_text()
    assert "Fine-Pruning" in refs and "WaNet" in refs
    assert "Chan <em>et al.</em>, 2025" in refs or "Chan et al., 2025" in refs  # labelled as the text cites
    assert 'href="https://arxiv.org/abs/2404.02356"' in refs and 'href="https://github.com/geefmegeld/pMoE-backdoor"' in refs
    chapter1 = (html_dir / "chapters" / "pmoe_attacks.html").read_text()  # the paper cited in the text, linked
    assert 'class="bibtex-citation"' in chapter1 and "backdoor attacks against patch-based mixture of experts" in chapter1.lower()
    assert (html_dir / "_sources" / "chapters" / "pmoe_attacks.ipynb").stat().st_size > 1000


def test_a_chapter_not_built_shows_as_such(tmp_path):
    cells = pmoe_paper.reproducibility_cells(tmp_path)  # an empty tables folder
    report = reproducibility.verdicts(cells)
    assert set(report.verdict) == {"not built yet"}
    assert set(report.artefact) == {"pmoe-table1-cifar10", "pmoe-table2-gtsrb", "pmoe-table3-fine-pruning"}


def test_parameters_are_listed_from_the_parameters_cell():
    params = book.parameters_of(book.NOTEBOOKS / "pmoe_attacks.md")
    assert params["seeds"] == {"default": "None", "help": "e.g. [0, 1, 2]; None: the profile's seeds"}
    table = book.parameter_table("pmoe_attacks", {"profile": "smoke"})
    assert table.loc["profile", "this page"] == "'smoke'" and table.loc["force", "default"] == "False"


def test_a_book_of_some_chapters_lists_only_those_and_says_which_are_not_built(smoke_book, tmp_path, monkeypatch):
    import re
    import shutil
    from html import unescape

    root, site, _ = smoke_book
    out, course = tmp_path / "generated", tmp_path / "book"
    shutil.copytree(root / "generated", out)
    shutil.copytree(site, course, ignore=shutil.ignore_patterns("_build"))
    monkeypatch.setenv("MOEBD_OUTPUT_DIR", str(out))
    # a teacher's book of chapter 1: the summary pages list it alone, the solutions are left out
    book.record_contents(["pmoe_attacks"])
    book.execute_all("smoke", out_dir=course / "chapters", only=list(book.SUMMARY_PAGES))  # keeps the contents
    assert book.contents() == ["pmoe_attacks"]
    book.build(course, solutions=False)
    html = course / "_build" / "html"
    assert sorted(p.stem for p in (html / "chapters").glob("*.html")) == \
        ["intro", "performance", "pmoe_attacks", "reproducibility"]
    intro = (html / "chapters" / "intro.html").read_text()
    assert len(re.findall(r"<td[^>]*>smoke</td>", intro)) == 1 and "npoe.html" not in intro and "locphylax.html" not in intro
    assert set(pd.read_csv(out / "tables" / "reproducibility.csv").chapter) == {"pmoe_attacks"}
    chapter1 = (html / "chapters" / "pmoe_attacks.html").read_text()
    assert "Exercises" in chapter1 and "Solutions" not in chapter1 and "25 poisoned images" not in chapter1
    # a chapter in the book but never executed: a page that says so and how to build it
    (course / "chapters" / "npoe.ipynb").unlink()
    book.build(course, chapters=["pmoe_attacks", "npoe"])
    npoe = unescape(re.sub(r"<[^>]+>", "", (html / "chapters" / "npoe.html").read_text()))  # the text
    assert "has not been built yet" in npoe and 'make book CHAPTERS="pmoe_attacks npoe"' in npoe
    assert "25 poisoned images" in (html / "chapters" / "pmoe_attacks.html").read_text()  # solutions back
    book.build(course, chapters=["pmoe_attacks"])  # the stand-in page goes once it is not in the book
    assert not (course / "chapters" / "npoe.md").exists()


def test_the_landing_page_line_per_paper_gives_verdicts_and_a_headline_beside_the_paper():
    cells = pd.DataFrame({"chapter": "locphylax", "artefact": "locphylax-results", "cell": "mean ASR after Locphylax",
                          "series": "s", "paper": [4.41], "ours": [65.2], "verified": True, "built": True})
    quick = reproducibility.verdicts(cells, profiles={"locphylax": "quick"})
    assert reproducibility.paper_lines(quick, ["locphylax"]) == (
        "- **Locphylax**: 1 not reproduced of 1 judged. mean ASR after Locphylax 65.2 % here, 4.41 % in the paper.")
    smoke = reproducibility.verdicts(cells, profiles={"locphylax": "smoke"})
    assert set(smoke.verdict) == {"not judged at smoke"}
    assert "not judged (built at smoke)" in reproducibility.paper_lines(smoke)
    assert reproducibility.paper_lines(smoke, ["npoe"]).startswith("- **Nested PoE**: not built yet.")
