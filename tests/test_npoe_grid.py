"""Chapter 3's grid, run graph and method registry, without training (no papermill): the page's
parameters are checked in the library, every cache key of the page is the one it had before
the split of ``text.runs`` (``tests/data/npoe_cache_keys.json``, written by commit 3d8cddb's
``tests/data/make_npoe_cache_keys.py`` with the code before the split), and the sweep hands each
run the runs it needs."""
import json
from pathlib import Path

import pytest
import torch

from moebackdoor.params import ParameterError
from moebackdoor.runcache import RunCache, config_hash
from moebackdoor.text import config, defenses, experiment, runs
from moebackdoor.text.config import (base_config, expert_config, is_expert, requires, run_config, run_label,
                                     with_beta)
from moebackdoor.text.differences import ours_before
from moebackdoor.text.experiment import npoe_grid, npoe_results

KEYS = Path(__file__).parent / "data" / "npoe_cache_keys.json"


def page_groups(profile: str) -> dict[str, list[dict]]:
    """The page's configurations with the parameters of ours before (the defaults before the
    authors' choices became them, :func:`differences.ours_before`), by role, as the snapshot
    names them."""
    grid = npoe_grid(profile, **ours_before(profile))
    npoe = [c for c in grid.table if c["method"] == "npoe"]
    groups = {"table": grid.table, "candidates": [c for cs in grid.candidates.values() for c in cs],
              "final": [with_beta(c, b) for c in npoe for b in config.profile(profile)["select_beta"]], **grid.figures}
    every = [c for cs in groups.values() for c in cs]
    needed = [d for c in every for d in requires(c)]
    groups["experts"] = [d for d in needed if is_expert(d)]
    groups["base"] = [d for d in needed if not is_expert(d)]
    return groups


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_every_cache_key_of_the_page_as_it_ran_before_is_one_parameter_set_away(profile):
    """Users' cached runs stay valid under ``ours_before``: the same configurations, hence the
    same run folders."""
    before = json.loads(KEYS.read_text())[profile]
    now = page_groups(profile)
    assert set(now) == set(before)
    for name, configs in now.items():
        unique = {config_hash(c): c for c in configs}
        assert sorted(unique) == before[name]["hashes"], name
        assert json.loads(json.dumps([unique[h] for h in sorted(unique)])) == before[name]["configs"], name


# the page's refusals, with the messages of its earlier in-page checks
BAD = [
    ("datasets", ["imdb"], "parameter `datasets`: expected a non-empty list of items from "
                           "['sst2', 'offenseval', 'trec', 'hatespeech'], got ['imdb']"),
    ("settings", ["mix5"], "parameter `settings`: expected a non-empty list of items from "
                           "['badnet', 'insertsent', 'syntactic', 'style', 'mix3', 'mix4'], got ['mix5']"),
    ("methods", ["magic"], None), ("mix4_methods", ["npoe", "magic"], None),
    ("gate_mask", "none", "parameter `gate_mask`: expected one of ['inf', 'zero'], got 'none'"),
    ("beta", -1.0, "parameter `beta`: expected a number > 0, got -1.0"), ("beta", 0, None),
    ("select_rule", "authors", "parameter `select_rule`: expected one of ['code', 'paper'], got 'authors'"),
    ("rdrop_alpha", -1, "parameter `rdrop_alpha`: expected a number >= 0, got -1"),
    ("double_softmax", "yes", "parameter `double_softmax`: expected True or False, got 'yes'"),
    ("train_experts", 1, None), ("pretrain_epochs", 0, "parameter `pretrain_epochs`: expected an integer >= 1, got 0"),
    ("gate_on", "cls", "parameter `gate_on`: expected one of ['text', 'hidden'], got 'cls'"),
    ("figures", ["npoe-fig-9"], None), ("force", "no", None),
    ("executor", "slurm", "parameter `executor`: expected one of [None, 'local', 'ray'], got 'slurm'"),
    ("seeds", [0, -1], "parameter `seeds`: expected an integer >= 0, got -1"),
    ("epochs", 0, "parameter `epochs`: expected an integer >= 1, got 0"),
    ("n_train", 10 ** 6, "parameter `n_train`: expected an integer in [1, 6920], got 1000000"),
    ("style_name", "gothic", None),
]


