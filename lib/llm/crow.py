"""CROW (Min et al., 2025): fine-tune on clean data so that hidden states stay consistent across
adjacent layers even under a small adversarial perturbation of the input embeddings.

    L = L_answer(x) + weight * C(e + eps * sign(grad_e C(e))),
    C(e) = mean over layer pairs (l, l+1) and tokens of (1 - cos(h_l, h_{l+1})),

``e`` the input embeddings, ``h_l`` the hidden states (with the given embeddings; ``h_0`` the
embeddings, ``h_L`` the final layer's output after the last norm). ``eps`` 0.1 and ``weight`` 5.5
are BackdoorLLM's DefenseBox defaults.

The layer pairs (``layers``): ``"defensebox"``, BackdoorLLM's DefenseBox, pairs
``hidden_states[1:-2]`` with ``hidden_states[2:-1]``: every decoder layer's output with the next,
leaving out the normed final state; ``"all"`` (this book before) also pairs the last decoder
layer's output with the normed final state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .training import answer_loss, causal_lm

DEFAULTS = {"eps": 0.1, "weight": 5.5}
LAYERS = ("defensebox", "all")


def layer_pairs(hidden_states, layers: str = "defensebox") -> list[tuple]:
    """The (h_l, h_{l+1}) pairs the consistency term compares (see the module's docstring)."""
    if layers == "defensebox":
        if len(hidden_states) < 4:
            raise ValueError(f"CROW's DefenseBox pairs need at least 3 decoder layers; this model has "
                             f"{len(hidden_states) - 1} (crow_layers='all' also pairs the normed final state)")
        return list(zip(hidden_states[1:-2], hidden_states[2:-1]))
    if layers == "all":
        return list(zip(hidden_states[1:-1], hidden_states[2:]))
    raise ValueError(f"unknown CROW layers {layers!r}; expected one of {LAYERS}")


def consistency(hidden_states, mask: torch.Tensor, layers: str = "defensebox") -> torch.Tensor:
    """Mean ``1 - cos`` between adjacent layers' hidden states over the non-padding tokens."""
    m = mask.bool()
    terms = [1 - F.cosine_similarity(a[m].float(), b[m].float(), dim=-1).mean()
             for a, b in layer_pairs(hidden_states, layers)]
    return torch.stack(terms).mean()


class CrowLoss:
    """``loss_fn`` for :func:`training.train_sft`."""

    def __init__(self, eps: float = DEFAULTS["eps"], weight: float = DEFAULTS["weight"], layers: str = "all"):
        self.eps, self.weight, self.layers = float(eps), float(weight), layers

    def __call__(self, model, batch: dict):
        lm = causal_lm(model)
        mask = batch["attention_mask"]
        emb = lm.get_input_embeddings()(batch["input_ids"]).detach()
        probe = emb.clone().requires_grad_(True)
        hs = lm.model(inputs_embeds=probe, attention_mask=mask, output_hidden_states=True).hidden_states
        grad, = torch.autograd.grad(consistency(hs, mask, self.layers), probe)
        adv = emb + self.eps * grad.sign()
        hs = lm.model(inputs_embeds=adv, attention_mask=mask, output_hidden_states=True).hidden_states
        cons = consistency(hs, mask, self.layers)
        ans = answer_loss(model, batch)
        return ans + self.weight * cons, {"answer": float(ans.detach()), "consistency": float(cons.detach())}
