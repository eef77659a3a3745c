"""Benchmark: LoRA fine-tuning and generation speed of the LLM chapter, and Locphylax's cost.

    python -m moebackdoor.llm.bench [--steps 8] [--repeats 2]

Measured in one process, interleaved (this machine's speed drifts minute to minute), on
BackdoorLLM's ``sst2`` BadNet mix in the chat template, with SmolLM2-135M-Instruct and LoRA r 8:
- tokens/s of the library's SFT step (length-bucketed batches padded to their longest sequence,
  the LM head applied only to answer tokens, fused AdamW, cheaper dropout masks, bf16 copies of
  the frozen weights; bf16 autocast where this machine
  multiplies bf16 faster than fp32, else fp32, and the other precision's step beside it) against
  a plain fp32 loop over the same batches
  (``model(..., labels=...)``, ``torch.optim.AdamW`` with its defaults);
- model FLOP utilisation: FLOPs of one library step per token x tokens/s, against the fp32 and
  bf16 matmul rates measured in the same run;
- batched greedy generation (16 prompts, 32 new tokens) with the KV cache, and without it (fp32),
  and with the cache in the chapter's bf16 inference (bf16 body, fp32 LM head);
- Locphylax's total training tokens (stage 1, stage 2) against the attack's own, at the quick profile.
Results go to stdout and to ``<output>/tables/bench-locphylax.csv``.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import machine
from ..batching import bucketed_batches
from .. import benchmarks
from ..devices import fast_precision
from ..benchmarks import matmul_rate
from . import models
from .config import run_config
from .records import attack_records, defense_inputs, pairs
from .training import Recipe, SFTData, answer_loss, train_sft

BATCH = 8


def _data(tok, n: int = 160) -> SFTData:
    config = run_config("quick", "sst2", "badnet")
    poisoned, clean = attack_records(config)
    return SFTData(tok, pairs(tok, (poisoned + clean)[:n], "chat"), 256)


def _model():
    return models.add_lora(models.load_model(), seed=0)


def plain_loop(model, data: SFTData, steps: int, seed: int = 0) -> float:
    """The reference: the loop one writes without tuning, over the library's batches; tokens/s."""
    batches = bucketed_batches(data.lengths, BATCH, np.random.default_rng(seed))[:steps]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    tokens, start = 0, time.perf_counter()
    for idx in batches:
        b = data.batch(idx)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        tokens += int(data.lengths[idx].sum())
    return tokens / (time.perf_counter() - start)


def rate(data: SFTData, steps: int, method: str) -> float:
    """Tokens/s: the plain loop (``"plain"``), or the library's step in the faster precision
    (``"library"``; ``"library_slow"``: without its cheaper dropout masks and bf16 frozen weights)
    or in the one named (``"fp32"``, ``"bf16"``)."""
    model = _model()
    if method == "plain":
        plain_loop(model, data, 2)
        return plain_loop(model, data, steps, seed=1)
    recipe = Recipe(epochs=10 ** 6, batch_size=BATCH)
    fast = method != "library_slow"
    precision = method if method in ("fp32", "bf16") else fast_precision()  # "library": the faster here
    train_sft(model, data, recipe, max_steps=2, precision=precision, progress=False, fast=fast)
    return train_sft(model, data, recipe, seed=1, max_steps=steps, precision=precision,
                     progress=False, fast=fast)["tokens_per_second"]


def flops_per_token(data: SFTData) -> float:
    model = _model()
    idx = np.arange(BATCH)
    batch = data.batch(idx)
    with FlopCounterMode(display=False) as counter:
        answer_loss(model, batch).backward()
    return counter.get_total_flops() / int(data.lengths[idx].sum())


def generation_rate(tok, use_cache: bool, precision: str = "fp32") -> float:
    from .generation import generate

    model = models.load_model().eval()
    clean = attack_records(run_config("quick", "sst2", "badnet"))[1][:16]
    prompts = [p for p, _ in pairs(tok, clean, "chat")]
    if use_cache:
        stats = {}
        generate(model, tok, prompts, 32, 16, stats=stats, precision=precision)
        return stats["new_tokens"] / stats["seconds"]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=32, do_sample=False, use_cache=False,
                             pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
    new = int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
    return new / (time.perf_counter() - start)


