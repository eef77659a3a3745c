"""Chapter 4 runs the configuration written down in ``notebooks/locphylax.config.yaml``: the page's
defaults, its seeds, the guesses' rows."""
import inspect
from pathlib import Path

import pandas as pd
import yaml

from moebackdoor.llm import config as cfg, grid as grid_module, guesses
from moebackdoor.llm.grid import locphylax_grid

PLAN = yaml.safe_load((Path(__file__).parents[1] / "notebooks" / "locphylax.config.yaml").read_text())
GRID = inspect.signature(locphylax_grid).parameters


def test_the_defaults_and_seeds_are_written_down():
    d = PLAN["defaults"]
    assert {k: GRID[k].default for k in d} == d
    assert list(cfg.profile("quick")["seeds"]) == PLAN["main"]["seeds"]
    assert list(grid_module.SEEDED_METHODS) == PLAN["main"]["three_seed_methods"]
    one = [m for m in cfg.METHODS if m not in grid_module.SEEDED_METHODS]
    assert one == PLAN["main"]["one_seed_methods"]
    assert grid_module.OURS_BEFORE == {k: v["today"] for k, v in PLAN["guesses"]["rows"].items() if v["today"]} | {
        "pruning": PLAN["baselines"]["pruning_before"], "crow_layers": PLAN["baselines"]["crow_layers_before"]}
    assert GRID["pruning"].default == PLAN["baselines"]["pruning"]
    assert cfg.profile("quick")["crow_layers"] == cfg.profile("paper")["crow_layers"] == PLAN["baselines"]["crow_layers"]
    crow_runs = [c for c in locphylax_grid("quick", methods=["no_defense", "crow"], figures=[]).main
                 if c["method"] == "crow"]
    assert {c["defense"]["crow"]["layers"] for c in crow_runs} == {"defensebox"}
    pruned = locphylax_grid("quick", methods=["no_defense", "locphylax", "pruning"], figures=[]).main
    assert [c["defense"]["prune"] for c in pruned if c["method"] == "pruning"] == ["wanda_layerwise"] * 2
    assert {c["defense"]["prune"] for c in pruned if c["method"] == "locphylax"} == {"wanda"}  # unused, key kept


def test_the_guesses_rows_are_written_down():
    plan = PLAN["guesses"]
    assert guesses.SEEDS == plan["seeds"] and (guesses.TASK, guesses.ATTACK) == (plan["task"], plan["attack"])
    assert guesses.GUESSES == {g: (v["today"], v["new"]) for g, v in plan["rows"].items()}
    rows = guesses.guesses_grid("quick")
    assert [(g, s) for g, s, _ in rows] == [("cluster_token", "answer_end"), ("cluster_token", "prompt_end"),
                                          ("stage1_batches", "random"), ("stage1_batches", "stratified"),
                                          ("stage1_steps", "the retention rule"), ("stage1_steps", "200 steps")]
    page = locphylax_grid("quick", tasks=["sst2"], attacks=["badnet"], methods=["locphylax", "clean_finetune"],
                          figures=[], mismatch_template=None).main
    defaults = [configs for g, s, configs in rows if s in ("prompt_end", "stratified", "the retention rule")]
    assert all(configs == page for configs in defaults)  # the new settings are the page's own runs
    for g, s, configs in rows:
        assert [(c["method"], c["seed"]) for c in configs] == [(m, k) for m in guesses.METHODS for k in (0, 1, 2)]
        loc = [c for c in configs if c["method"] == "locphylax"]
        for c in configs:
            if c["method"] == "clean_finetune":  # its budget: the same row's Locphylax run, same seed
                assert cfg.requires(c)[1] == loc[c["seed"]]
    assert rows[5][2][0]["defense"]["stage1_steps"] == 200 and "stage1_steps" not in rows[4][2][0]["defense"]
    assert rows[0][2][0]["defense"]["cluster_token"] == "answer_end" and rows[2][2][0]["defense"].get(
        "stage1_batches", "random") == "random"


def test_the_verdict_rule_is_written_down_and_judges_by_hand():
    from moebackdoor.llm import locphylax_paper as paper

    assert paper.VERDICT == PLAN["verdict"] and PLAN["versus_clean_finetune"] == "non_overlapping_wilson95"
    rows = lambda loc_asr, loc_cacc: pd.DataFrame(  # noqa: E731
        [dict(model="m", task="sst2", attack=a, method=m, asr=asr, cacc=cacc)
         for a in ("BadNet", "VPI") for m, asr, cacc in (("no_defense", 95.0, 90.0), ("locphylax", loc_asr, loc_cacc))])
    assert paper.verdict(rows(9.0, 87.5))["reproduced"]          # mean ASR 9 ≤ 10, CACC −2.5 ≥ −3
    assert not paper.verdict(rows(11.0, 89.0))["reproduced"]     # ASR above 10
    assert not paper.verdict(rows(2.0, 86.0))["reproduced"]      # CACC 4 points down
    assert paper.verdict(rows(2.0, 90.0).query("method != 'locphylax'")) is None
    assert paper.compare_intervals((1.0, 5.0), (6.0, 9.0)) == "lower"
    assert paper.compare_intervals((7.0, 9.0), (1.0, 6.5)) == "higher"
    assert paper.compare_intervals((1.0, 6.0), (5.0, 9.0)) == "no different"
    assert paper.compare_intervals((float("nan"), 6.0), (5.0, 9.0)) == "unknown"
