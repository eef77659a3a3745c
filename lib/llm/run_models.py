"""The models of chapter 4's runs, from a configuration and the tensors of cached runs.

- :func:`adapted`: the base model made trainable as the attack says (a LoRA adapter or every
  weight), its trained tensors loaded when given;
- :func:`suspect_model`: an attack run's model, its adapter merged: what the defender receives;
- :func:`defended`: a suspect model made trainable as the defense says.

The runs are handed in loaded (:meth:`moebackdoor.runcache.RunCache.sweep` with ``requires``):
nothing here opens a cache.
"""
from __future__ import annotations

from . import models


def finetune(config: dict, defense: bool = False) -> str:
    """How the run adapts its model: the attack's (``defense=False``) or the defense's mode."""
    return (config["defense"] if defense else config).get("finetune", "lora")


def base_model(config: dict):
    return models.load_model(config["model"], layers=config["layers"])


def adapted(config: dict, state: dict | None = None, seed: int = 0):
    """The base model made trainable as the attack says; with ``state``, its trained tensors loaded."""
    model = models.adapt(base_model(config), finetune(config), seed)
    return model if state is None else models.load_adapter_state(model, state)


def merged(config: dict, adapter: dict):
    """The attack's model with its trained tensors: the adapter merged, or the full weights."""
    model = adapted(config, adapter)
    return model.merge_and_unload() if finetune(config) == "lora" else model


def suspect_model(attack_run):
    """The attack run's model with its adapter merged (a loaded run: ``config`` and ``tensors()``)."""
    return merged(attack_run.config, attack_run.tensors())


def defended(config: dict, suspect, state: dict | None = None, seed: int = 0):
    """``suspect`` made trainable as the defense ``config`` says; with ``state``, its tensors loaded."""
    model = models.adapt(suspect, finetune(config, defense=True), seed)
    return model if state is None else models.load_adapter_state(model, state)