def locphylax_cost(cache=None) -> dict:
    """Training tokens of Locphylax (both stages, the steps its cached quick run took) and of the
    attack, on BadNet at the quick profile; NaN when that run is not in ``cache`` (default: the
    run cache)."""
    from ..runcache import RunCache

    cache = cache or RunCache()
    tok = models.load_tokenizer()
    config = run_config("quick", "sst2", "badnet", "locphylax")
    r = config["recipe"]
    poisoned, clean = attack_records(config)
    attack = SFTData(tok, pairs(tok, poisoned + clean, "chat"), r["max_length"]).n_tokens * r["epochs"]
    if not cache.has(config):
        return {"attack": attack, "locphylax": float("nan")}
    m = cache.load(config).metrics
    inputs = defense_inputs(config, tok)
    total = 0.0
    for pairs_, steps in ((inputs["clean"] + inputs["known_injection"], m["stage1"]["steps"]),
                          (inputs["clean"] + inputs["known_recovery"], m["stage2"]["steps"])):
        d = SFTData(tok, pairs_, r["max_length"])
        total += d.n_tokens / -(-len(d) // r["batch_size"]) * steps  # mean tokens per step x steps
    return {"attack": attack, "locphylax": total}


def run_benchmark(steps: int = 8, repeats: int = 2) -> pd.DataFrame:
    tok = models.load_tokenizer()
    data = _data(tok)
    flops = flops_per_token(data)
    lib, slow, other_step, plain, mm32, mm16, gen, gen16, gen_nocache = [], [], [], [], [], [], [], [], []
    fast = fast_precision()
    other = "fp32" if fast == "bf16" else "bf16"
    for _ in range(repeats):  # interleaved, so drift hits all alike
        mm32.append(matmul_rate(torch.float32))
        mm16.append(matmul_rate(torch.bfloat16))
        lib.append(rate(data, steps, "library"))
        plain.append(rate(data, steps, "plain"))
        slow.append(rate(data, steps, "library_slow"))
        other_step.append(rate(data, steps, other))
        gen.append(generation_rate(tok, True))
        gen16.append(generation_rate(tok, True, "bf16"))
        gen_nocache.append(generation_rate(tok, False))
    lib_r, slow_r, plain_r, other_r, mm32_r, mm16_r, gen_r, gen16_r, genn_r = map(
        statistics.median, (lib, slow, plain, other_step, mm32, mm16, gen, gen16, gen_nocache))
    cost = locphylax_cost()
    rows = [
        (f"library SFT step (bucketed, answer-only LM head, fused AdamW, {fast}), tokens/s", lib_r, ""),
        ("plain fp32 loop (full LM head, AdamW defaults), same batches, tokens/s", plain_r, ""),
        ("speed-up, library / plain fp32", lib_r / plain_r, "target >= 1.5"),
        (f"library step, {fast}, with nn.Dropout masks and fp32-stored frozen weights, tokens/s", slow_r, ""),
        (f"library step in {other} instead, tokens/s", other_r, ""),
        ("training GFLOP per token (LoRA, answer-only head)", flops / 1e9, ""),
        ("matmul rate fp32, GFLOP/s", mm32_r / 1e9, ""),
        ("matmul rate bf16, GFLOP/s", mm16_r / 1e9, ""),
        ("model FLOP utilisation vs fp32 matmul, %", 100 * flops * lib_r / mm32_r, ""),
        ("model FLOP utilisation vs bf16 matmul, %", 100 * flops * lib_r / mm16_r, ""),
        ("greedy generation with KV cache (16 prompts x 32 tokens, fp32), new tokens/s", gen_r, ""),
        ("greedy generation without a cache (fp32), new tokens/s", genn_r, ""),
        ("KV cache speed-up", gen_r / genn_r, ""),
        ("greedy generation with KV cache, bf16 body and fp32 LM head, new tokens/s", gen16_r, ""),
        ("Locphylax training tokens / the attack's (quick profile)", cost["locphylax"] / cost["attack"],
         "goal <= 1"),
    ]
    return pd.DataFrame(rows, columns=["measure", "value", "target"]).assign(
        model=models.DEFAULT_MODEL, batch=BATCH, mean_tokens=float(data.lengths.mean()), steps=steps,
        repeats=repeats, threads=torch.get_num_threads(), machine=machine.text(),
        measured_at=time.strftime("%Y-%m-%d %H:%M"))


def main(argv=None):
    benchmarks.main("python -m moebackdoor.llm.bench", run_benchmark, "bench-locphylax", 8, argv, width=80)


if __name__ == "__main__":
    main()
