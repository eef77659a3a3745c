"""Chapter 4's defenses, one function each, dispatched through one table (:data:`DEFENDERS`), as
OpenBackdoor's ``DEFENDERS``: adding a method is one function and one line here (and its name in
:data:`moebackdoor.llm.config.METHODS_ALL`, with :data:`~moebackdoor.llm.config.BUDGETED` when it
trains for Locphylax's number of steps).

Every defense receives a :class:`Defense`: the suspect model's attack run (loaded), the
defender's clean data and nothing of the attack, and the budget of steps when it has one. It
trains a fresh adapter of its own (or every weight, ``defense["finetune"]="full"``; or prunes) and
returns ``(metrics, tensors)``.

Locphylax (and its ablations with a stage 1) runs stage 1 until the defender's own signal says the
known backdoors hold (``known_retention`` on its held-out clean prompts at least
``inject_threshold`` %, checked after each epoch; at most ``stage1_max_epochs``), then stage 2
until they are gone (at most ``known_threshold`` %; at most ``stage2_max_epochs``). Clean
fine-tuning, CROW and stage 2 alone get the number of steps Locphylax used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import crow, locphylax, models, pruning, run_models
from .config import BUDGETED, figure_n, run_label
from .evaluation import asr_tracker, evaluate, known_retention
from .records import defense_inputs
from .training import Recipe, SFTData, short_history, stratified_batches, train_sft

UNCAPPED = 10 ** 6  # epochs for a run that a step budget stops


@dataclass
class Defense:
    """What a defense is given, and the model building, tracking and checks the methods share."""
    config: dict
    attack: object  # the attack run (``config``, ``tensors()``): its model is the suspect model
    budget: int | None = None  # the steps Locphylax used, for the BUDGETED methods
    metrics: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    track: list = field(default_factory=list)  # ASR through the steps, for the figure only

    def __post_init__(self):
        c = self.config
        self.settings, self.seed, self.label = c["defense"], c["seed"], run_label(c)
        self.tok = models.load_tokenizer(c["model"])
        self.inputs = defense_inputs(c, self.tok)
        self.max_length = c["recipe"]["max_length"]
        self.recipe = Recipe(**dict(c["recipe"], lr=self.settings["lr"]))
        self.stage1 = SFTData(self.tok, self.inputs["clean"] + self.inputs["known_injection"], self.max_length,
                              groups=[-1] * len(self.inputs["clean"]) + self.inputs["known_groups"])
        self.stage2 = SFTData(self.tok, self.inputs["clean"] + self.inputs["known_recovery"], self.max_length)
        if self.budget is not None:
            self.metrics["budget_steps"] = self.budget

    def suspect(self):
        return run_models.suspect_model(self.attack)

    def trainable(self):
        """A fresh adapter (or every weight) on the suspect model."""
        return run_models.defended(self.config, self.suspect(), seed=self.seed + 1)

    def clean_data(self) -> SFTData:
        """The defender's clean records with its known-trigger instructions, untriggered."""
        return SFTData(self.tok, self.inputs["clean"] + self.inputs["known_clean"], self.max_length)

    def with_epochs(self, epochs: int) -> Recipe:
        return Recipe(**dict(self.recipe.as_dict(), epochs=epochs))

    def callbacks(self, model, stage: str, offset: int = 0, stop_rule: str | None = None, stop: bool = True):
        """ASR tracking for the figure (never read by the defense) and the defender's stopping rule:
        ``inject`` stops once the known backdoors hold (retention >= ``inject_threshold``), ``recover``
        once they are gone (<= ``known_threshold``), checked after each epoch (``stop=False``: checked
        and recorded, never stopping). Returns (callback, checks)."""
        d, tracked = self.settings, self.config["method"] in self.settings["track_methods"]
        asr = asr_tracker(model, self.tok, self.config, figure_n(self.config), self.track, stage, offset) \
            if tracked else None
        data = self.stage1 if stop_rule == "inject" else self.stage2
        per_epoch = math.ceil(len(data) / self.recipe.batch_size)
        checks = []

        def cb(step):
            if asr is not None and step % d["track_every"] == 0:
                asr(step)
            if stop_rule and step and step % per_epoch == 0:
                checks.append(known_retention(model, self.tok, self.config, self.inputs["validation"],
                                              self.inputs["n_triggers"]))
                if not stop:
                    return False
                if stop_rule == "inject":
                    return checks[-1] >= d["inject_threshold"]
                return checks[-1] <= d["known_threshold"]
            return False
        return cb, checks

    def finish(self, model) -> tuple[dict, dict]:
        """The tracked ASR, the evaluation on the whole test sets, and the trained tensors."""
        self.metrics["asr_track"] = self.track
        self.metrics.update(evaluate(model, self.tok, self.config))
        self.tensors.update(models.adapter_state(model))
        return self.metrics, self.tensors


