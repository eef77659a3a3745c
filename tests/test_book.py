"""Every chapter executes at the smoke profile, and the book builds with warnings as errors."""
import shutil

import pandas as pd
import pytest

from moebackdoor import book

CSV_COLUMNS = ["trigger", "poison_rate", "asr", "ba", "cad", "paper_asr", "paper_ba", "paper_cad"]


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = tmp_path / "bare.md"
    nb.write_text("---\njupytext:\n  text_representation:\n    format_name: myst\n---\n"
                  "# A page\n\n```{code-cell} ipython3\nprofile = 'quick'\n```\n")
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        book.execute_notebook(nb, tmp_path / "out")


def test_chapters_execute_at_smoke_and_the_book_builds(companion_env):
    site = companion_env / "book"
    site.mkdir()
    for name in ("intro.md", "_toc.yml"):
        shutil.copy(book.BOOK / name, site / name)
    executed = book.execute_all("smoke", out_dir=site / "chapters")
    assert {p.stem for p in executed} == {s.stem for s in book.chapter_sources()}

    tables = companion_env / "generated" / "tables"
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
    figures = companion_env / "generated" / "figures"
    for fig_id in ("pmoe-fig2-triggers", "pmoe-asr-vs-rate-cifar10", "pmoe-asr-vs-rate-gtsrb",
                   "pmoe-fig3-trigger-routing", "pmoe-fig4-clean-routing", "pmoe-fig5-patch-values",
                   "pmoe-fig6-fine-pruning-routing", "pmoe-routing-rates"):
        assert (figures / f"{fig_id}.png").stat().st_size > 1000

    book.build(site)  # raises on any Sphinx warning
    html = (site / "_build" / "html" / "chapters" / "pmoe_attacks.html").read_text()
    assert "smoke" in html and "Table 1" in html
    assert "Table 3" in (site / "_build" / "html" / "chapters" / "pmoe_routing_pruning.html").read_text()
