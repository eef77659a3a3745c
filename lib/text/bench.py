"""Benchmark: fine-tuning speed of the text encoder, and NPoE against No defense.

    python -m moebackdoor.text.bench [--steps 12] [--repeats 2]

Measured in one process, interleaved (this machine's speed drifts minute to minute), on SST-2
training sentences with the quick profile's encoder (MiniLM-L6) and batch size:
- sentences/s of the library's step (length-bucketed batches, dynamic padding, bf16 autocast)
  against a plain fp32 loop over the same batches, and against a fp32 loop padded to the
  authors' ``max_length`` 256;
- model FLOP utilisation: FLOPs per training sentence (counted at the data's mean length)
  x sentences/s, against the bf16 matmul rate measured in the same run;
- NPoE's training throughput (4 one-layer experts, a one-layer gate, R-drop) relative to
  No defense, both with the library's step.
Results go to stdout and to ``<output>/tables/bench-npoe-training.csv``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import machine
from ..benchmarks import matmul_rate
from ..reporting import save_table
from .data import load_split
from .models import DEFAULT_ENCODER, MAX_LENGTH, load_classifier, load_tokenizer
from .training import PoE, Recipe, Tokenized, train_classifier, train_poe

BATCH = 16


def _data(tokenizer, n: int, max_length: int) -> Tokenized:
    return Tokenized(tokenizer, load_split("sst2", "train").subset(np.arange(n)), max_length)


def flops_per_sentence(tokenizer, data: Tokenized) -> float:
    """Training FLOPs (forward + backward) per sentence at the data's mean length."""
    model = load_classifier(DEFAULT_ENCODER)
    length = int(round(data.lengths.mean()))
    ids = torch.full((BATCH, length), tokenizer.cls_token_id or 101)
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.nn.functional.cross_entropy(out, torch.zeros(BATCH, dtype=torch.long)).backward()
    return counter.get_total_flops() / BATCH


def rate(data: Tokenized, steps: int, method: str = "plain", **kwargs) -> float:
    """Sentences/s over ``steps`` steps, after 2 warm-up steps."""
    recipe = Recipe(epochs=10 ** 6, batch_size=BATCH)
    model = load_classifier(DEFAULT_ENCODER)
    if method == "plain":
        train_classifier(model, data, recipe, progress=False, max_steps=2, **kwargs)
        return train_classifier(model, data, recipe, progress=False, max_steps=steps, **kwargs)["sentences_per_second"]
    experts = [load_classifier(DEFAULT_ENCODER, num_hidden_layers=1, seed=j) for j in range(4)]
    gate = load_classifier(DEFAULT_ENCODER, num_labels=4, num_hidden_layers=1)
    train_poe(model, experts, gate, data, recipe, PoE(), progress=False, max_steps=2)
    return train_poe(model, experts, gate, data, recipe, PoE(), progress=False, max_steps=steps)["sentences_per_second"]


def run_benchmark(steps: int = 12, repeats: int = 2, n: int = 2000, max_length: int = 64) -> pd.DataFrame:
    tokenizer = load_tokenizer(DEFAULT_ENCODER)
    data = _data(tokenizer, n, max_length)
    data256 = _data(tokenizer, n, MAX_LENGTH)
    flops = flops_per_sentence(tokenizer, data)
    lib, plain, padded, npoe, bf16 = [], [], [], [], []
    for _ in range(repeats):  # interleaved, so drift hits all alike
        bf16.append(matmul_rate(torch.bfloat16))
        lib.append(rate(data, steps, fast=True, bucket=True))
        plain.append(rate(data, steps, fast=False, bucket=True))
        padded.append(rate(data256, max(3, steps // 4), fast=False, pad_to=MAX_LENGTH, bucket=False))  # slow
        npoe.append(rate(data, steps, method="npoe"))
    lib_r, plain_r, padded_r, npoe_r, bf16_r = map(statistics.median, (lib, plain, padded, npoe, bf16))
    rows = [
        ("library step (bucketed, dynamic padding, bf16), sentences/s", lib_r, ""),
        ("plain fp32 loop, same batches, sentences/s", plain_r, ""),
        ("speed-up, library / plain fp32", lib_r / plain_r, "target >= 1.5"),
        ("fp32 loop padded to 256 tokens, sentences/s", padded_r, ""),
        ("speed-up, library / padded to 256", lib_r / padded_r, ""),
        ("training GFLOP per sentence (mean length)", flops / 1e9, ""),
        ("matmul rate bf16, GFLOP/s", bf16_r / 1e9, ""),
        ("model FLOP utilisation vs bf16 matmul, %", 100 * flops * lib_r / bf16_r, ""),
        ("NPoE (4 experts, gate, R-drop), sentences/s", npoe_r, ""),
        ("NPoE / No defense throughput", npoe_r / lib_r, "target >= 0.7 (paper 0.51)"),
    ]
    return pd.DataFrame(rows, columns=["measure", "value", "target"]).assign(
        encoder=DEFAULT_ENCODER, batch=BATCH, max_length=max_length, mean_tokens=float(data.lengths.mean()),
        steps=steps, repeats=repeats, threads=torch.get_num_threads(), machine=machine.text(),
        measured_at=time.strftime("%Y-%m-%d %H:%M"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m moebackdoor.text.bench")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    df = run_benchmark(args.steps, args.repeats)
    with pd.option_context("display.width", 120, "display.max_colwidth", 70):
        print(df[["measure", "value", "target"]].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("written to", save_table(df, "bench-npoe-training"))


if __name__ == "__main__":
    main()
