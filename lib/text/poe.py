"""Product-of-experts losses (NPoE, DPoE), R-drop, and the pseudo-dev rule, as pure functions.

NPoE (Graf et al. 2024): k trigger-only experts b_j and a gate g with top-k routing form
q = sum_j g_j log b_j; the joint prediction is p = softmax(log r + beta q), r the main model,
and the loss is -log p_y. The main model alone predicts at test time. R-drop adds
alpha * symKL between two dropout passes of the main model. DPoE (Liu et al. 2024) is the
one-expert case, with optional reweighting of confident-shortcut samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GATE_MASKS = ("inf", "zero")  # the paper's intent (-inf), the authors' code (multiply by 0)


def gate_weights(gate_logits: torch.Tensor, top_k: int = -1, mask: str = "inf") -> torch.Tensor:
    """Softmax over the top-k gate logits per sample ([B, k] -> [B, k], rows sum to 1).

    ``mask="inf"`` drops the other experts (their weight is 0); ``mask="zero"`` is the authors'
    code, which multiplies the other logits by 0, so they keep weight exp(0) in the softmax.
    ``top_k=-1`` routes to every expert.
    """
    if mask not in GATE_MASKS:
        raise ValueError(f"mask must be one of {GATE_MASKS}, got {mask!r}")
    k = gate_logits.shape[-1]
    if top_k == -1 or top_k >= k:
        return torch.softmax(gate_logits, -1)
    if not 1 <= top_k:
        raise ValueError(f"top_k must be -1 or in [1, {k}], got {top_k}")
    keep = torch.zeros_like(gate_logits, dtype=torch.bool)
    keep.scatter_(-1, gate_logits.topk(top_k, -1).indices, True)
    masked = gate_logits.masked_fill(~keep, float("-inf")) if mask == "inf" else gate_logits * keep
    return torch.softmax(masked, -1)


def expert_mixture(expert_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """q = sum_j g_j log softmax(b_j): expert logits [k, B, C], gate weights [B, k] -> [B, C]."""
    return torch.einsum("kbc,bk->bc", F.log_softmax(expert_logits.float(), -1), weights.float())


def joint_log_probs(main_logits: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """log softmax(log r + beta q)."""
    return F.log_softmax(F.log_softmax(main_logits.float(), -1) + beta * q, -1)


def poe_loss(main_logits, expert_logits, weights, labels, beta: float = 1.0, sample_weights=None):
    """NPoE's loss -log p_y (mean); with one expert and weights 1 it is DPoE's."""
    nll = F.nll_loss(joint_log_probs(main_logits, expert_mixture(expert_logits, weights), beta),
                     labels, reduction="none")
    if sample_weights is not None:
        nll = nll * sample_weights
    return nll.mean()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """R-drop's term: (KL(a||b) + KL(b||a)) / 2, each the mean over elements (as the authors)."""
    la, lb = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    return 0.5 * (F.kl_div(lb, la, log_target=True, reduction="none").mean()
                  + F.kl_div(la, lb, log_target=True, reduction="none").mean())


