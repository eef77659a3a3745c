"""Shared pieces of the benchmarks (``make bench``): this machine's matmul rate."""
from __future__ import annotations

import time

import torch


def matmul_rate(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of an n x n matmul in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def main(prog: str, run_benchmark, table_id: str, steps: int, argv=None, width: int = 70) -> None:
    """A bench's command line: ``--steps``, ``--repeats``; print the table and save it as ``table_id``."""
    import argparse

    import pandas as pd

    from .reporting import save_table

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    df = run_benchmark(args.steps, args.repeats)
    with pd.option_context("display.width", 120, "display.max_colwidth", width):
        print(df[["measure", "value", "target"]].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("written to", save_table(df, table_id))
