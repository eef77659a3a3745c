"""The mechanism figures of chapter 4, computed once per Locphylax run and cached like runs.

- aggregation: final-layer states at the last prompt token of clean, unknown-trigger (the
  attack's triggered test prompts) and known-trigger prompts, projected on two principal axes
  fitted on all of them, for the suspect model and after stage 1;
- critical layers: the unknown trigger's ASR when every attention head of one layer is ablated
  (its output projection zeroed), layer by layer, before and after stage 1.

Both read the attack's test prompts: they analyse the defense afterwards and feed nothing back.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from ..devices import default_device
from ..runcache import RunCache
from . import data, generation, judge, models, runs
from .training import causal_lm
from .triggers import Trigger


def _models(config: dict):
    """(name, model) for the suspect model and for it after stage 1 (adapter loaded)."""
    loc = RunCache().get_or_run(config, runs.run)
    stage1 = {k[len("stage1."):]: v for k, v in loc.tensors().items() if k.startswith("stage1.")}
    after = runs.adapted(config, stage1, defense=True)
    return [("suspect model", runs.suspect_model(config)), ("after stage 1", after)]


def _prompt_sets(config: dict, tokenizer, n: int) -> dict[str, list[str]]:
    clean, trig = runs.test_sets(config)
    if config["task"] == "sst2":
        trig = [r for r in trig if r.label != judge.SST2_TARGET]
    clean, trig = data.subset(clean, n, 2), data.subset(trig, n, 3)
    rng = np.random.default_rng(4)
    t = config["template"]
    sets = {"clean": [models.prompt_text(tokenizer, r.instruction, r.input, t) for r in clean],
            "unknown trigger": [models.prompt_text(tokenizer, r.instruction, r.input, t) for r in trig]}
    for k, (phrase, placement, _) in enumerate(config["defense"]["known"][:2]):
        trig_k = Trigger(phrase, placement)
        sets[f"known trigger {k + 1}"] = [models.prompt_text(tokenizer, trig_k.insert(r.instruction, rng), r.input, t)
                                          for r in clean]
    return sets


@torch.no_grad()
def last_prompt_states(model, tokenizer, prompts: list[str], batch_size: int = 16) -> np.ndarray:
    device = default_device()
    lm = causal_lm(model).to(device).eval()
    out = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the last token sits at the end
    try:
        for s in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[s:s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out.append(lm.model(**enc).last_hidden_state[:, -1].float().cpu().numpy())
    finally:
        tokenizer.padding_side = side
    return np.concatenate(out)


def aggregation(config: dict) -> tuple[dict, dict]:
    tok = models.load_tokenizer(config["model"])
    sets = _prompt_sets(config, tok, runs.config_n(config))
    states, rows = {}, []
    for name, model in _models(config):
        for kind, prompts in sets.items():
            states[(name, kind)] = last_prompt_states(model, tok, prompts)
    for name in dict.fromkeys(n for n, _ in states):
        x = np.concatenate([states[(name, k)] for k in sets])
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        for kind in sets:
            p = (states[(name, kind)] - mean) @ vt[:2].T
            c = {k: states[(name, k)].mean(0) for k in sets}
            rows += [{"model": name, "kind": kind, "pc1": float(a), "pc2": float(b),
                      "distance_to_unknown": float(np.linalg.norm(c[kind] - c["unknown trigger"]))} for a, b in p]
    return {"points": rows}, {}


@contextlib.contextmanager
def ablated_attention(model, layer: int):
    """Every attention head of ``layer`` ablated: the attention block's output projection gives 0."""
    proj = causal_lm(model).model.layers[layer].self_attn.o_proj
    handle = proj.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def critical_layers(config: dict) -> tuple[dict, dict]:
    tok = models.load_tokenizer(config["model"])
    prompts = _prompt_sets(config, tok, max(4, runs.config_n(config) // 2))["unknown trigger"]
    n_new = runs.ANSWER_TOKENS[config["task"]]
    labels = [None if config["task"] != "sst2" else "Positive"] * len(prompts)  # non-target prompts only
    rows = []
    for name, model in _models(config):
        intact = judge.attack_success_rate(config["task"], generation.generate(model, tok, prompts, n_new), labels)
        for layer in range(len(causal_lm(model).model.layers)):
            with ablated_attention(model, layer):
                answers = generation.generate(model, tok, prompts, n_new)
            rows.append({"model": name, "layer": layer, "asr": judge.attack_success_rate(config["task"], answers, labels),
                         "asr_intact": intact})
    return {"layers": rows}, {}


def cached(kind: str, config: dict) -> pd.DataFrame:
    """The figure's table for a Locphylax run (computed once, then read from the run cache)."""
    fn = {"aggregation": (aggregation, "points"), "critical_layers": (critical_layers, "layers")}[kind]
    key = {"chapter": "locphylax", "analysis": kind, "of": config}
    run = RunCache().get_or_run(key, lambda c: fn[0](c["of"]))
    return pd.DataFrame(run.metrics[fn[1]])
