"""Backdoor attack runs on pMoE: profiles, one cached run per configuration, sweeps.

A run trains one model on one poisoned dataset and measures it:
``ba`` (clean test accuracy) and ``asr`` (the triggered non-target test images
predicted as the target). A clean run (``trigger=None``) also records the ASR
that each trigger reaches on the clean model, the attack's baseline.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from .. import profiles
from ..metrics import accuracy, attack_success_rate, clean_accuracy_drop
from ..params import ParameterError, check_bool, check_choices, check_int, check_list, check_optional_int
from ..runcache import RunCache
from .datasets import SIZES, load_dataset, subset, to_tensor
from .models import build_model
from .poisoning import check_rate, poison_training_set, triggered_test_set
from .triggers import DEFAULTS as TRIGGER_DEFAULTS, make_trigger, trigger_params
from .training import Recipe, predict, train

SCHEMA = 1  # bump when a change to the code invalidates cached runs
TRIGGERS = ("square", "blend", "warp")
DATASETS = ("cifar10", "gtsrb")
PAPER_RATES = (0.001, 0.005, 0.02, 0.06, 0.1)

# A fast recipe for small budgets: the paper's plain SGD needs its full 25 epochs.
FAST_RECIPE = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle")

PROFILES = {
    # exercises every code path in about a minute; numbers are not meaningful
    "smoke": {"width": 1, "n_train": {"cifar10": 1000, "gtsrb": 1000}, "n_test": 500,
              "epochs": {"cifar10": 1, "gtsrb": 1}, "recipe": FAST_RECIPE,
              "rates": (0.02, 0.1), "seeds": (0,)},
    # this 2-core CPU in about an hour: width 2, CIFAR-10 cut to 20k images, fast recipe
    "quick": {"width": 2, "n_train": {"cifar10": 20000, "gtsrb": None}, "n_test": None,
              "epochs": {"cifar10": 6, "gtsrb": 4}, "recipe": FAST_RECIPE,
              "rates": (0.001, 0.005, 0.02, 0.1), "seeds": (0,)},
    # the paper's settings (a GPU): width 10, all data, plain SGD lr 0.1, 25 epochs, 5 seeds
    "paper": {"width": 10, "n_train": {"cifar10": None, "gtsrb": None}, "n_test": None,
              "epochs": {"cifar10": 25, "gtsrb": 25}, "recipe": {},
              "rates": PAPER_RATES, "seeds": (0, 1, 2, 3, 4)},
}


def profile(name: str) -> dict:
    return profiles.lookup(PROFILES, name)


def attack_config(profile_name: str, dataset: str, trigger: str | None, rate: float, seed: int,
                  arch: str = "pmoe", target: int = 0, trigger_overrides: dict | None = None,
                  cross_ratio: float = 0.0, **overrides) -> dict:
    """The full configuration of one run; its hash names the run's cache directory.

    ``overrides`` replace profile entries (``width``, ``n_train``, ``epochs``, ``n_test``).
    """
    p = profile(profile_name)
    if dataset not in DATASETS:
        raise ParameterError("dataset", f"one of {list(DATASETS)}", dataset)
    rate = check_rate(rate)
    if trigger is None and rate:
        raise ValueError("a clean run (trigger=None) must have poison rate 0")
    unknown = set(overrides) - {"width", "n_train", "epochs", "n_test"}
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; accepted: width, n_train, epochs, n_test")
    n_train_max, n_test_max, n_classes = SIZES[dataset]
    check_int("seed", seed)
    check_int("target", target, 0, n_classes - 1)
    width = check_int("width", overrides.get("width", p["width"]), 1)
    n_train = check_optional_int("n_train", overrides.get("n_train", p["n_train"][dataset]), 1, n_train_max)
    n_test = check_optional_int("n_test", overrides.get("n_test", p["n_test"]), 1, n_test_max)
    epochs = check_int("epochs", overrides.get("epochs", p["epochs"][dataset]), 1)
    recipe = Recipe(epochs=epochs, **p["recipe"]).as_dict()
    return {
        "schema": SCHEMA, "chapter": "pmoe-attacks", "profile": profile_name,
        "dataset": dataset, "arch": arch, "width": width,
        "n_train": n_train, "n_test": n_test,
        "trigger": trigger,
        "trigger_params": trigger_params(trigger, **(trigger_overrides or {})) if trigger else None,
        "poison_rate": rate, "cross_ratio": cross_ratio, "target": target, "seed": seed,
        "recipe": recipe,
    }


def train_tensors(config: dict):
    """The run's clean training images and labels (its subset of the training set)."""
    data = load_dataset(config["dataset"])
    x, y = subset(data.x_train, data.y_train, config["n_train"], seed=config["seed"])
    return to_tensor(x), torch.from_numpy(y)


