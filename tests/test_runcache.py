import pytest
import torch

from moebackdoor.runcache import RunCache, config_hash


def _train(calls):
    def fn(config):
        calls.append(config["i"])
        if config.get("fail"):
            raise KeyboardInterrupt("interrupted")
        return {"score": config["i"] * 2}, {"w": torch.full((2,), float(config["i"]))}
    return fn


def test_hash_depends_on_every_setting_but_not_their_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1, "b": 2}) != config_hash({"a": 1, "b": 3})


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    cache, calls = RunCache(tmp_path), []
    configs = [{"i": i} for i in range(4)]
    broken = configs[:2] + [{"i": 2, "fail": True}] + configs[3:]
    with pytest.raises(KeyboardInterrupt):
        cache.sweep(broken, _train(calls))
    assert calls == [0, 1, 2]
    # nothing half-written: only the two finished runs exist
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        sorted(config_hash(c) for c in configs[:2])
    calls.clear()
    runs = cache.sweep(configs, _train(calls))
    assert calls == [2, 3]  # finished runs are loaded, not retrained
    assert [r.metrics["score"] for r in runs] == [0, 2, 4, 6]
    assert torch.equal(runs[3].tensors()["w"], torch.full((2,), 3.0))
    assert (runs[0].path / "config.json").is_file()


def test_force_retrains_and_replaces(tmp_path):
    cache, calls = RunCache(tmp_path), []
    cache.get_or_run({"i": 1}, _train(calls))
    cache.get_or_run({"i": 1}, _train(calls))
    assert calls == [1]
    run = cache.get_or_run({"i": 1}, _train(calls), force=True)
    assert calls == [1, 1] and run.metrics == {"score": 2}
    assert [p.name for p in tmp_path.iterdir()] == [config_hash({"i": 1})]


def _graph_train(calls):
    """A run that records its order; a 'defense' adds its attack's score, read from its dependency."""
    def fn(config, deps):
        calls.append(config["name"])
        score = 1 + sum(d.metrics["score"] for d in deps)
        return {"score": score}, {"w": torch.full((1,), float(score))}
    return fn


GRAPH = {"attack": {"name": "attack"}, **{f"defense {i}": {"name": f"defense {i}", "needs": ["attack"]}
                                         for i in range(3)}}


def _needs(config):
    return [GRAPH[n] for n in config.get("needs", [])]


def test_a_sweep_trains_what_runs_need_first_and_each_once(tmp_path):
    cache, calls = RunCache(tmp_path), []
    defenses = [GRAPH[f"defense {i}"] for i in range(3)]
    top = {"name": "analysis", "needs": ["defense 0", "attack"]}
    assert [[c["name"] for c in layer] for layer in cache.plan(defenses + [top], _needs)] == \
        [["attack"], ["defense 0", "defense 1", "defense 2"], ["analysis"]]
    runs = cache.sweep(defenses + [top], _graph_train(calls), requires=_needs)
    assert calls == ["attack", "defense 0", "defense 1", "defense 2", "analysis"]
    assert [r.metrics["score"] for r in runs] == [2, 2, 2, 4]  # the dependencies' own metrics reached them
    assert not cache.plan(defenses + [top], _needs)  # all cached: nothing to train, nothing looked into
    calls.clear()
    cache.sweep([top], _graph_train(calls), requires=_needs, force=True)
    assert calls == ["analysis"]  # force retrains what was asked for, not what it needs


def test_a_cold_executions_minutes_count_each_run_once_in_the_first_section_that_needs_it(tmp_path):
    from moebackdoor.runcache import minutes_by_section

    cache = RunCache(tmp_path)
    seconds = {"attack": 120.0, "defense 0": 60.0, "defense 1": 30.0}
    for name in ["attack", "defense 0", "defense 1"]:
        cache.save(GRAPH[name], {"wall_seconds": seconds[name]}, {})
    d0, d1 = cache.load(GRAPH["defense 0"]), cache.load(GRAPH["defense 1"])
    # the first section trains defense 0 and the attack it needs (3 min); the second adds defense 1
    assert minutes_by_section({"table": [d0], "figure": [d0, d1], "none": []}, _needs, cache) == \
        {"table": (2, 3.0), "figure": (1, 0.5), "none": (0, 0.0)}


def test_runs_that_need_each_other_are_refused(tmp_path):
    with pytest.raises(ValueError, match="need each other"):
        RunCache(tmp_path).plan([{"name": "a", "needs": ["b"]}],
                                lambda c: [{"name": "b", "needs": ["a"]}] if c["name"] == "a" else
                                [{"name": "a", "needs": ["b"]}])


def test_sweep_groups_returns_the_runs_by_name(tmp_path):
    calls = []
    out = RunCache(tmp_path).sweep_groups({"table": [{"i": 0}, {"i": 1}], "floor": [{"i": 1}]}, _train(calls))
    assert calls == [0, 1]
    assert {k: [r.metrics["score"] for r in v] for k, v in out.items()} == {"table": [0, 2], "floor": [2]}


def test_a_stale_temporary_folder_is_removed_when_a_cache_opens_and_a_fresh_one_is_kept(tmp_path):
    import os
    import time
    stale, fresh = tmp_path / ".tmp-abc-1", tmp_path / ".tmp-def-2"
    for d in (stale, fresh):
        d.mkdir()
        (d / "tensors.safetensors").write_bytes(b"half")
    old = time.time() - 2 * 24 * 3600
    for f in (stale / "tensors.safetensors", stale):
        os.utime(f, (old, old))
    RunCache(tmp_path)
    assert not stale.exists() and fresh.exists()
