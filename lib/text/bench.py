"""Benchmark: fine-tuning speed of the text encoder, and NPoE against No defense.

    python -m moebackdoor.text.bench [--steps 12] [--repeats 2]

Measured in one process, interleaved (this machine's speed drifts minute to minute), on SST-2
training sentences with the quick profile's encoder (MiniLM-L6) and batch size:
- sentences/s of the library's step (length-bucketed batches, dynamic padding, bf16 autocast
  where this machine multiplies bf16 faster than fp32, fused AdamW, word-embedding gradients kept
  in one buffer) against a plain fp32 loop over the
  same batches (``torch.optim.AdamW`` with its defaults, each batch padded to its longest
  sentence), and against that plain loop padded to the authors' ``max_length`` 256;
- model FLOP utilisation: FLOPs per training sentence (counted at the data's mean length)
  x sentences/s, against the bf16 matmul rate measured in the same run;
- NPoE's training throughput (4 one-layer experts, the quick profile's gate of two layers, R-drop,
  the experts' and gate's last layer computing [CLS] alone; also with full last layers, with the
  example script's one-layer gate, and at BERT-base's shape, the paper's) relative to
  No defense, both with the library's step: against No defense as the authors' ``plain_train``
  runs it under the same ``--do_Rdrop`` flag (their timing code sits in both loops, so the paper's
  7.27 against 14.28 it/s most likely compares R-drop with R-drop), and against No defense
  without R-drop.
Results go to stdout and to ``<output>/tables/bench-npoe-training.csv``.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import machine
from ..devices import fast_precision
from .. import benchmarks
from ..benchmarks import matmul_rate
from .config import profile
from .data import load_split
from .models import DEFAULT_ENCODER, MAX_LENGTH, cls_only_last_layer, load_classifier, load_tokenizer
from .training import (PoE, Recipe, Tokenized, bucketed_batches, plain_batches, train_classifier, train_poe,
                       training_loss)

BATCH = 16
GATE_LAYERS = profile("quick")["experts"]["gate_layers"]  # the chapter's NPoE
PAPER_GATE_LAYERS = profile("paper")["experts"]["gate_layers"]  # the authors' example script
CLS_ONLY = profile("quick")["experts"]["cls_only"]  # the chapter's experts and gate


def _model(shape: str, num_labels: int = 2, num_hidden_layers: int | None = None, seed: int = 0,
           cls_only: bool = False):
    """The chapter's MiniLM (pretrained), or an encoder of BERT-base's shape (the paper's;
    random weights, which do not change the speed), cut to its first layers if asked, its last
    layer computing [CLS] alone if ``cls_only``."""
    if shape == "minilm":
        return load_classifier(DEFAULT_ENCODER, num_labels=num_labels, num_hidden_layers=num_hidden_layers, seed=seed,
                               cls_only=cls_only)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(num_labels=num_labels)  # bert-base-uncased: 12 layers, 768 wide, 30,522 tokens
    if num_hidden_layers is not None:
        config.num_hidden_layers = num_hidden_layers
    model = BertForSequenceClassification(config)
    return cls_only_last_layer(model) if cls_only else model


def _data(tokenizer, n: int | None, max_length: int) -> Tokenized:
    train = load_split("sst2", "train")
    return Tokenized(tokenizer, train if n is None else train.subset(np.arange(n)), max_length)


def flops_per_sentence(tokenizer, data: Tokenized, npoe: bool = False, gate_layers: int = GATE_LAYERS,
                       cls_only: bool = CLS_ONLY) -> float:
    """Training FLOPs (forward + backward) per sentence at the data's mean length: No defense's
    step, or NPoE's (R-drop's two passes of the main model, four one-layer experts, the gate)."""
    model = load_classifier(DEFAULT_ENCODER)
    length = int(round(data.lengths.mean()))
    ids = torch.full((BATCH, length), tokenizer.cls_token_id or 101)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    y = torch.zeros(BATCH, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        if npoe:
            experts = [_model("minilm", num_hidden_layers=1, seed=j, cls_only=cls_only) for j in range(4)]
            gate = _model("minilm", num_labels=4, num_hidden_layers=gate_layers, cls_only=cls_only)
            training_loss(model, experts, gate, batch, y, PoE(), experts + [gate]).backward()
        else:
            torch.nn.functional.cross_entropy(model(**batch).logits, y).backward()
    return counter.get_total_flops() / BATCH


def plain_loop(model, data: Tokenized, steps: int, pad_to: int | None = None, seed: int = 0) -> float:
    """The reference: the loop one writes without tuning (fp32, ``AdamW`` defaults), over the
    library's batches (the same length buckets, the same order); sentences/s."""
    rng = np.random.default_rng(seed)
    batches = bucketed_batches(data.lengths, BATCH, rng) if pad_to is None else plain_batches(len(data), BATCH, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    model.train()
    start = time.perf_counter()
    for idx in batches[:steps]:
        out = model(**data.batch(idx, pad_to)).logits
        loss = torch.nn.functional.cross_entropy(out, data.labels[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


def rate(data: Tokenized, steps: int, method: str = "library", pad_to: int | None = None,
         gate_layers: int = GATE_LAYERS, shape: str = "minilm", cls_only: bool = CLS_ONLY) -> float:
    """Sentences/s over ``steps`` steps, after 2 warm-up steps."""
    recipe = Recipe(epochs=10 ** 6, batch_size=BATCH)
    model = _model(shape)
    if method == "plain":
        plain_loop(model, data, 2, pad_to)
        return plain_loop(model, data, steps, pad_to, seed=1)
    if method in ("library", "rdrop"):  # "rdrop": No defense as the authors' plain_train runs it under --do_Rdrop
        alpha = PoE().rdrop_alpha if method == "rdrop" else 0.0
        train_classifier(model, data, recipe, progress=False, max_steps=2, rdrop_alpha=alpha)
        return train_classifier(model, data, recipe, progress=False, max_steps=steps,
                                rdrop_alpha=alpha)["sentences_per_second"]
    poe = PoE(train_experts=method == "npoe")  # "npoe_frozen": the authors' default, experts fixed after pre-training
    experts = [_model(shape, num_hidden_layers=1, seed=j, cls_only=cls_only) for j in range(4)]
    gate = _model(shape, num_labels=4, num_hidden_layers=gate_layers, cls_only=cls_only)
    train_poe(model, experts, gate, data, recipe, poe, progress=False, max_steps=2)
    return train_poe(model, experts, gate, data, recipe, poe, progress=False, max_steps=steps)["sentences_per_second"]


def run_benchmark(steps: int = 12, repeats: int = 2, n: int | None = None, max_length: int = 64) -> pd.DataFrame:
    """``n``: the training sentences batches are drawn from (None: all of SST-2's, as the chapter
    trains on, so that the word embeddings hold the chapter's vocabulary, CompactVocabulary)."""
    tokenizer = load_tokenizer(DEFAULT_ENCODER)
    data = _data(tokenizer, n, max_length)
    data256 = _data(tokenizer, n, MAX_LENGTH)
    flops = flops_per_sentence(tokenizer, data)
    npoe_flops = flops_per_sentence(tokenizer, data, npoe=True)
    npoe_flops1 = flops_per_sentence(tokenizer, data, npoe=True, gate_layers=1)
    full_flops = flops_per_sentence(tokenizer, data, npoe=True, cls_only=False)
    lib, plain, padded, npoe, frozen, bf16, rdrop, fp32, gate1, base_rdrop, base_npoe, full = ([] for _ in range(12))
    for _ in range(repeats):  # interleaved, so drift hits all alike
        bf16.append(matmul_rate(torch.bfloat16))
        fp32.append(matmul_rate(torch.float32))
        lib.append(rate(data, steps))
        plain.append(rate(data, steps, "plain"))
        padded.append(rate(data256, max(3, steps // 4), "plain", pad_to=MAX_LENGTH))  # slow
        rdrop.append(rate(data, steps, method="rdrop"))
        npoe.append(rate(data, steps, method="npoe"))
        frozen.append(rate(data, steps, method="npoe_frozen"))
        full.append(rate(data, steps, method="npoe", cls_only=False))
        gate1.append(rate(data, steps, method="npoe", gate_layers=1))
        base_steps = max(3, steps // 3)  # BERT-base is about 8x the FLOPs
        base_rdrop.append(rate(data, base_steps, method="rdrop", shape="bert-base"))
        base_npoe.append(rate(data, base_steps, method="npoe", gate_layers=PAPER_GATE_LAYERS, shape="bert-base"))
    lib_r, plain_r, padded_r, npoe_r, frozen_r, bf16_r, rdrop_r, fp32_r, gate1_r, base_rdrop_r, base_npoe_r, full_r = map(
        statistics.median, (lib, plain, padded, npoe, frozen, bf16, rdrop, fp32, gate1, base_rdrop, base_npoe, full))
    last = "[CLS]-only last layers" if CLS_ONLY else "full last layers"
    rows = [
        (f"library step (bucketed, dynamic padding, {fast_precision()}), sentences/s", lib_r, ""),
        ("plain fp32 loop (AdamW defaults), same batches, sentences/s", plain_r, ""),
        ("speed-up, library / plain fp32", lib_r / plain_r, "target >= 1.5"),
        ("plain fp32 loop padded to 256 tokens, sentences/s", padded_r, ""),
        ("speed-up, library / padded to 256", lib_r / padded_r, ""),
        ("training GFLOP per sentence (mean length)", flops / 1e9, ""),
        ("matmul rate bf16, GFLOP/s", bf16_r / 1e9, ""),
        ("matmul rate fp32, GFLOP/s", fp32_r / 1e9, ""),
        ("model FLOP utilisation vs bf16 matmul, %", 100 * flops * lib_r / bf16_r, ""),
        ("model FLOP utilisation vs the faster matmul, %", 100 * flops * lib_r / max(bf16_r, fp32_r), ""),
        (f"NPoE (4 experts, {GATE_LAYERS}-layer gate, {last}, R-drop: the chapter's), sentences/s", npoe_r, ""),
        ("No defense with R-drop (the authors' plain_train under --do_Rdrop), sentences/s", rdrop_r, ""),
        ("NPoE / No defense with R-drop (as the authors time both)", npoe_r / rdrop_r, "target >= 0.7 (paper 0.51)"),
        ("NPoE / No defense without R-drop", npoe_r / lib_r, ""),
        ("NPoE training FLOPs / No defense's (the compute-bound ceiling is its inverse)", npoe_flops / flops, ""),
        ("NPoE with full last layers in experts and gate, sentences/s", full_r, ""),
        ("NPoE with full last layers / No defense with R-drop", full_r / rdrop_r, ""),
        ("NPoE with full last layers: training FLOPs / No defense's", full_flops / flops, ""),
        ("NPoE, experts fixed after pre-training (the authors' default), sentences/s", frozen_r, ""),
        ("NPoE with fixed experts / No defense with R-drop", frozen_r / rdrop_r, ""),
        ("NPoE with a one-layer gate (the example script), sentences/s", gate1_r, ""),
        ("NPoE with a one-layer gate / No defense with R-drop", gate1_r / rdrop_r, ""),
        ("NPoE (one-layer gate) training FLOPs / No defense's", npoe_flops1 / flops, ""),
        ("BERT-base shape (the paper's encoder): No defense with R-drop, sentences/s", base_rdrop_r, ""),
        (f"BERT-base shape: NPoE ({PAPER_GATE_LAYERS}-layer gate as `paper`), sentences/s", base_npoe_r, ""),
        ("BERT-base shape: NPoE / No defense with R-drop", base_npoe_r / base_rdrop_r, "paper 0.51"),
    ]
    return pd.DataFrame(rows, columns=["measure", "value", "target"]).assign(
        encoder=DEFAULT_ENCODER, batch=BATCH, max_length=max_length, mean_tokens=float(data.lengths.mean()),
        steps=steps, repeats=repeats, threads=torch.get_num_threads(), machine=machine.text(),
        measured_at=time.strftime("%Y-%m-%d %H:%M"))


def main(argv=None):
    benchmarks.main("python -m moebackdoor.text.bench", run_benchmark, "bench-npoe-training", 12, argv, width=70)


if __name__ == "__main__":
    main()
