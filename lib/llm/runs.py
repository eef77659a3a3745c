"""Cached runs of chapter 4: the dispatcher every sweep trains through, and the sweep itself.

An attack run fine-tunes the base model with LoRA (or every weight, ``finetune="full"``) on
BackdoorLLM's poisoned records mixed with clean ones (1:1, as BackdoorLLM) and keeps what it
trained. A defense run receives that model with the adapter merged (the "suspect model"), the
defender's clean data and nothing of the attack, and trains a fresh adapter of its own (or every
weight; or prunes): :mod:`moebackdoor.llm.defenses`. Every run is evaluated on the task's whole
clean test set (CACC) and the attack's whole triggered test set (ASR), greedy, with the template it
was trained with (:mod:`moebackdoor.llm.evaluation`).

Methods: ``no_defense``, ``locphylax``, ``clean_finetune``, ``pruning``, ``crow``; ablations
``locphylax_no_cluster`` (alpha = 0), ``locphylax_one_trigger`` (t1 only), ``locphylax_stage2_only``,
and the variant ``locphylax_label_targets`` (the known triggers answer class labels, not sentences).
``clean_model`` (the base model fine-tuned on the clean records alone) gives the floor of ASR.

:func:`run` trains any kind of configuration (:func:`moebackdoor.llm.config.kind`) from the runs
it needs, handed in loaded; :func:`results` and :func:`run_grid` sweep them with
:func:`moebackdoor.llm.config.requires`, so that what is needed is trained first, once, through
the same executor (local or Ray) and the same cache.

>>> grid = locphylax_grid("smoke")          # moebackdoor.llm.grid: the page's runs, checked
>>> done = run_grid(grid)                   # {"main": [Run, ...], "floor": [...], ...}
"""
from __future__ import annotations

import time

from ..runcache import Run, RunCache
from . import analysis, defenses, models
from .config import kind, requires, run_label
from .evaluation import evaluate
from .records import attack_records, clean_records, pairs
from .run_models import adapted
from .training import Recipe, SFTData, short_history, train_sft


def run(config: dict, deps: list[Run]) -> tuple[dict, dict]:
    """Train and measure one configuration of any kind; ``deps``: the runs ``requires(config)``
    lists, loaded, in that order."""
    start = time.perf_counter()
    metrics, tensors = RUNNERS[kind(config)](config, deps)
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics, tensors


def fine_tune(config: dict, records: list):
    """The base model adapted as the attack says and fine-tuned on ``records``: (model, tokenizer,
    its training data, the training history)."""
    tok = models.load_tokenizer(config["model"])
    model = adapted(config, seed=config["seed"])
    sft = SFTData(tok, pairs(tok, records, config["template"]), config["recipe"]["max_length"])
    history = train_sft(model, sft, Recipe(**config["recipe"]), config["seed"], desc=run_label(config))
    return model, tok, sft, history


def run_attack(config: dict, deps: list[Run] = ()) -> tuple[dict, dict]:
    """Fine-tune the base model on the poisoned mix."""
    poisoned, clean = attack_records(config)
    model, tok, sft, history = fine_tune(config, poisoned + clean)
    metrics = {"n_train": len(poisoned) + len(clean), "n_poisoned": len(poisoned),
               "train_tokens": sft.n_tokens, "history": short_history(history)}
    metrics.update(evaluate(model, tok, config))
    return metrics, models.adapter_state(model)


def train_clean_adapter(config: dict, deps: list[Run] = ()) -> tuple[dict, dict]:
    """The clean model: the base model fine-tuned on the attack's clean records alone."""
    records = clean_records(config)
    model, _, _, history = fine_tune(config, records)
    return {"n_train": len(records), "history": short_history(history)}, models.adapter_state(model)


def evaluate_trained(config: dict, trained: Run, name: str) -> tuple[dict, dict]:
    """The model of the run ``trained`` evaluated as ``config`` says; ``name`` records that run."""
    model = adapted(config, trained.tensors())
    return dict(evaluate(model, models.load_tokenizer(config["model"]), config), **{name: trained.path.name}), {}


def run_clean_model(config: dict, deps: list[Run]) -> tuple[dict, dict]:
    """The floor: the clean model (``deps[0]``, trained once per task, whatever the attack),
    evaluated on this attack's prompts."""
    return evaluate_trained(config, *deps, "adapter_run")


def run_reevaluation(config: dict, deps: list[Run]) -> tuple[dict, dict]:
    """The attack run's model (``deps[0]``) evaluated with another template (BackdoorLLM's
    raw-instruction mode)."""
    return evaluate_trained(config, *deps, "attack_run")


RUNNERS = {"attack": run_attack, "reevaluation": run_reevaluation, "clean_adapter": train_clean_adapter,
           "clean_model": run_clean_model, "defense": defenses.run_defense, "analysis": analysis.run_analysis}


def results(configs: list[dict], cache: RunCache | None = None, force: bool = False, executor=None) -> list[Run]:
    """Every configuration's run, trained (with what it needs) when missing."""
    return (cache or RunCache()).sweep(configs, run, force, desc="Locphylax runs", label=run_label,
                                       executor=executor, requires=requires)


def run_grid(grid, cache: RunCache | None = None) -> dict[str, list[Run]]:
    """Every group of a :class:`moebackdoor.llm.grid.LocphylaxGrid` in one sweep (so that a cluster
    gets every missing run at once): the runs, by group name."""
    return (cache or RunCache()).sweep_groups(grid.groups(), run, force=grid.force, desc="Locphylax runs",
                                              label=run_label, executor=grid.executor, requires=requires)
