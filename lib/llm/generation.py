"""Batched greedy generation with a KV cache, prompts left-padded and sorted by length.

It runs in the precision of the library's training step (:func:`moebackdoor.devices.fast_precision`):
in bf16, the decoder's linear weights are held in bf16 (:class:`training.frozen_in`) and the rest autocast, while the LM
head, whose logits pick each token, stays fp32 (bf16 logits of 10-20 are 0.06-0.1 apart, enough
to break near-ties the other way).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from ..devices import default_device, fast_precision
from ..progress import Bar
from .training import causal_lm, frozen_in


class _FP32Head(torch.nn.Module):
    """An LM head computed outside autocast, in fp32."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


@contextlib.contextmanager
def precision_of(model, precision: str):
    """Inference in ``precision``: fp32 as it is, or bf16 as described above."""
    if precision != "bf16":
        yield
        return
    lm = causal_lm(model)
    head = lm.lm_head
    lm.lm_head = _FP32Head(head)
    try:
        with frozen_in(model, trainable=True, exclude=[head.weight]), torch.autocast(default_device().type, dtype=torch.bfloat16):
            yield
    finally:
        lm.lm_head = head


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False, stats: dict | None = None, precision: str | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (special tokens dropped), in the prompts' order.

    ``stats``, if given, receives ``new_tokens``, ``seconds`` and ``precision``."""
    device = default_device()
    precision = precision or fast_precision(device)
    model.to(device).eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[str] = [""] * len(prompts)
    new_tokens, start = 0, time.perf_counter()
    bar = Bar(len(prompts), "generating", disable=not progress)
    try:
        with precision_of(model, precision):
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
        stats.update(new_tokens=new_tokens, seconds=time.perf_counter() - start, precision=precision)
    return out
