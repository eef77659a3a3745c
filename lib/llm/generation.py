"""Batched greedy generation with a KV cache, prompts left-padded and sorted by length."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..devices import default_device
from ..progress import Bar


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False, stats: dict | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens dropped), in the prompts' order.

    ``stats``, if given, receives ``new_tokens`` and ``seconds``."""
    device = default_device()
    model.to(device).eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[str] = [""] * len(prompts)
    new_tokens, start = 0, time.perf_counter()
    bar = Bar(len(prompts), "generating", disable=not progress)
    try:
        for s in range(0, len(prompts), batch_size):
            idx = order[s:s + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
            cont = gen[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(cont[row], skip_special_tokens=True).strip()
            new_tokens += int((cont != tokenizer.pad_token_id).sum())
            bar.update(len(idx))
    finally:
        tokenizer.padding_side = side
        bar.close()
    if stats is not None:
        stats.update(new_tokens=new_tokens, seconds=time.perf_counter() - start)
    return out
