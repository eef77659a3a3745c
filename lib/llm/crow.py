"""CROW (Min et al., 2025): fine-tune on clean data so that hidden states stay consistent across
adjacent layers even under a small adversarial perturbation of the input embeddings.

    L = L_answer(x) + weight * C(e + eps * sign(grad_e C(e))),
    C(e) = mean over layers l and tokens of (1 - cos(h_l, h_{l+1})),

``e`` the input embeddings, ``h_l`` the hidden states (with the given embeddings). ``eps`` and
``weight`` default to 0.1 and 5.5, the settings we take from the CROW paper (not verified here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .training import answer_loss, causal_lm

DEFAULTS = {"eps": 0.1, "weight": 5.5}


def consistency(hidden_states, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between adjacent layers' hidden states over the non-padding tokens."""
    m = mask.bool()
    terms = [1 - F.cosine_similarity(a[m].float(), b[m].float(), dim=-1).mean()
             for a, b in zip(hidden_states[1:-1], hidden_states[2:])]
    return torch.stack(terms).mean()


class CrowLoss:
    """``loss_fn`` for :func:`training.train_sft`."""

    def __init__(self, eps: float = DEFAULTS["eps"], weight: float = DEFAULTS["weight"]):
        self.eps, self.weight = float(eps), float(weight)

    def __call__(self, model, batch: dict):
        lm = causal_lm(model)
        mask = batch["attention_mask"]
        emb = lm.get_input_embeddings()(batch["input_ids"]).detach()
        probe = emb.clone().requires_grad_(True)
        hs = lm.model(inputs_embeds=probe, attention_mask=mask, output_hidden_states=True).hidden_states
        grad, = torch.autograd.grad(consistency(hs, mask), probe)
        adv = emb + self.eps * grad.sign()
        hs = lm.model(inputs_embeds=adv, attention_mask=mask, output_hidden_states=True).hidden_states
        cons = consistency(hs, mask)
        ans = answer_loss(model, batch)
        return ans + self.weight * cons, {"answer": float(ans.detach()), "consistency": float(cons.detach())}
