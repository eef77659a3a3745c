"""How chapter 3's trained methods train one run: ``no_defense`` and ``benign`` (the clean
training set) train the classifier alone; ``dpoe`` (one shallow trigger-only expert, R-drop) and
``npoe`` (pre-trained experts, gate, R-drop) train it as a product with experts. An expert's
pre-training is a run of its own (:func:`pretrain`, :func:`config.expert_config`), handed to the
PoE run loaded (:func:`poe_parts`).
"""
from __future__ import annotations

import time

from .config import expert_config, run_label
from .data import load_split, n_classes
from .evaluation import evaluate, expert_probs, expert_target_probs, pseudo_dev, routing
from .models import HiddenGate, TextClassifier, load_classifier, load_tokenizer
from .poisoning import pretrain_set
from .run_data import training_set
from .training import PoE, Recipe, Tokenized, pretrain_expert, train_classifier, train_poe


def main_model(config: dict, seed_offset: int = 0):
    """The run's classifier, freshly initialised from the encoder with the run's seed."""
    return load_classifier(config["encoder"], n_classes(config["dataset"]), config["layers"],
                           seed=config["seed"] + seed_offset)


def train(config: dict, pretrained: list | None = None, max_steps: int | None = None) -> tuple[dict, dict]:
    """Train one run of a trained method and evaluate it; ``pretrained``: its experts' loaded
    pre-training runs (:func:`config.requires`)."""
    seed, recipe = config["seed"], Recipe(**config["recipe"])
    tokenizer = load_tokenizer(config["encoder"])
    clean, poisoned = training_set(config)
    train_data = clean if config["method"] == "benign" else poisoned.data
    data = Tokenized(tokenizer, train_data, recipe.max_length)
    model = main_model(config)
    metrics = {"n_train": len(train_data), "n_poisoned": poisoned.counts(), "requested": poisoned.requested}
    if "experts" not in config:
        metrics["history"] = train_classifier(model, data, recipe, seed, max_steps=max_steps, desc=run_label(config))
    else:
        experts, gate, metrics["pretraining"] = poe_parts(config, pretrained or [])
        # did each expert learn its trigger (or the topic, or the class)? before and after joint training
        diagnose = lambda p: expert_target_probs(p, poisoned.poison_idx, clean.labels, config["target"])
        before = diagnose(expert_probs(experts, data))
        metrics["history"] = train_poe(model, experts, gate, data, recipe, PoE(**config["poe"]), seed,
                                       max_steps=max_steps, desc=run_label(config))
        metrics["pseudo_dev"], outputs = pseudo_dev(config, model, experts, gate, tokenizer, data)
        metrics["routing"] = routing(outputs, poisoned.poison_idx, clean.labels, config["target"])
        metrics["expert_diagnostics"] = {"before": before, "after": diagnose(outputs["experts"])}
    metrics.update(evaluate(TextClassifier(model, tokenizer, recipe.max_length), config))
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return metrics, {f"model.{k}": v for k, v in model.state_dict().items()}


def new_expert(cfg: dict):
    """Expert ``cfg["expert"]`` of an expert configuration, freshly initialised."""
    return load_classifier(cfg["encoder"], n_classes(cfg["dataset"]), cfg["layers"], seed=cfg["seed"] + 1 + cfg["expert"],
                           cls_only=bool(cfg["cls_only"]))


def pretrain(cfg: dict) -> tuple[dict, dict]:
    """Pre-train one trigger-only expert on the defender's own trigger instances over clean dev
    sentences (:func:`config.expert_config`): its pre-training record and its weights."""
    start, recipe = time.perf_counter(), Recipe(**cfg["recipe"])
    expert, seed = new_expert(cfg), cfg["seed"] + cfg["expert"]
    ps = pretrain_set(cfg["trigger"], load_split(cfg["dataset"], "dev"), cfg["style"], cfg["pretrain_n"], seed=seed,
                      labels=cfg.get("pretrain_labels", "own"), source=cfg.get("pretrain_source", "own"),
                      dataset=cfg["dataset"], target=cfg.get("target", 1))
    history = pretrain_expert(expert, Tokenized(load_tokenizer(cfg["encoder"]), ps, recipe.max_length), recipe,
                              cfg["pretrain_steps"], seed, cfg["double_softmax"], progress=False,
                              epochs=cfg["pretrain_epochs"],
                              schedule_steps=cfg.get("joint_steps") if cfg.get("pretrain_schedule") == "authors" else None)
    return dict(trigger=cfg["trigger"], **history, seconds=time.perf_counter() - start), expert.state_dict()


def poe_parts(config: dict, pretrained: list):
    """The trigger-only experts (the encoder's first layers), loaded from their pre-training runs
    ``pretrained`` (none: not pre-trained, as DPoE's), the gate (none for DPoE), and the experts'
    pre-training records."""
    e = config["experts"]
    experts = [new_expert(expert_config(config, j)) for j in range(e["n"])]
    for expert, pre in zip(experts, pretrained):
        expert.load_state_dict(pre.tensors())
    gate = None
    if e["gate_layers"]:
        gate = HiddenGate(experts[0].config.hidden_size, e["n"], seed=config["seed"] + 100) \
            if e.get("gate_on", "text") == "hidden" \
            else load_classifier(config["encoder"], e["n"], e["gate_layers"], seed=config["seed"] + 100,
                                 cls_only=e.get("cls_only", False))
    return experts, gate, [pre.metrics for pre in pretrained]