def test_tensors(config: dict):
    """The run's clean test images and labels."""
    data = load_dataset(config["dataset"])
    x, y = subset(data.x_test, data.y_test, config["n_test"], seed=1000 + config["seed"])
    return to_tensor(x), torch.from_numpy(y)


def run_trigger(config: dict, name: str | None = None, params: dict | None = None):
    """The run's trigger (or another, by name), rebuilt exactly from the run's seed."""
    return make_trigger(name or config["trigger"], seed=config["seed"],
                        **(params if params is not None else config["trigger_params"]))


def run_attack(config: dict, max_steps: int | None = None) -> tuple[dict, dict]:
    """Train and evaluate one configuration (no caching: see :func:`attack_run`).

    ``max_steps`` cuts training short (for benchmarks; such a run is not a result).
    """
    seed = config["seed"]
    data = load_dataset(config["dataset"])
    x, y = train_tensors(config)
    x_test, y_test = test_tensors(config)
    tensors, metrics = {}, {"n_train": len(y), "n_test": len(y_test)}
    if config["trigger"]:
        trig = run_trigger(config)
        poisoned = poison_training_set(x, y, trig, config["poison_rate"], config["target"],
                                       seed=seed, cross_ratio=config["cross_ratio"])
        x, y = poisoned.x, poisoned.y
        metrics["n_poisoned"] = len(poisoned.poison_idx)
        metrics["n_cross"] = len(poisoned.cross_idx)
        tensors.update(trig.state())
    torch.manual_seed(seed)
    model = build_model(config["arch"], data.num_classes, config["width"])
    history = train(model, x, y, Recipe(**config["recipe"]), seed=seed, max_steps=max_steps)
    metrics["history"] = history
    metrics["ba"] = accuracy(predict(model, x_test), y_test.numpy())
    # ASR of every trigger on this model (on a clean model: the baseline)
    names = [config["trigger"]] if config["trigger"] else list(TRIGGERS)
    metrics["asr_by_trigger"] = {}
    for name in names:
        trig = run_trigger(config, name, None if config["trigger"] else TRIGGER_DEFAULTS[name])
        xt, yt = triggered_test_set(x_test, y_test, trig, config["target"])
        metrics["asr_by_trigger"][name] = attack_success_rate(predict(model, xt), yt.numpy(),
                                                              config["target"])
    if config["trigger"]:
        metrics["asr"] = metrics["asr_by_trigger"][config["trigger"]]
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return metrics, tensors


def run_label(config: dict) -> str:
    """How progress reports name a run: ``cifar10 square 2% seed 0``."""
    poison = f" {config['poison_rate'] * 100:g}%" if config["trigger"] else ""
    arch = "" if config["arch"] == "pmoe" else f" {config['arch']}"
    return f"{config['dataset']}{arch} {config['trigger'] or 'clean'}{poison} seed {config['seed']}"


def attack_run(config: dict, cache: RunCache | None = None, force: bool = False):
    return (cache or RunCache()).get_or_run(config, run_attack, force)


