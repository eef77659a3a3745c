"""Benchmark: training speed of the pMoE model at the quick width.

    python -m moebackdoor.vision.bench [--width 2] [--steps 40] [--repeats 3]

Measures, in one process and interleaved (this machine's speed drifts minute to minute):
- images/s of the library's training step (bf16 autocast + channels-last) and of a plain
  fp32 eager loop of the same model, and their ratio;
- model FLOP utilisation: FLOPs per training image (counted) x images/s, against the bf16
  matmul rate measured in the same run;
- peak resident memory of a quick-profile training run (data loading, poisoning, training,
  evaluation) in a subprocess.
Results go to stdout and to ``<output>/tables/bench-pmoe-training.csv``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import machine
from ..benchmarks import matmul_rate
from ..reporting import save_table
from .models import PMoEWRN
from .training import Recipe, train


def training_flops_per_image(width: int, batch: int = 128) -> float:
    """FLOPs of one forward and backward pass, per image."""
    model = PMoEWRN(10, width=width)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def training_rate(width: int, steps: int, fast: bool, batch: int = 128) -> float:
    """Images/s of the library's ``train`` over ``steps`` steps (after 3 warm-up steps)."""
    torch.manual_seed(0)
    x, y = torch.rand(batch * 8, 3, 32, 32), torch.randint(0, 10, (batch * 8,))
    model = PMoEWRN(10, width=width)
    recipe = Recipe(epochs=10 ** 6, batch_size=batch, momentum=0.9, schedule="constant")
    train(model, x, y, recipe, fast=fast, progress=False, max_steps=3)
    return train(model, x, y, recipe, fast=fast, progress=False, max_steps=steps)["images_per_second"]


def quick_run_probe(steps: int) -> None:
    """A quick-profile CIFAR-10 run cut to ``steps`` steps; prints its peak memory (bytes)."""
    from .attacks import attack_config, run_attack

    run_attack(attack_config("quick", "cifar10", "square", 0.02, seed=0), max_steps=steps)
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def peak_memory_of_quick_run(steps: int) -> float:
    out = subprocess.run([sys.executable, "-c",
                          f"from moebackdoor.vision.bench import quick_run_probe; quick_run_probe({steps})"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_bytes"]


def run_benchmark(width: int = 2, steps: int = 40, repeats: int = 3, memory_steps: int = 30) -> pd.DataFrame:
    flops = training_flops_per_image(width)
    fast, plain, bf16 = [], [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        bf16.append(matmul_rate(torch.bfloat16))
        fast.append(training_rate(width, steps, fast=True))
        plain.append(training_rate(width, steps, fast=False))
    fp32 = matmul_rate(torch.float32)
    fast_ips, plain_ips, bf16_rate = map(statistics.median, (fast, plain, bf16))
    peak = peak_memory_of_quick_run(memory_steps) if memory_steps else float("nan")
    rows = [
        ("library step (bf16 autocast + channels-last), images/s", fast_ips, ""),
        ("plain fp32 eager loop, images/s", plain_ips, ""),
        ("speed-up, library / plain", fast_ips / plain_ips, "target >= 2"),
        ("training GFLOP per image (forward + backward)", flops / 1e9, ""),
        ("matmul rate bf16, GFLOP/s", bf16_rate / 1e9, ""),
        ("matmul rate fp32, GFLOP/s", fp32 / 1e9, ""),
        ("model FLOP utilisation vs bf16 matmul, %", 100 * flops * fast_ips / bf16_rate, "target >= 30"),
        ("peak memory of a quick training run, GiB", peak / 2 ** 30, "target <= 4"),
    ]
    return pd.DataFrame(rows, columns=["measure", "value", "target"]).assign(
        width=width, steps=steps, repeats=repeats, threads=torch.get_num_threads(),
        machine=machine.text(), measured_at=time.strftime("%Y-%m-%d %H:%M"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m moebackdoor.vision.bench")
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=30)
    args = parser.parse_args(argv)
    df = run_benchmark(args.width, args.steps, args.repeats, args.memory_steps)
    with pd.option_context("display.width", 120, "display.max_colwidth", 70):
        print(df[["measure", "value", "target"]].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("written to", save_table(df, "bench-pmoe-training"))


if __name__ == "__main__":
    main()
