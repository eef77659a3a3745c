"""Cached runs of chapter 3: one text classifier trained under one attack setting by one method,
or one expert's pre-training; the run graph and the sweeps that train what is missing.

A run poisons the (optionally subsampled) training set with a setting's triggers, trains
with a method (:mod:`.methods`) or defends No defense's model (:mod:`.defenses`), and measures
CACC on the whole clean test set and the ASR of each trigger on its whole triggered non-target
test set (``smoke`` cuts each test set to ``n_test`` sentences; :mod:`.evaluation`). Its
configuration comes from :mod:`.config`, which also says which runs it needs
(:func:`config.requires`: NPoE its pre-trained experts, a defense No defense's model): the
sweep of :func:`results` trains those first, in the same cache, and :func:`run` receives them
loaded. No run opens a cache of its own.

>>> from moebackdoor.text.config import run_config
>>> chosen, candidates, k = select_npoe(run_config("smoke", "sst2", "mix4", "npoe"))  # doctest: +SKIP
"""
from __future__ import annotations

import time

from ..params import check_choice
from ..runcache import RunCache, config_hash, minutes_by_section as by_section
from . import poe
from .config import DEFENSES, SELECT_RULE, is_expert, requires, run_label, selection_configs, with_beta
from .data import n_classes
from .defenses import defend
from .methods import pretrain, train
from .models import TextClassifier, load_classifier, load_tokenizer


def run(config: dict, deps: list) -> tuple[dict, dict]:
    """Train (or defend) and evaluate one configuration, given the runs it needs loaded
    (``deps``, in the order of :func:`config.requires`); no caching: see :func:`results`."""
    if is_expert(config):
        return pretrain(config)
    start = time.perf_counter()
    if config["method"] in DEFENSES:
        base = deps[0]
        metrics, tensors = defend(config, load_model(base))
        metrics["base_run"] = base.path.name
    else:
        metrics, tensors = train(config, deps)
    metrics["wall_seconds"] = time.perf_counter() - start  # everything: loading, training, evaluation
    if deps and config["method"] not in DEFENSES:
        metrics["pretraining_apart"] = True  # the experts' pre-training is in their own runs' time
    return metrics, tensors


def results(configs: list[dict], cache: RunCache | None = None, force: bool = False, executor=None) -> list:
    """Run (or load) every configuration, in order, and what they need first."""
    return (cache or RunCache()).sweep(configs, run, force, desc="NPoE runs", label=run_label,
                                       executor=executor, requires=requires)


def choose(config: dict, candidates: list, rule: str = SELECT_RULE) -> tuple[dict, int]:
    """NPoE's pseudo-dev choice among the β ``candidates`` (runs) of ``config`` (no test data):
    the configuration of the table's run at the chosen β, and the chosen candidate's index."""
    chosen = poe.select_by_pseudo_dev([r.metrics["pseudo_dev"] for r in candidates], config["dataset"], rule)
    return with_beta(config, candidates[chosen].config["poe"]["beta"]), chosen


def select_npoe(config: dict, force: bool = False, executor=None, betas=None, rule: str = SELECT_RULE,
                cache: RunCache | None = None):
    """Train NPoE at each β of the grid and pick one by the pseudo-dev rule (no test data):
    ``(chosen run, every candidate run, index of the chosen)``. Where the candidates ran at a
    smaller scale (``select_scale``), the chosen β is then trained at ``config``'s. ``rule``:
    the authors' code's signals (``"code"``) or the paper's formula as we read it (``"paper"``)."""
    check_choice("select_rule", rule, poe.PSEUDO_DEV_RULES)
    cache = cache or RunCache()
    configs = selection_configs(config, betas)
    candidates = results(configs, cache=cache, force=force, executor=executor)
    final, chosen = choose(config, candidates, rule)
    run_ = candidates[chosen] if final == configs[chosen] else \
        results([final], cache=cache, force=force, executor=executor)[0]
    return run_, candidates, chosen


def load_model(run_) -> TextClassifier:
    """The trained classifier of a cached run."""
    c = run_.config
    model = load_classifier(c["encoder"], n_classes(c["dataset"]), c["layers"])
    model.load_state_dict({k[len("model."):]: v for k, v in run_.tensors().items() if k.startswith("model.")})
    return TextClassifier(model.eval(), load_tokenizer(c["encoder"]), c["recipe"]["max_length"])


def minutes(runs_) -> float:
    """The minutes the distinct runs took when they were trained (older runs: training and defense
    time only). An expert's pre-training counts its own seconds, except where an NPoE run trained
    before the run graph used it: that run pre-trained the expert inside its own wall time."""
    unique = {r.path.name: r for r in runs_}.values()
    inside = {config_hash(d) for r in unique if "pretraining_apart" not in r.metrics and not is_expert(r.config)
              for d in requires(r.config) if is_expert(d)}
    return sum(r.metrics.get("wall_seconds", r.metrics.get("seconds", r.metrics.get("history", {}).get("seconds", 0)
                                                                       + r.metrics.get("defense_seconds", 0)))
               for r in unique if r.path.name not in inside) / 60


def minutes_by_section(sections: dict[str, list], cache: RunCache | None = None) -> dict[str, tuple[int, float]]:
    """``{section: (runs, minutes)}`` of a cold execution (:func:`moebackdoor.runcache.minutes_by_section`),
    the minutes counted as :func:`minutes` counts them."""
    return by_section(sections, requires, cache or RunCache(), minutes)
