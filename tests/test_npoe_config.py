"""Chapter 3 runs the configuration written down in ``notebooks/npoe.config.yaml``: its defaults,
ours before, the regimes, the differences table, the MPNet-base section and the verdict rule are
what the library does."""
import inspect
from pathlib import Path

import pytest
import yaml

from moebackdoor.text import config, differences, experiment, mpnet, npoe_paper

PLAN = yaml.safe_load((Path(__file__).parents[1] / "notebooks" / "npoe.config.yaml").read_text())
GRID = inspect.signature(experiment.npoe_grid).parameters


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_the_defaults_are_the_authors_choices_written_down(profile):
    d, p = PLAN["defaults"], config.profile(profile)
    for key in ("pretrain_schedule", "pretrain_labels", "pretrain_source", "expert_mode", "freeze_main_iters"):
        assert GRID[key].default == d[key], key
    assert p["experts"]["pretrain_epochs"] == d["pretrain_epochs"]
    assert p["recipe"]["lr"] == d["lr"] and p["small_lr_by_method"] == {"dpoe": d["dpoe_small_lr"]}
    assert p["dpoe"] == {"layers": d["dpoe_layers"], "rdrop_alpha": d["dpoe_rdrop_alpha"]}
    assert list(p["seeds"]) == PLAN["seeds"][profile]
    assert p["regimes"] == list(PLAN["regimes"]) and config.REGIMES == PLAN["regimes"]


def test_ours_before_is_written_down():
    ours = PLAN["ours_before"]
    assert differences.OURS_BEFORE == ours
    assert {k: v for d in differences.DIFFERENCES.values() for k, v in d["ours"].items()} | {
        "train_experts": True, "dpoe_small_lr": 8e-5} == ours


def test_the_differences_table_is_written_down():
    plan = PLAN["differences"]
    assert differences.SEEDS == plan["seeds"] and differences.N_TRAIN_LADDER == plan["n_train_ladder"]
    assert (differences.MIN_ASR, differences.MIN_CACC) == (plan["min_asr"], plan["min_cacc"])
    assert (differences.DATASET, differences.SETTING) == (plan["dataset"], plan["setting"])
    assert list(differences.DIFFERENCES) == plan["rows"]
    a = differences.AUTHORS
    assert (a["beta"], a["small_lr"], a["train_experts"]) == (plan["beta"], plan["small_lr"], plan["train_experts"])
    for key, value in PLAN["defaults"].items():
        assert a.get(key, value) == value, key


def test_the_mpnet_section_and_the_verdict_are_written_down():
    plan = PLAN["mpnet"]
    assert mpnet.ENCODER == plan["encoder"] and mpnet.SEED == plan["seed"]
    assert mpnet.NPOE == dict(beta=plan["beta"], small_lr=plan["small_lr"], train_experts=plan["train_experts"])
    assert mpnet.N_TRAIN_LADDER == plan["n_train_ladder"]
    assert (mpnet.BUDGET_MINUTES, mpnet.COST_FACTOR) == (plan["budget_minutes"], plan["cost_factor"])
    assert mpnet.MIN_ASR == plan["min_asr"]
    assert npoe_paper.VERDICT == PLAN["verdict"]


def test_the_base_size_section_sizes_its_training_set_from_a_measured_step(tmp_path):
    from moebackdoor.runcache import RunCache

    # the rule: the largest rung whose four methods' estimated minutes fit the budget
    assert mpnet.estimated_minutes(2000, 1.5) == pytest.approx(6.5 * 1.5 * 2 * 125 / 60)
    assert [mpnet.choose_n_train(s) for s in (0.2, 0.6, 1.5, 3.0, 60.0)] == [6920, 4000, 2000, 1000, 1000]
    with pytest.raises(Exception, match="seconds_per_batch"):
        mpnet.choose_n_train(0)
    # the amendment: up the ladder until No defense carries the backdoor, each rung trained once
    asked = []
    asr = {1000: 99.0, 2000: 60.0, 3000: 79.9, 4000: 80.0, 6920: 90.0}
    assert mpnet.backdoored_rung(2000, lambda n: asked.append(n) or asr[n]) == (4000, {2000: 60.0, 3000: 79.9, 4000: 80.0})
    assert asked == [2000, 3000, 4000]
    assert mpnet.backdoored_rung(4000, {4000: 10.0, 6920: 20.0}.get) == (6920, {4000: 10.0, 6920: 20.0})
    # a measurement is a run of its own (cached); MiniLM here, so that the test stays small
    config = mpnet.timing_config("smoke", "minilm-l6") | {"batches": 2}
    run, = RunCache(tmp_path).sweep([config], mpnet.measure, desc="timing")
    assert 0 < run.metrics["seconds_per_batch"] < 60
    grid = experiment.npoe_grid("quick", **mpnet.mpnet_grid_args("quick", 2000))
    assert [c["method"] for c in grid.table] == mpnet.METHODS and {c["encoder"] for c in grid.table} == {"mpnet-base"}
    npoe = grid.config_of("npoe")
    assert len(grid.regimes) == 1 and grid.parameters["regime"] == "as given"
    assert (npoe["poe"]["beta"], npoe["recipe"]["small_lr"], npoe["poe"]["train_experts"]) == (1.0, 5e-4, True)
    assert list(grid.candidates.values()) == [[npoe]] and grid.config_of("dpoe")["experts"]["layers"] == 3


class _Run:
    def __init__(self, cacc, asr):
        self.metrics = {"cacc": cacc, "asr": asr}


def test_the_differences_table_by_hand():
    rows = {"authors_npoe": [_Run(80, 40), _Run(82, 44), _Run(84, 42)],
            "expert_mode": [_Run(80, 70), _Run(80, 72), _Run(80, 74)],
            "authors_dpoe": [_Run(85, 60), _Run(85, 60), _Run(85, 60)],
            "dpoe_shallow": [_Run(86, 61), _Run(84, 61), _Run(85, 61)],
            "no_defense": [_Run(85, 90), _Run(85, 90), _Run(85, 90)]}
    t = differences.differences_table(rows)
    assert list(t.columns) == ["difference", "authors", "ours_before", "cacc", "asr", "cacc_sd", "asr_sd"]
    assert t.loc[0, ["cacc", "asr", "cacc_sd", "asr_sd"]].tolist() == [82.0, 42.0, 2.0, 2.0]  # sample sd
    assert t.difference.tolist()[0] == "none: NPoE as the authors' code"
    assert t.loc[1, "authors"] == differences.DIFFERENCES["expert_mode"]["authors_text"]
    view = npoe_paper.differences_view(t)
    assert view["Δ ASR"].tolist() == ["", "+30.0", "", "+1.0", ""] and view["CACC"].iloc[0] == "82.0 ± 2.0"
    text = npoe_paper.differences_text(6920, {3000: (64.7, 82.6), 6920: (84.2, 84.9)}, t, 3)
    assert "**6,920**" in text and "dropout in the experts and the gate (+30.0 ASR points" in text
    assert "DPoE's shallow model (+1.0 ASR points" in text  # no spread at all: any change counts


def test_the_whole_training_set_has_one_cache_key_however_it_is_asked_for():
    """The ladder's top rung (all of SST-2) and a table run on the profile's whole set share runs."""
    whole = config.run_config("quick", "sst2", "mix3", "no_defense")
    assert whole["n_train"] is None
    assert config.run_config("quick", "sst2", "mix3", "no_defense", n_train=6920) == whole
    assert differences.ladder_configs("quick", 6920, [0]) == [whole]
    assert config.run_config("quick", "sst2", "mix3", "no_defense", n_train=6919)["n_train"] == 6919
