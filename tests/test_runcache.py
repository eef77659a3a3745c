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
