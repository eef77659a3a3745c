"""Unstructured pruning of a causal LM's decoder linear layers: magnitude or Wanda.

- ``magnitude``: in each linear layer, the weights of smallest ``|W|`` are set to 0;
- ``wanda`` (Sun et al., 2024): score ``|W_ij| * ||X_j||_2``, ``X_j`` the layer's j-th input over
  the calibration tokens (clean text), and each output row loses its lowest-scoring weights; the
  inputs of every layer measured once, on the unpruned model;
- ``wanda_layerwise``: the same score, decoder layer by decoder layer as locuslab/wanda's
  ``prune_wanda``: each layer's inputs are measured with the layers before it already pruned
  (the layer's own linears all measured before any of them is pruned).

``sparsity`` (default 0.5) is the share of each layer's weights removed. The LM head and
embeddings are kept.
"""
from __future__ import annotations

import torch
from torch import nn

from ..params import ParameterError, check_fraction
from .training import causal_lm

KINDS = ("wanda", "wanda_layerwise", "magnitude")


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    lm = causal_lm(model)
    return {name: m for name, m in lm.model.named_modules() if isinstance(m, nn.Linear)}


def decoder_layers(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """The decoder linear layers grouped by decoder layer, in order (``model.layers.<i>.``)."""
    groups: dict[int, dict[str, nn.Linear]] = {}
    for name, m in decoder_linears(model).items():
        parts = name.split(".")
        i = int(parts[parts.index("layers") + 1])
        groups.setdefault(i, {})[name] = m
    return [groups[i] for i in sorted(groups)]


class _Measured(Exception):
    """Raised to end a calibration pass once its layer is measured."""


@torch.no_grad()
def input_norms(model: nn.Module, batches, linears: dict[str, nn.Linear] | None = None,
                stop_early: bool = False) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` of each decoder linear layer's inputs (or of ``linears``) over the non-padding
    calibration tokens; ``stop_early``: each forward pass ends once the last of ``linears`` (in
    the order they run) has computed."""
    linears = decoder_linears(model) if linears is None else linears
    sq = {n: torch.zeros(m.in_features) for n, m in linears.items()}
    mask_box = {}

    def hook(name):
        def fn(module, args):
            x = args[0].float()
            keep = mask_box["mask"].reshape(-1).bool()
            sq[name] += (x.reshape(-1, x.shape[-1])[keep] ** 2).sum(0).cpu()
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    if stop_early:  # the layers after the last measured one need not run
        def stop(module, args, output):
            raise _Measured
        handles.append(list(linears.values())[-1].register_forward_hook(stop))
    try:
        lm = causal_lm(model).eval()
        for batch in batches:
            mask_box["mask"] = batch["attention_mask"]
            try:
                lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            except _Measured:
                pass
    finally:
        for h in handles:
            h.remove()
    return {n: v.sqrt() for n, v in sq.items()}


@torch.no_grad()
def prune(model: nn.Module, sparsity: float = 0.5, kind: str = "wanda", batches=None) -> dict:
    """Prune ``model`` in place; ``batches`` (clean calibration batches) are needed for Wanda."""
    check_fraction("sparsity", sparsity)
    if kind not in KINDS:
        raise ParameterError("pruning kind", f"one of {list(KINDS)}", kind)
    if kind.startswith("wanda") and batches is None:
        raise ValueError("Wanda needs calibration batches")
    removed, total = 0, 0
    if kind == "wanda_layerwise":  # measure a layer's inputs, prune it, then the next
        for layer in decoder_layers(model):
            norms = input_norms(model, batches, layer, stop_early=True)
            for name, m in layer.items():
                _wanda(m.weight, norms[name], sparsity)
                removed, total = removed + int((m.weight == 0).sum()), total + m.weight.numel()
        return {"kind": kind, "sparsity": sparsity, "zero_fraction": removed / max(1, total)}
    norms = input_norms(model, batches) if kind == "wanda" else None
    for name, m in decoder_linears(model).items():
        w = m.weight
        if kind == "wanda":
            _wanda(w, norms[name], sparsity)
        else:
            k = int(w.numel() * sparsity)
            if k:
                thresh = torch.kthvalue(w.abs().float().flatten().cpu(), k).values
                w.masked_fill_(w.abs() <= thresh.to(w.device), 0.0)
        removed += int((w == 0).sum())
        total += w.numel()
    return {"kind": kind, "sparsity": sparsity, "zero_fraction": removed / max(1, total)}


@torch.no_grad()
def _wanda(w: torch.Tensor, norm: torch.Tensor, sparsity: float) -> None:
    """Zero each output row's ``sparsity`` share of weights of lowest ``|W_ij| * ||X_j||``, in place."""
    score = w.abs().float() * norm.to(w.device)[None, :]
    k = int(w.shape[1] * sparsity)
    if k:
        idx = torch.topk(score, k, dim=1, largest=False).indices
        w.scatter_(1, idx, 0.0)