@pytest.mark.parametrize("name, value, message", BAD)
def test_the_grid_refuses_each_bad_parameter_with_the_pages_message(name, value, message):
    with pytest.raises(ParameterError) as err:
        npoe_grid("smoke", **{name: value})
    assert str(err.value) == message if message else f"parameter `{name.replace('_name', '')}`" in str(err.value)


def test_the_grid_refuses_an_unknown_profile():
    with pytest.raises(ParameterError, match="parameter `profile`: expected one of"):
        npoe_grid("full")


def test_the_grid_names_each_role(monkeypatch):
    from moebackdoor import pretrained

    monkeypatch.setattr(pretrained, "_on_hub", lambda name: True)  # a user online: bert-base-uncased loads
    grid = npoe_grid("quick", datasets=["sst2", "hatespeech"], settings=["mix3", "mix4", "style"],
                     mix4_methods=["no_defense", "npoe"], seeds=[0, 1], figures=["npoe-fig-gate-layers"])
    assert grid.runnable == [("sst2", "mix3"), ("sst2", "mix4"), ("sst2", "style"), ("hatespeech", "style")]
    assert grid.skipped == [("hatespeech", "mix3", ["syntactic"]), ("hatespeech", "mix4", ["syntactic"])]
    per_setting = {(c["dataset"], c["setting"]): set() for c in grid.table}
    for c in grid.table:
        per_setting[c["dataset"], c["setting"]].add(c["method"])
    assert per_setting[("sst2", "mix4")] == {"no_defense", "npoe"} and per_setting[("sst2", "mix3")] == set(config.METHODS)
    assert len(grid.table) == 2 * (8 + 2 + 8 + 8)  # two seeds
    # NPoE's regime and β: chosen once, on the first seed, among both regimes at every β
    assert list(grid.candidates) == [(ds, s, 0) for ds, s in grid.runnable]
    cands = grid.candidates[("sst2", "mix3", 0)]
    table_npoe = next(c for c in grid.table if c["method"] == "npoe" and c["seed"] == 0 and c["setting"] == "mix3")
    assert [c["poe"]["beta"] for c in cands] == [1.0, 4.0, 8.0] * 2 and {c["n_train"] for c in cands} == {1500}
    assert [(c["recipe"]["small_lr"], c["poe"]["train_experts"]) for c in cands] == [(5e-4, False)] * 3 + [(2e-5, True)] * 3
    assert cands == [k for r in grid.regimes for k in config.selection_configs(experiment.with_regime(table_npoe, r))]
    assert list(grid.figures) == ["npoe-fig-gate-layers"] and grid.fig_dataset == "sst2" and grid.fig_setting == "mix3"
    assert grid.figures == grid.figures_for(grid.regimes[0])
    example = grid.figures_for(grid.regimes[1])["npoe-fig-gate-layers"]
    assert [c["poe"]["gate_layers"] if "gate_layers" in c["poe"] else c["experts"]["gate_layers"] for c in example] == [1, 2]
    assert all(c["recipe"]["small_lr"] == 2e-5 and c["poe"]["train_experts"] for c in example)
    assert grid.parameters["seeds"] == [0, 1] and grid.parameters["figures"] == ["npoe-fig-gate-layers"]
    groups = grid.groups()  # the figures wait for the choice of regime
    assert "npoe" not in {c["method"] for c in groups["table"]} and len(groups["candidates"]) == 4 * 2 * 3
    assert "npoe-fig-gate-layers" not in groups
    one = npoe_grid("quick", regime="example", figures=["npoe-fig-gate-layers"])
    assert len(one.regimes) == 1 and "npoe-fig-gate-layers" in one.groups()
    # a given β: one candidate per regime, at the table's scale; a given regime too: one in all
    both = npoe_grid("quick", beta=4, methods=["npoe"], figures=[])
    assert [(c["poe"]["beta"], c["poe"]["train_experts"]) for c in both.candidates[("sst2", "mix3", 0)]] == \
        [(4.0, False), (4.0, True)]
    fixed = npoe_grid("quick", beta=4, methods=["npoe"], figures=[], encoder="bert-base-uncased", n_train=500, epochs=1,
                      regime="code")
    (only,), = fixed.candidates.values()
    assert only == fixed.table[0] and only["poe"]["beta"] == 4.0 and only["encoder"] == "bert-base-uncased"
    assert (only["n_train"], only["recipe"]["epochs"]) == (500, 1)
    npoe = npoe_grid("smoke", methods=["npoe"], train_experts=False, double_softmax=True, pretrain_epochs=3,
                     gate_on="hidden", gate_mask="zero", rdrop_alpha=0)
    c = npoe.table[0]
    assert c["poe"]["train_experts"] is False and c["poe"]["gate_mask"] == "zero" and c["poe"]["rdrop_alpha"] == 0
    assert c["experts"]["double_softmax"] and c["experts"]["pretrain_epochs"] == 3 and c["experts"]["gate_on"] == "hidden"
    dpoe = npoe_grid("smoke", methods=["dpoe"], figures=[], gate_mask="zero").table[0]
    assert dpoe["poe"]["train_experts"] is True and dpoe["poe"]["gate_mask"] == "zero" and dpoe["experts"]["n"] == 1


