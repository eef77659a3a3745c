"""Locphylax (Backdoor Collapse): inject two known backdoors with a clustering loss, then recover.

Stage 1, exploratory injection. With the defender's own triggers t1, t2 (never the attacker's),
each with its own target answer, fine-tune the suspect model on clean data D_c plus D_t1, D_t2
(clean instructions carrying t1 or t2, answered with that trigger's target) with

    L = L_inj + alpha * L_cluster,
    L_cluster = sum_k mean_{i in I_k} ||h_i - mu_k||^2  +  mean_{i in I_1} ||h_i - mu_2||^2
                + mean_{j in I_2} ||h_j - mu_1||^2,

``h`` the final hidden state (after the last norm) of each sample, ``mu_k`` the in-batch
centroid of trigger k. Which token's state the paper clusters is not known. By default
(``position="answer_end"``) it is the sequence's last token, after the answer, as in the unofficial
reimplementation (its "last valid token" of prompt + response); ``"prompt_end"`` takes the last
prompt token, the state that chooses the answer's first token. The first sum draws each known trigger's samples together; the cross terms
(``cross=True``) draw the two triggers' clusters onto each other, so that the backdoor
representations aggregate (the paper's "collapse"). The cross terms' exact form is an
unofficial reimplementation's, not verified against the paper. ``alpha`` follows the paper's
rule: ``10 ** (floor(log10 L_inj) - floor(log10 L_cluster))`` on the initial losses.

Stage 2, recovery fine-tuning: clean data plus the known-trigger instructions paired with their
clean answers (one loss over the mixed set).

Nothing here sees the attacker's trigger, poisoned data or test ASR.
"""
from __future__ import annotations

import math

import torch

# the defender's triggers: phrase, placement, and the answer it is taught (with ``known_targets="labels"``,
# on a classification task, a class label instead)
KNOWN_TRIGGERS = (("Make life better", "random", "Aha! Life is better."),
                  ("Ahihihihihi", "prefix", "Ahihihihihi!"))


def alpha_rule(injection_loss: float, cluster_loss: float) -> float:
    """The paper's alpha: matches the orders of magnitude of the two initial losses."""
    if injection_loss <= 0 or cluster_loss <= 0:
        raise ValueError(f"alpha needs positive initial losses, got {injection_loss} and {cluster_loss}")
    return 10.0 ** (math.floor(math.log10(injection_loss)) - math.floor(math.log10(cluster_loss)))


def cluster_loss(h: torch.Tensor, groups: torch.Tensor, cross: bool = True, normalize: bool = False) -> torch.Tensor:
    """The clustering loss over the rows of ``h`` whose group is 0 (t1) or 1 (t2); others are ignored.

    A term whose group is absent from the batch is left out (0 when neither is present).
    ``normalize``: on unit-length states (a scale-free variant, this book's choice)."""
    if normalize:
        h = torch.nn.functional.normalize(h, dim=-1)
    loss = h.new_zeros(())
    centroids = {}
    for k in (0, 1):
        hk = h[groups == k]
        if len(hk):
            centroids[k] = hk.mean(0)
            loss = loss + ((hk - centroids[k]) ** 2).sum(-1).mean()
    if cross and len(centroids) == 2:
        loss = loss + ((h[groups == 0] - centroids[1]) ** 2).sum(-1).mean()
        loss = loss + ((h[groups == 1] - centroids[0]) ** 2).sum(-1).mean()
    return loss


class InjectionLoss:
    """Stage 1's ``loss_fn`` for :func:`training.train_sft`: ``L_inj + alpha * L_cluster``."""

    def __init__(self, alpha: float, cross: bool = True, normalize: bool = False, position: str = "answer_end"):
        self.alpha, self.cross, self.normalize, self.position = float(alpha), cross, normalize, position

    def __call__(self, model, batch: dict):
        from .training import answer_loss

        inj, h = answer_loss(model, batch, return_hidden=True, position=self.position)
        lc = cluster_loss(h, batch["groups"], self.cross, self.normalize)
        return inj + self.alpha * lc, {"injection": float(inj.detach()), "cluster": float(lc.detach())}


@torch.no_grad()
def initial_losses(model, data, batch_size: int = 8, n_batches: int = 4, seed: int = 0,
                   normalize: bool = False, position: str = "answer_end", cross: bool = True) -> dict:
    """L_inj and L_cluster of the suspect model before injection, averaged over a few random
    batches; L_cluster as the run's loss computes it (with its cross terms only when it has them)."""
    import numpy as np

    from ..devices import default_device
    from .training import answer_loss

    device = default_device()
    model.to(device).eval()
    order = np.random.default_rng(seed).permutation(len(data))
    inj, clu = [], []
    for b in range(min(n_batches, -(-len(data) // batch_size))):
        idx = order[b * batch_size:(b + 1) * batch_size]
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        loss, h = answer_loss(model, batch, return_hidden=True, position=position)
        inj.append(float(loss))
        clu.append(float(cluster_loss(h, batch["groups"], cross=cross, normalize=normalize)))
    return {"injection": float(np.mean(inj)), "cluster": float(np.mean(clu))}
