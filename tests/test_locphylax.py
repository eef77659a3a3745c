"""Chapter 4 at smoke: the notebook executes through papermill; its table and figures have the agreed shape."""
import numpy as np
import pandas as pd
import pytest

from moebackdoor import book
from moebackdoor.llm import config as cfg
from moebackdoor.llm import locphylax_paper, records, runs


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


def _rows(**overrides):
    rows = []
    for attack in ("badnet", "vpi"):
        base = {"no_defense": (95.0, 90.0), "locphylax": (10.0, 89.0), "clean_finetune": (50.0, 90.0),
                "pruning": (0.0, 53.0)}
        base.update(overrides)
        rows += [dict(model="m", task="sst2", attack=attack, method=m, asr=a, cacc=c) for m, (a, c) in base.items()]
    return pd.DataFrame(rows)


def test_claims_disqualify_a_defense_more_than_3_points_below_no_defenses_cacc():
    claims = locphylax_paper.claims_table(_rows()).set_index("claim")
    pruning = claims.loc[[c for c in claims.index if "Pruning" in c][0]]
    assert pruning.holds == "yes" and "disqualified: CACC -37.0 points" in pruning.ours  # ASR 0, but a broken model
    clean_ft = claims.loc[[c for c in claims.index if "Clean fine-tuning" in c][0]]
    assert clean_ft.holds == "yes" and "disqualified" not in clean_ft.ours
    # Locphylax itself 4 points below: its ASR claims fail, and it beats no baseline
    worse = locphylax_paper.claims_table(_rows(locphylax=(10.0, 86.0))).set_index("claim")
    assert list(worse.holds) == ["yes", "no", "no", "no", "no", "no", "no"]
    assert "disqualified: CACC -4.0 points" in worse.ours.iloc[1]
    # exactly 3 points below still counts
    assert locphylax_paper.claims_table(_rows(locphylax=(10.0, 87.0))).holds.iloc[1] == "yes"


def test_tables_show_the_no_label_share_and_a_dash_for_runs_without_answers():
    from types import SimpleNamespace as NS

    def run(method, attack, **metrics):
        return NS(config={"model": "m", "task": "sst2", "attack": attack, "method": method, "seed": 0},
                  metrics={"asr": 50.0, "cacc": 80.0, **metrics})
    new = dict(asr_backdoorllm=60.0, no_label_clean=1.0, no_label_triggered=2.5)
    table = locphylax_paper.results_table([run("no_defense", "badnet", **new), run("locphylax", "badnet")])
    assert list(table.columns) == locphylax_paper.TABLE_COLUMNS and table.no_label_clean.isna().tolist() == [False, True]
    floor = locphylax_paper.results_table([run("clean_model", "badnet", **new)])
    shown = locphylax_paper.display_table(table, floor)
    col = "sst2 badnet: no label, clean / triggered (%)"
    assert list(shown[col]) == ["1.0 / 2.5", "–", "1.0 / 2.5"]
    assert list(shown["sst2 badnet: ASR, BackdoorLLM's rule"]) == ["60.0", "–", "60.0"]
    assert shown.loc["Clean model (floor)", "sst2 badnet: ASR"] == "50.0"
    mismatch = locphylax_paper.mismatch_table(table, [run("no_defense", "badnet")], "raw")
    assert list(mismatch["no label (%), same template"]) == ["1.0 / 2.5"] and list(mismatch["no label (%), raw"]) == ["–"]


def test_the_guesses_options_run_at_smoke(companion_env):
    """Stage 1 for a fixed number of steps with stratified batches; clean fine-tuning gets the same
    total; the aggregation figure of the clustered states (unit length: distances at most 2)."""
    params = {"stage1_steps": 3, "stage1_batches": "stratified"}
    loc = cfg.run_config("smoke", "sst2", "badnet", "locphylax", defense_params=params)
    clean_ft = cfg.run_config("smoke", "sst2", "badnet", "clean_finetune", defense_params=params)
    agg = cfg.analysis_config("aggregation", loc, "clustered")
    done = runs.results([loc, clean_ft, agg])
    m = done[0].metrics
    assert m["stage1"]["steps"] == 3 and m["steps_used"] == 3 + m["stage2"]["steps"]
    assert len(m["known_retention_stage1_by_epoch"]) == 1  # checked after the first epoch (2 batches), not stopping
    assert done[1].metrics["steps_used"] == m["steps_used"]
    points = pd.DataFrame(done[2].metrics["points"])
    assert set(points.kind) == {"clean", "unknown trigger", "known trigger 1", "known trigger 2"}
    assert points.distance_to_unknown.between(0, 2).all()


def test_guesses_table_pools_the_seeds_answers_for_its_interval():
    from types import SimpleNamespace as NS

    from moebackdoor.llm import judge

    config = cfg.run_config("smoke", "sst2", "badnet", "locphylax")
    n = len(records.test_sets(config)[1])
    seeds = [NS(config=config, metrics={"asr": 100.0, "cacc": 60.0, "steps_used": 10,
                                        "answers": {"clean": [], "triggered": ["Negative"] * n}}),
             NS(config=config, metrics={"asr": 0.0, "cacc": 70.0, "steps_used": 20,
                                        "answers": {"clean": [], "triggered": ["Positive"] * n}})]
    old = NS(config=config, metrics={"asr": 40.0, "cacc": 50.0, "steps_used": 5})
    t = locphylax_paper.guesses_table([("stage 1 budget", "rule", seeds), ("stage 1 budget", "old run", [old])])
    assert list(t.columns) == locphylax_paper.GUESS_COLUMNS == ["guess", "setting", "asr", "asr_lo", "asr_hi", "cacc", "steps"]
    row = t.iloc[0]
    assert (row.asr, row.cacc, row.steps) == (50.0, 65.0, 15.0)
    assert (row.asr_lo, row.asr_hi) == pytest.approx(judge.wilson_interval(n, 2 * n))
    assert t.iloc[1].asr == 40.0 and np.isnan(t.iloc[1].asr_lo)


def test_guesses_text_compares_each_guess_and_its_baseline_by_their_intervals():
    table = pd.DataFrame([("cluster_token", "answer_end", 74.3, 65.2, 81.7, 84.6, 100),
                          ("cluster_token", "prompt_end", 91.4, 84.5, 95.4, 80.1, 60),
                          ("stage1_steps", "the retention rule", 91.4, 84.5, 95.4, 80.1, 60),
                          ("stage1_steps", "200 steps", 59.0, 49.5, 68.0, 86.1, 220)],
                         columns=locphylax_paper.GUESS_COLUMNS)
    baseline = table.assign(asr=[55.2, 68.6, 68.6, 80.0], asr_lo=[45.7, 59.2, 59.2, 71.0],
                            asr_hi=[64.4, 76.7, 76.7, 87.0])
    lines = locphylax_paper.guesses_text(table, baseline).splitlines()
    assert lines == [
        "- **the clustered state**: from answer_end to prompt_end, Locphylax's ASR goes from 74.3 % to 91.4 % "
        "(higher than before) and its CACC from 84.6 to 80.1. Against clean fine-tuning at the same steps: "
        "higher with answer_end, higher with prompt_end.",
        "- **stage 1's length**: from the retention rule to 200 steps, Locphylax's ASR goes from 91.4 % to 59.0 % "
        "(lower than before) and its CACC from 80.1 to 86.1. Against clean fine-tuning at the same steps: "
        "higher with the retention rule, lower with 200 steps."]
    assert "clean fine-tuning" not in locphylax_paper.guesses_text(table)