def collapse(d: Defense, cluster: bool = True, after_stage1: bool = False) -> tuple[dict, dict]:
    """Locphylax: inject the known backdoors with the clustering loss (``cluster=False``: alpha = 0),
    then recover; ``after_stage1`` also evaluates the model between the stages.

    Stage 1 draws its batches at random, or stratified (``stage1_batches="stratified"``: each batch
    holds clean, t1 and t2 rows); it stops by the defender's rule, or runs exactly ``stage1_steps``
    steps when the settings give them (the retention still checked and recorded after each epoch)."""
    model = d.trainable()
    s, alpha = d.settings, 0.0
    if cluster:
        init = locphylax.initial_losses(model, d.stage1, d.recipe.batch_size, seed=d.seed, normalize=s["normalize"],
                                        position=s["cluster_token"], cross=s["cross"])
        alpha = locphylax.alpha_rule(init["injection"], init["cluster"]) if init["cluster"] > 0 else 0.0
        d.metrics["initial_losses"] = init
    d.metrics["alpha"] = alpha
    fixed = s.get("stage1_steps")
    batches = partial(stratified_batches, d.stage1.groups, d.recipe.batch_size) \
        if s.get("stage1_batches", "random") == "stratified" else None
    cb, checks1 = d.callbacks(model, "stage 1", stop_rule="inject", stop=fixed is None)
    h1 = train_sft(model, d.stage1, d.with_epochs(UNCAPPED if fixed else s["stage1_max_epochs"]), d.seed,
                   max_steps=fixed, loss_fn=locphylax.InjectionLoss(alpha, s["cross"], s["normalize"], s["cluster_token"]),
                   callback=cb, callback_every=1, bucket=False, batches=batches, desc=d.label + " (stage 1)")
    d.metrics["stage1"] = short_history(h1)
    d.metrics["stage1_parts_last"] = h1["parts"][-1] if h1["parts"] else {}
    d.metrics["known_retention_stage1_by_epoch"] = checks1
    if after_stage1:
        d.metrics["after_stage1"] = evaluate(model, d.tok, d.config)
    d.tensors.update({f"stage1.{k}": v for k, v in models.adapter_state(model).items()})
    cb, checks2 = d.callbacks(model, "stage 2", offset=h1["steps"], stop_rule="recover")
    h2 = train_sft(model, d.stage2, d.with_epochs(s["stage2_max_epochs"]), d.seed,
                   callback=cb, callback_every=1, desc=d.label + " (stage 2)")
    d.metrics["stage2"] = short_history(h2)
    d.metrics["known_retention_stage2_by_epoch"] = checks2
    d.metrics["steps_used"] = h1["steps"] + h2["steps"]
    return d.finish(model)


def stage2_only(d: Defense) -> tuple[dict, dict]:
    """Recovery alone, for Locphylax's number of steps."""
    model = d.trainable()
    cb, _ = d.callbacks(model, "stage 2")
    d.metrics["stage2"] = short_history(train_sft(model, d.stage2, d.with_epochs(UNCAPPED), d.seed,
                                                  max_steps=d.budget, callback=cb, callback_every=1, desc=d.label))
    d.metrics["steps_used"] = d.metrics["stage2"]["steps"]
    return d.finish(model)


def clean_finetune(d: Defense, crow_loss: bool = False) -> tuple[dict, dict]:
    """Fine-tuning on the defender's clean records, for Locphylax's number of steps; with
    ``crow_loss``, CROW's loss (the answer loss plus its consistency penalty)."""
    model = d.trainable()
    clean_all = d.clean_data()
    loss_fn = crow.CrowLoss(**d.settings["crow"]) if crow_loss else None
    cb, _ = d.callbacks(model, d.config["method"])
    d.metrics["history"] = short_history(train_sft(model, clean_all, d.with_epochs(UNCAPPED), d.seed,
                                                   max_steps=d.budget, loss_fn=loss_fn, callback=cb,
                                                   callback_every=1, bucket=False, desc=d.label))
    d.metrics["steps_used"] = d.metrics["history"]["steps"]
    return d.finish(model)


def prune(d: Defense) -> tuple[dict, dict]:
    """Wanda (or magnitude) pruning of the suspect model, calibrated on the defender's clean
    records; no training."""
    model = d.suspect()
    calib = d.clean_data()
    batches = [calib.batch(np.arange(i, min(i + 8, len(calib)))) for i in range(0, len(calib), 8)]
    d.metrics["pruning"] = pruning.prune(model, d.settings["sparsity"], d.settings["prune"], batches)
    d.metrics.update(evaluate(model, d.tok, d.config))
    return d.metrics, d.tensors


DEFENDERS = {
    "locphylax": partial(collapse, after_stage1=True),
    "locphylax_label_targets": partial(collapse, after_stage1=True),  # run_config makes its targets labels
    "locphylax_no_cluster": partial(collapse, cluster=False),
    "locphylax_one_trigger": collapse,  # defense_inputs gives it one known trigger
    "locphylax_stage2_only": stage2_only,
    "clean_finetune": clean_finetune,
    "crow": partial(clean_finetune, crow_loss=True),
    "pruning": prune,
}


def run_defense(config: dict, deps: list) -> tuple[dict, dict]:
    """Apply ``config``'s method to its attack's model. ``deps``: the loaded runs
    :func:`moebackdoor.llm.config.requires` lists (the attack; then Locphylax's, for a budget)."""
    budget = deps[1].metrics["steps_used"] if config["method"] in BUDGETED else None
    return DEFENDERS[config["method"]](Defense(config, deps[0], budget))