def test_each_run_requires_what_it_starts_from():
    npoe = run_config("smoke", "sst2", "mix4", "npoe")
    assert requires(npoe) == [expert_config(npoe, j) for j in range(4)]
    assert all(requires(e) == [] for e in requires(npoe))
    assert requires(run_config("smoke", "sst2", "mix4", "dpoe")) == []  # DPoE's expert is not pre-trained
    assert requires(run_config("smoke", "sst2", "mix4", "no_defense")) == []
    for method in config.DEFENSES:
        d = run_config("smoke", "sst2", "mix4", method)
        assert requires(d) == [base_config(d)] == [run_config("smoke", "sst2", "mix4", "no_defense")]
    assert run_label(expert_config(npoe, 2)) == "sst2 expert 3 (badnet) seed 0"
    assert run_label(npoe) == "sst2 mix4 (30%) npoe seed 0"


def test_every_defense_is_one_function_in_one_table():
    assert set(defenses.DEFENDERS) == set(config.DEFENSES) == set(config.DEFENSE_PARAMS)
    assert all(callable(f) for f in defenses.DEFENDERS.values())


class Loaded:
    def __init__(self, config, name="base"):
        self.config, self.metrics, self.path = config, {}, Path(name)


def test_run_dispatches_on_the_kind_of_run(monkeypatch):
    calls = []
    monkeypatch.setattr(runs, "pretrain", lambda c: calls.append(("pretrain", c)) or ({"seconds": 1.0}, {}))
    monkeypatch.setattr(runs, "train", lambda c, deps: calls.append(("train", deps)) or ({}, {}))
    monkeypatch.setattr(runs, "defend", lambda c, clf: calls.append(("defend", clf)) or ({}, {}))
    monkeypatch.setattr(runs, "load_model", lambda run: f"model of {run.config['method']}")
    monkeypatch.setattr(runs, "RunCache", None)  # a run never opens a cache
    npoe = run_config("smoke", "sst2", "mix4", "npoe")
    assert runs.run(expert_config(npoe, 0), []) == ({"seconds": 1.0}, {})  # an expert keeps its own record
    experts = [Loaded(e) for e in requires(npoe)]
    assert "wall_seconds" in runs.run(npoe, experts)[0]
    rap = run_config("smoke", "sst2", "mix4", "rap")
    assert runs.run(rap, [Loaded(base_config(rap), "abc")])[0]["base_run"] == "abc"
    assert [k for k, _ in calls] == ["pretrain", "train", "defend"]
    assert calls[1][1] is experts and calls[2][1] == "model of no_defense"


def fake_run(cfg, deps):
    """Metrics without training: β 4 is the most accurate candidate, none passes the cut-off."""
    if is_expert(cfg):
        return {"trigger": cfg["trigger"], "seconds": 1.0}, {}
    if cfg["method"] in config.DEFENSES:
        assert [d.config for d in deps] == [base_config(cfg)]
    if "experts" in cfg and cfg["experts"]["pretrain_steps"]:
        assert [d.config["expert"] for d in deps] == [0, 1, 2, 3]
    beta = cfg.get("poe", {}).get("beta", 1.0)
    metrics = {"cacc": 80.0, "asr": 50.0 - beta, "asr_by_trigger": {t: 50.0 for t in cfg["rates"]},
               "wall_seconds": 60.0, "pretraining": [d.metrics for d in deps if is_expert(d.config)],
               "pseudo_dev": {"clean_small_acc": 80.0 - abs(beta - 4), "detected_rate": 0.1,
                              "code": {"detected_rate": 0.1, "pseudo_asr": None}}}
    if deps and cfg["method"] not in config.DEFENSES:
        metrics["pretraining_apart"] = True  # as runs.run records it
    return metrics, {"w": torch.zeros(1)}


