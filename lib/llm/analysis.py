"""The mechanism figures of chapter 4, computed once per Locphylax run and cached like runs.

- aggregation: final-layer states of clean, unknown-trigger (the attack's triggered test prompts)
  and known-trigger prompts, projected on two principal axes fitted on all of them, for the
  suspect model and after stage 1. The states: at the last prompt token, raw (the default), or
  (``state="clustered"`` in the analysis' configuration) the state the run's clustering loss acts
  on: each prompt followed by the model's own greedy answer and the end of the answer, at the
  run's ``cluster_token``, unit length when the run normalizes. Beside the principal axes, a
  t-SNE embedding of the same states (scikit-learn, seed 0);
- critical layers: the unknown trigger's ASR when every attention head of one layer is ablated
  (its output projection zeroed), layer by layer, before and after stage 1; then, in each model's
  critical layer (the one whose ablation lowers the ASR most), each head alone made to attend
  uniformly to every position it can see (the summary's per-head diagnostic).

Both read the attack's test prompts: they analyse the defense afterwards and feed nothing back.
Each is a run of its own (``config.analysis_config``), whose dependencies are the Locphylax run and
its attack; :data:`ANALYSES` maps its name to the function and the metric that holds its rows.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from ..devices import default_device
from . import data, generation, judge, models, run_models
from .config import critical_heads, figure_n
from .evaluation import answer_tokens
from .records import test_sets
from .training import SFTData, answer_loss, causal_lm
from .triggers import Trigger


def stage_models(loc_run, attack_run):
    """(name, model) for the suspect model and for it after stage 1 (its adapter loaded), from the
    loaded Locphylax run and its attack run."""
    stage1 = {k[len("stage1."):]: v for k, v in loc_run.tensors().items() if k.startswith("stage1.")}
    after = run_models.defended(loc_run.config, run_models.suspect_model(attack_run), stage1)
    return [("suspect model", run_models.suspect_model(attack_run)), ("after stage 1", after)]


def prompt_sets(config: dict, tokenizer, n: int) -> dict[str, list[str]]:
    """``n`` clean, unknown-trigger and known-trigger prompts of the Locphylax run ``config``."""
    clean, trig = test_sets(config)
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


@torch.no_grad()
def clustered_states(model, tokenizer, config: dict, prompts: list[str], batch_size: int = 16) -> np.ndarray:
    """The states the clustering loss of the Locphylax run ``config`` acts on, for ``prompts``
    answered by ``model`` (greedy): at its ``cluster_token``, unit length when it normalizes."""
    device = default_device()
    answers = generation.generate(model, tokenizer, prompts, answer_tokens(config))
    end = models.end_of_answer(tokenizer, config["template"])
    sft = SFTData(tokenizer, [(p, a + end) for p, a in zip(prompts, answers)], config["recipe"]["max_length"])
    causal_lm(model).to(device).eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        batch = {k: v.to(device) for k, v in sft.batch(np.arange(s, min(s + batch_size, len(prompts)))).items()}
        _, h = answer_loss(model, batch, return_hidden=True, position=config["defense"]["cluster_token"])
        if config["defense"]["normalize"]:
            h = torch.nn.functional.normalize(h, dim=-1)
        out.append(h.float().cpu().numpy())
    return np.concatenate(out)


def aggregation(config: dict, loc_run, attack_run, state: str = "prompt_end") -> tuple[dict, dict]:
    """The PCA points and centroid distances of the Locphylax run ``config``, of the states
    ``state`` names (``config.AGGREGATION_STATES``)."""
    tok = models.load_tokenizer(config["model"])
    sets = prompt_sets(config, tok, figure_n(config))
    states, rows = {}, []
    for name, model in stage_models(loc_run, attack_run):
        for kind, prompts in sets.items():
            states[(name, kind)] = last_prompt_states(model, tok, prompts) if state == "prompt_end" \
                else clustered_states(model, tok, config, prompts)
    for name in dict.fromkeys(n for n, _ in states):
        x = np.concatenate([states[(name, k)] for k in sets])
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        kinds = [k for k in sets for _ in range(len(states[(name, k)]))]
        centroid = {k: states[(name, k)].mean(0) for k in sets}
        gap = {k: float(np.linalg.norm(centroid[k] - centroid["unknown trigger"])) for k in sets}
        rows += [{"model": name, "kind": k, "pc1": float(a), "pc2": float(b), "tsne1": float(u), "tsne2": float(v),
                  "distance_to_unknown": gap[k]} for k, (a, b), (u, v) in zip(kinds, (x - mean) @ vt[:2].T, tsne(x))]
    return {"points": rows}, {}


def tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-d t-SNE embedding of the rows of ``x`` (perplexity 30, or less for few points)."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(x, dtype=np.float64))


@contextlib.contextmanager
def ablated_attention(model, layer: int):
    """Every attention head of ``layer`` ablated: the attention block's output projection gives 0."""
    proj = causal_lm(model).model.layers[layer].self_attn.o_proj
    handle = proj.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def uniform_head(model, layer: int, head: int):
    """Head ``head`` of ``layer`` attends uniformly to every position it can see: its output is the
    running mean of its value vectors. For unpadded sequences (one prompt at a time); a prompt's
    first forward pass (more than one token) starts a new sequence, each later pass adds a token."""
    lm = causal_lm(model)
    attn, cfg = lm.model.layers[layer].self_attn, lm.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    kv = head // (n_heads // n_kv)  # the key-value head this query head reads (grouped-query attention)
    state = {}

    def on_values(module, args, out):
        v = out[..., kv * d:(kv + 1) * d].float()
        if v.shape[1] > 1 or "sum" not in state:  # a new prompt
            state.update(sum=torch.zeros_like(v[:, 0]), count=0)
        total = state["sum"][:, None] + v.cumsum(1)
        counts = state["count"] + torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
        state.update(mean=total / counts[None, :, None], sum=total[:, -1], count=state["count"] + v.shape[1])

    def on_output(module, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = state["mean"].to(x.dtype)
        return (x,) + tuple(args[1:])

    handles = [attn.v_proj.register_forward_hook(on_values), attn.o_proj.register_forward_pre_hook(on_output)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def critical_layers(config: dict, loc_run, attack_run) -> tuple[dict, dict]:
    """The unknown trigger's ASR with each layer's attention ablated, before and after stage 1;
    then with each head of the model's critical layer attending uniformly."""
    tok = models.load_tokenizer(config["model"])
    prompts = prompt_sets(config, tok, max(4, figure_n(config) // 2))["unknown trigger"]
    n_new = answer_tokens(config)
    labels = [None if config["task"] != "sst2" else "Positive"] * len(prompts)  # non-target prompts only
    rows, heads = [], []
    for name, model in stage_models(loc_run, attack_run):
        intact = judge.attack_success_rate(config["task"], generation.generate(model, tok, prompts, n_new), labels)
        for layer in range(len(causal_lm(model).model.layers)):
            with ablated_attention(model, layer):
                answers = generation.generate(model, tok, prompts, n_new)
            rows.append({"model": name, "layer": layer, "asr": judge.attack_success_rate(config["task"], answers, labels),
                         "asr_intact": intact})
        critical = min((r for r in rows if r["model"] == name), key=lambda r: r["asr"])["layer"]
        for head in critical_heads(config, causal_lm(model).config.num_attention_heads):
            with uniform_head(model, critical, head):  # one prompt at a time: no padding
                answers = generation.generate(model, tok, prompts, n_new, batch_size=1)
            heads.append({"model": name, "layer": critical, "head": head, "asr_intact": intact,
                          "asr": judge.attack_success_rate(config["task"], answers, labels)})
    return {"layers": rows, "heads": heads}, {}


ANALYSES = {"aggregation": (aggregation, "points"), "critical_layers": (critical_layers, "layers")}


def run_analysis(config: dict, deps: list) -> tuple[dict, dict]:
    """The analysis run ``{"analysis": kind, "of": locphylax_config}``; ``deps``: the Locphylax run
    and its attack run, loaded."""
    fn, _ = ANALYSES[config["analysis"]]
    if "state" in config:
        return fn(config["of"], *deps, state=config["state"])
    return fn(config["of"], *deps)


def analysis_table(run) -> pd.DataFrame:
    """A finished analysis run's rows, the figure's table."""
    return pd.DataFrame(run.metrics[ANALYSES[run.config["analysis"]][1]])
