"""The sweep's executors: ``local`` and ``ray`` (a local Ray instance, no cluster needed)."""
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
import torch

from moebackdoor import executors
from moebackdoor.runcache import RunCache, config_hash
from moebackdoor.vision import fine_pruning
from moebackdoor.vision.attacks import attack_config, run_attack

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed: pip install -e ".[cluster]"')


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    yield
    ray.shutdown()


def _toy(config):
    """A run that logs each attempt, raises when asked to, and kills its worker on a first attempt."""
    log = Path(config["log"])
    attempts = len(list(log.glob(f"{config['i']}-*")))
    (log / f"{config['i']}-{uuid.uuid4().hex}").touch()
    if config.get("fail"):
        raise ValueError("bad setting")
    if config.get("die_once") and attempts == 0:
        os._exit(1)  # the worker process dies, as a lost node would
    return {"score": config["i"] * 2}, {"w": torch.full((2,), float(config["i"]))}


def _attempts(log: Path, i: int) -> int:
    return len(list(log.glob(f"{i}-*")))


def _untimed(metrics: dict) -> dict:
    timing = ("finished_at", "seconds", "images_per_second")
    return {k: _untimed(v) if isinstance(v, dict) else v for k, v in metrics.items() if k not in timing}


def _finished(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_executor_is_chosen_by_argument_or_environment(monkeypatch):
    monkeypatch.delenv(executors.ENV, raising=False)
    assert executors.resolve().name == "local"
    monkeypatch.setenv(executors.ENV, "slurm")
    with pytest.raises(ValueError, match="slurm"):
        executors.resolve()
    assert executors.resolve("local").name == "local"


def test_asking_for_ray_without_it_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    monkeypatch.setenv(executors.ENV, "ray")
    with pytest.raises(ImportError, match=r'pip install "moebackdoor\[cluster\]"'):
        executors.resolve()


@needs_ray
def test_ray_sweep_gives_the_local_metrics_and_a_second_call_submits_nothing(
        local_ray, companion_env, monkeypatch):
    configs = [attack_config("smoke", "cifar10", trigger, rate, seed=0, n_train=500, n_test=200, epochs=2)
               for trigger, rate in [(None, 0.0), ("square", 0.1), ("blend", 0.1), ("warp", 0.1)]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU Ray task: the same float sums, so the same weights
    try:
        local = RunCache(companion_env / "local").sweep(configs, run_attack, executor="local")
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv(executors.ENV, "ray")
    events = companion_env / "events.jsonl"
    monkeypatch.setenv("MOEBD_PROGRESS", str(events))
    cache = RunCache(companion_env / "ray")
    remote = cache.sweep(configs, run_attack)
    for a, b in zip(local, remote):
        assert a.config == b.config
        assert _untimed(a.metrics) == _untimed(b.metrics)  # ba, asr, the losses: exactly equal
        ta, tb = a.tensors(), b.tensors()
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    done = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "run_done"]
    assert len(done) == 4
    events.unlink()
    mtimes = [(r.path / "metrics.json").stat().st_mtime_ns for r in remote]
    again = cache.sweep(configs, run_attack)
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in sent] == ["sweep", "sweep_done"] and sent[0]["todo"] == 0
    assert [(r.path / "metrics.json").stat().st_mtime_ns for r in again] == mtimes


@needs_ray
def test_a_run_that_raises_leaves_the_others_finished_and_cached(local_ray, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    configs = [{"i": i, "log": str(log)} for i in range(4)]
    broken = configs[:1] + [{**configs[1], "fail": True}] + configs[2:]
    cache = RunCache(tmp_path / "runs")
    with pytest.raises(executors.SweepError) as err:
        cache.sweep(broken, _toy, executor="ray", label=lambda c: f"run {c['i']}")
    assert [(f[0], f[2]) for f in err.value.failures] == [("run 1", "ValueError: bad setting")]
    assert '"fail": true' in str(err.value)
    assert _finished(tmp_path / "runs") == sorted(config_hash(c) for c in [configs[0], *configs[2:]])
    runs = cache.sweep(configs, _toy, executor="ray")  # trains only the missing run
    assert [_attempts(log, i) for i in range(4)] == [1, 2, 1, 1]
    assert [r.metrics["score"] for r in runs] == [0, 2, 4, 6]


@needs_ray
def test_a_worker_that_dies_has_its_run_retried(local_ray, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    configs = [{"i": i, "log": str(log), "die_once": i == 2} for i in range(4)]
    runs = RunCache(tmp_path / "runs").sweep(configs, _toy, executor=executors.RayExecutor(max_retries=1))
    assert [_attempts(log, i) for i in range(4)] == [1, 1, 2, 1]
    assert [r.metrics["score"] for r in runs] == [0, 2, 4, 6]
    assert torch.equal(runs[2].tensors()["w"], torch.full((2,), 2.0))


@needs_ray
def test_defenses_whose_attack_is_missing_train_it_once_on_ray_with_the_local_metrics(
        local_ray, companion_env, monkeypatch):
    attack = attack_config("smoke", "cifar10", "square", 0.1, seed=0, n_train=500, n_test=200, epochs=1)
    defenses = [fine_pruning.fine_pruning_config(attack, rate, epochs=1, n_activation=200) for rate in (0.0, 0.2, 0.3)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU Ray task
    try:
        local = fine_pruning.fine_pruning_results(defenses, RunCache(companion_env / "local"), executor="local")
    finally:
        torch.set_num_threads(threads)
    events = companion_env / "events.jsonl"
    monkeypatch.setenv("MOEBD_PROGRESS", str(events))
    cache = RunCache(companion_env / "ray")
    assert [len(layer) for layer in cache.plan(defenses, fine_pruning.requires)] == [1, 3]
    remote = fine_pruning.fine_pruning_results(defenses, cache, executor="ray")
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    trained = [e["label"] for e in sent if e["event"] == "run_done"]
    assert trained.count(fine_pruning.label(attack)) == 1  # the attack: once, before its three defenses
    assert trained.index(fine_pruning.label(attack)) == 0 and len(trained) == 4
    assert [e["layers"] for e in sent if e["event"] == "sweep"] == [2, 2]  # the progress display names the layers
    for a, b in zip(local, remote):
        assert a.config == b.config
        assert _untimed(a.metrics) == _untimed(b.metrics)
    assert _finished(companion_env / "ray") == _finished(companion_env / "local")