def dpoe_weights(expert_logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """DPoE's denoising: weight 1 - p_b(y) where the expert is confident (p_b(y) > threshold), else 1."""
    p = torch.softmax(expert_logits.float(), -1).gather(-1, labels[:, None])[:, 0]
    return torch.where(p > threshold, 1 - p, torch.ones_like(p)).detach()


def pseudo_dev_mask(main_probs: torch.Tensor, mixture_probs: torch.Tensor, labels: torch.Tensor,
                    main_below: float = 0.6, experts_above: float = 0.8) -> torch.Tensor:
    """NPoE's pseudo-poisoned samples: r_y < R (the main model doubts the label) and
    q_y > B (the trigger-only experts are sure of it). Defaults R 0.6, B 0.8 (the authors')."""
    r = main_probs.gather(-1, labels[:, None])[:, 0]
    q = mixture_probs.gather(-1, labels[:, None])[:, 0]
    return (r < main_below) & (q > experts_above)


def arithmetic_mixture(expert_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j g_j b_j: the experts' probabilities mixed arithmetically ([k, B, C], [B, k] -> [B, C]),
    as the authors' code computes the experts' confidence for its pseudo-dev set."""
    return torch.einsum("kbc,bk->bc", expert_probs.float(), weights.float())


def pseudo_dev_mask_code(main_logits: torch.Tensor, expert_probs: torch.Tensor, labels: torch.Tensor,
                         main_below: float = 0.6, experts_above: float = 0.8) -> torch.Tensor:
    """The authors' code's pseudo-poisoned samples: the main model's *raw logit* at the label
    below R and the arithmetic mixture of the experts' probabilities (:func:`arithmetic_mixture`)
    at the label at least B (their ``thre_main_high`` 0.6, ``pseudo_dev_thre_high`` 0.8)."""
    r = main_logits.float().gather(-1, labels[:, None])[:, 0]
    q = expert_probs.gather(-1, labels[:, None])[:, 0]
    return (r < main_below) & (q >= experts_above)


# the pseudo-dev rules: "paper" (our reading of the paper's formula: probabilities, the product
# mixture) and "code" (the authors' code: the main model's raw logit, the arithmetic mixture)
PSEUDO_DEV_RULES = ("code", "paper")
# the authors' clean-small accuracy cut-offs per dataset (their code's ``detect`` record; the
# "paper" rule's), the cut-off of their code's "good" configurations (the "code" rule's), and
# the detected-rate window
CLEAN_SMALL_CUTOFF = {"sst2": 85.0, "offenseval": 80.0, "trec": 90.0, "hatespeech": 80.0}
CODE_GOOD_CUTOFF = 80.0
DETECTED_WINDOW = (0.3, 0.5)


def select_by_pseudo_dev(candidates: list[dict], dataset: str, rule: str = "paper") -> int:
    """The index of the configuration NPoE's pseudo-dev rule picks, from each candidate's
    ``detected_rate`` (the share of training samples flagged as pseudo-poisoned) and
    ``clean_small_acc`` (the main model on 100 clean sentences, %): no test data.

    ``rule="paper"`` reads the signals flagged by :func:`pseudo_dev_mask` and uses the dataset's
    cut-off; ``rule="code"`` reads each candidate's ``code`` signals (:func:`pseudo_dev_mask_code`)
    and the authors' "good" cut-off, 80 %. A candidate is *good* if its clean-small accuracy
    passes the cut-off and its detected rate lies in (0.3, 0.5), the authors' rule. Among good
    ones the lowest ``pseudo_asr`` (the main model's agreement with the labels of the flagged
    samples) wins; with none good, the candidate whose detected rate lies nearest the window
    among those passing the cut-off (or, with none passing, the most accurate one).
    """
    if rule not in PSEUDO_DEV_RULES:
        raise ValueError(f"rule must be one of {PSEUDO_DEV_RULES}, got {rule!r}")
    if not candidates:
        raise ValueError("no candidate to select from")
    if rule == "code":
        if any("code" not in c for c in candidates):
            raise ValueError("a candidate lacks the code rule's signals (trained before they were recorded: retrain it)")
        candidates = [c["code"] | {"clean_small_acc": c["clean_small_acc"]} for c in candidates]
    cutoff = CODE_GOOD_CUTOFF if rule == "code" else CLEAN_SMALL_CUTOFF.get(dataset, 80.0)
    lo, hi = DETECTED_WINDOW
    passing = [i for i, c in enumerate(candidates) if c["clean_small_acc"] > cutoff]
    good = [i for i in passing if lo < candidates[i]["detected_rate"] < hi
            and (candidates[i].get("pseudo_asr") is not None)]
    if good:
        return min(good, key=lambda i: (candidates[i]["pseudo_asr"], i))
    if passing:
        distance = lambda d: max(lo - d, d - hi, 0.0)
        return min(passing, key=lambda i: (distance(candidates[i]["detected_rate"]), i))
    return max(range(len(candidates)), key=lambda i: (candidates[i]["clean_small_acc"], -i))
