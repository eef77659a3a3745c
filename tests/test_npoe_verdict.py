"""Chapter 3's verdict follows the rule written down before the runs, per encoder, and the
landing page says it chapter by chapter."""
import pandas as pd

from moebackdoor import reproducibility
from moebackdoor.text import npoe_paper


def results(encoder, rows):
    return [{"dataset": "sst2", "setting": "mix3", "method": m, "trigger": "", "cacc": c, "asr": a,
             "paper_cacc": None, "paper_asr": None, "encoder": encoder} for m, c, a in rows]


def test_each_encoder_gets_the_rules_verdict_and_the_page_encoder_alone_its_paper_cells(tmp_path):
    # MiniLM: NPoE at 44.9 < 90/2 but CACC 84.9 < 88 - 3: not reproduced; MPNet: 40 < 45 and 86 >= 86
    rows = results("minilm-l6", [("no_defense", 86.0, 90.0), ("benign", 88.0, 14.0), ("npoe", 84.9, 44.9)]) \
        + results("mpnet-base", [("no_defense", 89.0, 90.0), ("benign", 89.0, 15.0), ("npoe", 86.0, 40.0)])
    pd.DataFrame(rows).to_csv(tmp_path / "npoe-results.csv", index=False)
    cells = npoe_paper.reproducibility_cells(tmp_path)
    ruled = cells[cells.rule.notna()].set_index("cell")
    assert list(ruled.rule) == ["not reproduced", "reproduced"]
    assert ruled.index[1].endswith("(mpnet-base)") and ruled.ours.tolist() == [44.9, 40.0]
    paper = cells[cells.rule.isna()]  # the paper's cells: the page's encoder only, none twice
    assert not paper.cell.str.contains("mpnet").any() and paper.cell.is_unique
    assert (paper[paper.cell == "sst2, mix3, NPoE, ASR"].ours == 44.9).all()
    report = reproducibility.verdicts(cells, profiles={"npoe": "quick"})
    assert list(report[report.rule.notna()].verdict) == ["not reproduced", "reproduced"]
    builds = pd.DataFrame({"chapter": ["npoe"], "title": ["Nested PoE"], "profile": ["quick"]})
    line = reproducibility.chapter_lines(report, builds)
    assert line.startswith("- **Nested PoE** at `quick`: 1 reproduced, 1 not reproduced of 2 judged")
    assert "Benign's: not reproduced; " in line and "(mpnet-base): reproduced." in line
    smoke = reproducibility.verdicts(cells, profiles={"npoe": "smoke"})
    assert set(smoke.verdict) == {"not judged at smoke"}
    assert reproducibility.chapter_lines(smoke, builds) == "- **Nested PoE** at `quick`: not judged (built at smoke)."
