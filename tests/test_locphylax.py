"""Chapter 4 at smoke: the notebook executes through papermill; its table and figures have the agreed shape."""
import pandas as pd

from moebackdoor import book
from moebackdoor.llm import config as cfg
from moebackdoor.llm import locphylax_paper, runs


def test_locphylax_chapter_executes_at_smoke(companion_env):
    book.execute_notebook(book.NOTEBOOKS / "locphylax.md", companion_env / "nb", {"profile": "smoke"})
    out = companion_env / "generated"
    table = pd.read_csv(out / "tables" / f"{locphylax_paper.TABLE_ID}.csv")
    assert list(table.columns) == locphylax_paper.COLUMNS
    assert set(table.method) == set(cfg.METHODS) and set(table.attack) == {"badnet"}
    assert table.asr.between(0, 100).all() and table.cacc.between(0, 100).all()
    for figure in locphylax_paper.FIGURES:
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
    steps = pd.read_csv(out / "tables" / "locphylax-fig-asr-steps.csv")
    assert {"stage 1", "stage 2"} <= set(steps.stage)
    layers = pd.read_csv(out / "tables" / "locphylax-fig-critical-layers.csv")
    assert set(layers.model) == {"suspect model", "after stage 1"} and layers.layer.nunique() == 2  # smoke: 2 layers


def test_claims_on_hand_made_results():
    rows = []
    for attack, nd, loc in (("badnet", 95.0, 10.0), ("vpi", 85.0, 20.0)):
        rows += [dict(model="m", task="sst2", attack=attack, method="no_defense", asr=nd, cacc=90.0),
                 dict(model="m", task="sst2", attack=attack, method="locphylax", asr=loc, cacc=89.0),
                 dict(model="m", task="sst2", attack=attack, method="clean_finetune", asr=50.0, cacc=90.0)]
    table = pd.DataFrame(rows)
    h = locphylax_paper.headline(table)
    assert h["asr_before"] == 90.0 and h["asr_after"] == 15.0 and h["cacc_change"] == -1.0
    claims = locphylax_paper.claims_table(table).set_index("claim").holds
    assert list(claims) == ["yes", "yes", "no", "yes", "no", "yes"]


def test_the_label_target_variant_runs_at_smoke(companion_env):
    """The opt-in variant trains both stages and keeps the defender's label-aware checks."""
    config = cfg.run_config("smoke", "sst2", "badnet", "locphylax_label_targets")
    m = runs.results([config])[0].metrics
    assert m["steps_used"] == m["stage1"]["steps"] + m["stage2"]["steps"] > 0
    for key in ("known_retention_stage1_by_epoch", "known_retention_stage2_by_epoch"):
        assert m[key] and all(0 <= v <= 100 for v in m[key])
    assert 0 <= m["after_stage1"]["asr"] <= 100 and 0 <= m["asr"] <= 100


def test_seed_spread_on_hand_made_runs():
    from types import SimpleNamespace as NS
    cfg = lambda m, s: {"task": "sst2", "attack": "badnet", "method": m, "seed": s}  # noqa: E731
    done = [NS(config=cfg("locphylax", 0), metrics={"asr": 60.0}), NS(config=cfg("locphylax", 1), metrics={"asr": 40.0}),
            NS(config=cfg("clean_finetune", 0), metrics={"asr": 50.0}), NS(config=cfg("clean_finetune", 1), metrics={"asr": 50.0})]
    t = locphylax_paper.seed_spread(done)
    row = t.loc[("sst2 badnet", "Locphylax")]
    assert list(t.columns) == ["seed 0", "seed 1", "mean", "sd"]
    assert row["mean"] == 50.0 and row["sd"] == round(200 ** 0.5, 1)  # sd of 60, 40 with ddof 1
    assert t.loc[("sst2 badnet", "Clean fine-tuning"), "sd"] == 0.0