def load_model(run, num_classes: int) -> torch.nn.Module:
    """The trained model of a cached run (an attack run, or a defence run of one)."""
    cfg = run.config.get("attack", run.config)
    model = build_model(cfg["arch"], num_classes, cfg["width"])
    state = {k[len("model."):]: v for k, v in run.tensors().items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()


def model_for(runs, dataset: str, trigger: str | None = None, rate: float = 0.0, seed: int | None = None,
              arch: str = "pmoe") -> torch.nn.Module:
    """The trained model of the run among ``runs`` with this dataset, trigger (None: the clean
    model), poison rate and architecture; ``seed`` None: the lowest seed among them."""
    match = [r for r in runs if (r.config["dataset"], r.config["trigger"], r.config["arch"]) == (dataset, trigger, arch)
             and np.isclose(r.config["poison_rate"], rate) and (seed is None or r.config["seed"] == seed)]
    if not match:
        raise KeyError(f"no run of {dataset} {trigger or 'clean'} at {rate:g} among the {len(runs)} runs given")
    run = min(match, key=lambda r: r.config["seed"])
    return load_model(run, load_dataset(dataset).num_classes)


def attack_grid(profile_name: str, datasets=DATASETS, triggers=TRIGGERS, rates=None, seeds=None,
                arch: str = "pmoe", trigger_overrides: dict | None = None, wanet_noise_mode: bool = False,
                **kwargs) -> list[dict]:
    """Every configuration of a sweep: a clean run per dataset and seed, then the attacks.

    ``trigger_overrides`` maps a trigger name to parameters, e.g. ``{"warp": {"variant": "wanet"}}``;
    ``wanet_noise_mode`` adds WaNet's noise-mode samples (cross ratio 2) to the original WaNet warp.
    """
    p = profile(profile_name)
    rates = p["rates"] if rates is None else check_list("poison_rates", rates, lambda n, v: check_rate(v, n))
    seeds = p["seeds"] if seeds is None else check_list("seeds", seeds, check_int)
    check_choices("datasets", datasets, DATASETS)
    check_choices("triggers", triggers, TRIGGERS)
    check_bool("wanet_noise_mode", wanet_noise_mode)
    trigger_overrides = trigger_overrides or {}
    for t in list(triggers) + list(trigger_overrides):
        trigger_params(t, **trigger_overrides.get(t, {}))  # fail fast on a bad trigger
    configs = []
    for ds in datasets:
        for seed in seeds:
            configs.append(attack_config(profile_name, ds, None, 0.0, seed, arch, **kwargs))
            for t in triggers:
                overrides = trigger_overrides.get(t)
                wanet = t == "warp" and trigger_params(t, **(overrides or {}))["variant"] == "wanet"
                for r in rates:
                    configs.append(attack_config(profile_name, ds, t, r, seed, arch,
                                                 trigger_overrides=overrides,
                                                 cross_ratio=2.0 if wanet and wanet_noise_mode else 0.0,
                                                 **kwargs))
    return configs


def attack_results(configs: list[dict], cache: RunCache | None = None, force: bool = False,
                   executor=None) -> pd.DataFrame:
    """Run (or load) every configuration; one row per run with ASR, BA and CAD in percent.

    The missing runs go to ``executor`` (``"local"``, ``"ray"``; None: ``MOEBD_EXECUTOR``)."""
    cache = cache or RunCache()
    return results_frame(cache.sweep(configs, run_attack, force, desc="pMoE attack runs", label=run_label,
                                     executor=executor))


def results_frame(runs) -> pd.DataFrame:
    """One row per attack run with ASR, BA and CAD in percent (CAD against the clean run of the
    same dataset, architecture and seed among ``runs``)."""
    clean = {(r.config["dataset"], r.config["arch"], r.config["seed"]): r.metrics
             for r in runs if r.config["trigger"] is None}
    rows = []
    for r in runs:
        c, m = r.config, r.metrics
        base = clean.get((c["dataset"], c["arch"], c["seed"]))
        rows.append({
            "dataset": c["dataset"], "arch": c["arch"], "trigger": c["trigger"] or "clean",
            "poison_rate": c["poison_rate"] * 100, "seed": c["seed"],
            "asr": m.get("asr", np.nan), "ba": m["ba"],
            "cad": clean_accuracy_drop(base["ba"], m["ba"]) if base and c["trigger"] else np.nan,
            "clean_model_asr": base["asr_by_trigger"].get(c["trigger"], np.nan)
            if base and c["trigger"] else np.nan,
            "n_train": m["n_train"], "n_poisoned": m.get("n_poisoned", 0), "train_seconds": m["history"]["seconds"],
            "images_per_second": m["history"]["images_per_second"], "run": r.path.name,
        })
    return pd.DataFrame(rows)
