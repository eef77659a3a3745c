"""What chapter 3 measures on a trained run: CACC and ASR on the test sets (:func:`evaluate`),
NPoE's model-selection signals on the training set (:func:`pseudo_dev`), and where NPoE's gate
sends each kind of training row (:func:`routing`, analysis for the page).

A mix's overall ASR weighs the triggers' ASRs by their poison rates (the authors' test mixtures
hold the triggers in those proportions).
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import accuracy, attack_success_rate
from . import poe
from .models import HiddenGate, TextClassifier
from .run_data import dev_set, evaluation_sets
from .training import PoE, Tokenized, autocast, gate_logits


def evaluate(classifier: TextClassifier, config: dict, filter_fn=None) -> dict:
    """CACC on the clean test set, ASR per trigger and overall (rate-weighted), in percent.

    ``filter_fn(sentences) -> (sentences, keep)`` is a test-time defense: it may rewrite the
    sentences (ONION) and reject some (``keep`` False: STRIP, RAP); a rejected sentence
    counts as neither correct nor attacked. ``config["n_test"]`` (smoke) cuts each test set."""
    def predictions(sentences):
        if filter_fn is None:
            return classifier.predict(sentences), np.ones(len(sentences), dtype=bool)
        sentences, keep = filter_fn(sentences)
        return classifier.predict(sentences), np.asarray(keep)

    test, triggered = evaluation_sets(config, config.get("n_test"))
    pred, keep = predictions(test.sentences)
    metrics = {"cacc": accuracy(np.where(keep, pred, -1), test.labels), "asr_by_trigger": {}}
    for trigger, t in triggered.items():
        pred, keep = predictions(t.sentences)
        metrics["asr_by_trigger"][trigger] = attack_success_rate(np.where(keep, pred, -1), t.labels,
                                                                 config["target"])
    rates = config["rates"]
    metrics["asr"] = sum(metrics["asr_by_trigger"][t] * r for t, r in rates.items()) / sum(rates.values())
    return metrics


@torch.no_grad()
def pseudo_dev(config: dict, main, experts, gate, tokenizer, data: Tokenized, batch_size: int = 64):
    """NPoE's model-selection signals on the training set: the share flagged pseudo-poisoned
    (r_y < R and q_y > B) and the main model's agreement with their labels, both as we read the
    paper and (``code``) as the authors' code computes them, and the main model's accuracy on
    100 clean dev sentences; and the
    per-row outputs (main model, mixture, gate weights, each expert's probabilities) for :func:`routing`."""
    cfg = PoE(**config["poe"])
    logit_all, q_all, g_all, b_all = [], [], [], []
    order = np.argsort(data.lengths, kind="stable")  # similar lengths together: less padding
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        batch = data.batch(idx)
        with autocast(True, torch.device("cpu")):  # the training precision
            out = main(**batch, output_hidden_states=isinstance(gate, HiddenGate))
            weights = poe.gate_weights(gate_logits(gate, batch, out, len(idx)), cfg.top_k, cfg.gate_mask) \
                if gate is not None else torch.ones(len(idx), 1)
            expert_logits = torch.stack([e(**batch).logits for e in experts]).float()
        logit_all.append(out.logits.float())
        q_all.append(torch.softmax(poe.expert_mixture(expert_logits, weights), -1))
        g_all.append(weights)
        b_all.append(torch.softmax(expert_logits, -1))
    back = torch.as_tensor(np.argsort(order))  # rows back in the data's order
    logits, q = torch.cat(logit_all)[back], torch.cat(q_all)[back]
    r = torch.softmax(logits, -1)
    gates, experts_p = torch.cat(g_all)[back], torch.cat(b_all, 1)[:, back]
    flagged = poe.pseudo_dev_mask(r, q, data.labels)
    agree = r.argmax(-1) == data.labels
    signals = {"detected_rate": float(flagged.float().mean()),
               "pseudo_asr": float(agree[flagged].float().mean()) if flagged.any() else 0.0,
               "clean_small_acc": clean_small_accuracy(config, main, tokenizer),
               "code": code_signals(config, logits, experts_p, gates, agree, data.labels)}
    return signals, {"main": r, "mixture": q, "gate": gates, "experts": experts_p}


def code_signals(config: dict, logits, experts_p, gates, agree, labels) -> dict:
    """The authors' code's signals: raw logit, arithmetic mixture; its pseudo-ASR needs more
    flagged rows than 3 % of the batches (else -1 there, None here), and it also reports a pseudo
    clean accuracy on rows the experts doubt (< 0.7) and the main model backs (raw logit > 0.8)."""
    mix = poe.arithmetic_mixture(experts_p, gates)
    flagged = poe.pseudo_dev_mask_code(logits, mix, labels)
    rows = labels[:, None]
    trusted = (mix.gather(-1, rows)[:, 0] < 0.7) & (logits.gather(-1, rows)[:, 0] > 0.8)
    n_batches = -(-len(labels) // config["recipe"]["batch_size"])
    return {"detected_rate": float(flagged.float().mean()),
            "pseudo_asr": float(agree[flagged].float().mean()) if int(flagged.sum()) > int(0.03 * n_batches) else None,
            "pseudo_acc": float(agree[trusted].float().mean()) if int(trusted.sum()) > int(0.1 * n_batches) else None}


@torch.no_grad()
def expert_probs(experts, data: Tokenized, batch_size: int = 64) -> torch.Tensor:
    """Each expert's class probabilities on every row of ``data`` ([k, N, C]), in eval mode and the
    training precision (the experts as they stand: after pre-training, before joint training)."""
    modes = [e.training for e in experts]
    out = []
    order = np.argsort(data.lengths, kind="stable")
    try:
        for e in experts:
            e.eval()
        for start in range(0, len(data), batch_size):
            batch = data.batch(order[start:start + batch_size])
            with autocast(True, torch.device("cpu")):
                out.append(torch.stack([torch.softmax(e(**batch).logits.float(), -1) for e in experts]))
    finally:
        for e, m in zip(experts, modes):
            e.train(m)
    return torch.cat(out, 1)[:, torch.as_tensor(np.argsort(order))]


def expert_target_probs(experts_p: torch.Tensor, poison_idx: dict, clean_labels: np.ndarray, target: int) -> dict:
    """Each expert's mean probability of the target on each kind of training row: the rows of each
    trigger whose true label is not the target, and the clean rows of the other classes
    (``clean_other``) and of the target class (``clean_target``). An expert that learned its
    trigger is high on its trigger's rows and low on both clean groups; one that learned the
    class is high on ``clean_target``; one that learned the topic or nothing is flat. ``experts_p``:
    [k, N, C] probabilities. Analysis for the page: nothing in training or selection reads it."""
    clean_labels = np.asarray(clean_labels)
    poisoned = np.concatenate([np.asarray(i, dtype=int) for i in poison_idx.values()] or [np.zeros(0, int)])
    is_clean = np.ones(len(clean_labels), dtype=bool)
    is_clean[poisoned] = False
    groups = {t: np.asarray(i, dtype=int)[clean_labels[np.asarray(i, dtype=int)] != target]
              for t, i in poison_idx.items()}
    groups["clean_other"] = np.flatnonzero(is_clean & (clean_labels != target))
    groups["clean_target"] = np.flatnonzero(is_clean & (clean_labels == target))
    return {name: {"n": len(rows), "p_target": experts_p[:, torch.as_tensor(rows), target].float().mean(1).tolist()}
            for name, rows in groups.items() if len(rows)}


def clean_small_accuracy(config: dict, main, tokenizer) -> float:
    """The main model's accuracy on 100 clean dev sentences (the pseudo-dev rule's cut-off)."""
    small = dev_set(config["dataset"], 100)
    clf = TextClassifier(main, tokenizer, config["recipe"]["max_length"])
    return accuracy(clf.predict(small.sentences), small.labels)


def routing(outputs: dict, poison_idx: dict, clean_labels: np.ndarray, target: int) -> dict:
    """Where the gate sends each kind of training row, and who votes for the target there.

    For the rows of each trigger whose true label is not the target, and for the clean
    non-target rows: the mean gate weight of each expert, each expert's and the mixture's mean
    probability of the target, and the main model's. An analysis for the page (it knows which
    rows were poisoned); nothing in training or model selection reads it."""
    poisoned = np.concatenate([np.asarray(i, dtype=int) for i in poison_idx.values()] or [np.zeros(0, int)])
    is_clean = np.ones(len(clean_labels), dtype=bool)
    is_clean[poisoned] = False
    groups = {t: np.asarray(i, dtype=int)[clean_labels[i] != target] for t, i in poison_idx.items()}
    groups["clean"] = np.flatnonzero(is_clean & (clean_labels != target))
    out = {}
    for name, rows in groups.items():
        if len(rows) == 0:
            continue
        rows = torch.as_tensor(rows)
        out[name] = {"n": len(rows), "gate": outputs["gate"][rows].mean(0).tolist(),
                     "experts_p_target": outputs["experts"][:, rows, target].mean(1).tolist(),
                     "mixture_p_target": float(outputs["mixture"][rows, target].mean()),
                     "main_p_target": float(outputs["main"][rows, target].mean())}
    return out