def test_results_run_the_graph_in_one_sweep_then_the_chosen_regime_and_beta_for_every_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "run", fake_run)
    cache = RunCache(tmp_path)
    grid = npoe_grid("quick", methods=["no_defense", "npoe", "onion"], seeds=[0, 1],
                     figures=["npoe-fig-beta", "npoe-fig-double-rate"])
    res = npoe_results(grid, cache)
    assert [r.config["method"] for r in res.table_runs] == ["no_defense"] * 2 + ["npoe"] * 2 + ["onion"] * 2
    (cands, k, chosen), = res.selections.values()  # chosen on seed 0: β 4, the first regime (a tie)
    assert k == 1 and chosen.config == with_beta(grid.table[2], 4.0) and chosen.config["n_train"] is None
    assert res.table_runs[3].config == with_beta(grid.table[3], 4.0) and res.table_runs[3].config["seed"] == 1
    assert [r.config for r in cands] == grid.candidates[("sst2", "mix3", 0)]
    assert [r.config for r in cands[:3]] == [r.config for r in res.figures["npoe-fig-beta"]]  # the chosen regime's
    assert [e["trigger"] for e in chosen.metrics["pretraining"]] == list(config.EXPERT_ORDER)
    assert list(res.table.columns) == experiment.npoe_paper.COLUMNS and set(res.sensitivity) == set(grid.figures)
    # the table's six, six candidates, four rate runs (NPoE at rate 1 is the β figure's β 1), and
    # the experts: each regime's at the candidates' scale, and seed 0's and seed 1's at the table's
    experts = {config_hash(d) for r in res.page_runs for d in requires(r.config) if is_expert(d)}
    assert len(experts) == 4 * 4 and res.n_runs == 6 + 6 + 3 + 16
    assert res.select_n_train == 1500
    again = npoe_results(grid, cache)  # everything cached: nothing runs
    monkeypatch.setattr(experiment, "run", None)
    assert [r.path for r in npoe_results(grid, cache).table_runs] == [r.path for r in again.table_runs]


def test_minutes_count_an_experts_pretraining_once_whether_its_npoe_run_is_old_or_new():
    from pathlib import Path

    from moebackdoor.runcache import Run, config_hash
    from moebackdoor.text.config import requires, run_config
    from moebackdoor.text.runs import minutes

    npoe = run_config("smoke", "sst2", "mix4", "npoe")
    experts = [Run(c, {"seconds": 60.0}, Path(config_hash(c))) for c in requires(npoe)]
    old = Run(npoe, {"wall_seconds": 600.0}, Path(config_hash(npoe)))  # pre-trained its experts inside
    new = Run(npoe, {"wall_seconds": 360.0, "pretraining_apart": True}, Path(config_hash(npoe)))
    assert len(experts) == 4
    assert minutes([old, *experts]) == 10.0
    assert minutes([new, *experts]) == 10.0


def test_a_cold_executions_minutes_count_each_run_once_in_the_first_section_that_needs_it():
    from pathlib import Path

    from moebackdoor.runcache import Run, config_hash
    from moebackdoor.text.config import requires, run_config
    from moebackdoor.text.runs import minutes_by_section

    npoe = run_config("smoke", "sst2", "mix4", "npoe")
    experts = {config_hash(c): Run(c, {"seconds": 60.0}, Path(config_hash(c))) for c in requires(npoe)}
    new = Run(npoe, {"wall_seconds": 360.0, "pretraining_apart": True}, Path(config_hash(npoe)))
    plain = run_config("smoke", "sst2", "mix4", "no_defense")
    base = Run(plain, {"wall_seconds": 120.0}, Path(config_hash(plain)))

    class Cache:  # what with_requirements asks of a RunCache
        def load(self, config):
            return experts[config_hash(config)]

    # NPoE needs its four experts (6 + 4 minutes); the second section shares NPoE, adds No defense
    assert minutes_by_section({"a": [new], "b": [new, base], "c": []}, Cache()) == \
        {"a": (5, 10.0), "b": (1, 2.0), "c": (0, 0.0)}
