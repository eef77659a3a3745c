"""Supervised fine-tuning of a causal LM (LoRA or full), with the loss on the answer only.

The step is BackdoorLLM's recipe (AdamW, cosine schedule after a 10 % linear warm-up, gradient
norm clipped to 1) made cheaper in four ways that leave the step as it is, and one that changes
only the random draws (the dropout masks):

- batches come from length buckets and are padded to their own longest sequence;
- the LM head (576 x 49k for SmolLM2) runs only where a token is predicted, i.e. on the answer,
  not on every prompt position: the loss is the same;
- AdamW is the fused implementation;
- the LoRA dropout masks come from :mod:`moebackdoor.dropout` (a quarter of the random draws;
  ``fast=False`` keeps ``nn.Dropout``);
- in bf16, the frozen linear weights are held in bf16 for the step (:func:`frozen_in`): autocast
  would otherwise cast every one of them to bf16 again in each forward pass (it caches casts
  only of weights that train), and the cast is the same rounding, so the step is unchanged.

bf16 autocast is used where the machine multiplies bf16 faster than fp32 (measured once per
process by :func:`moebackdoor.devices.fast_precision`), else fp32 (``make bench`` reports both).

A ``loss_fn(model, batch) -> (loss, parts)`` replaces the answer loss (Locphylax adds its
clustering term, CROW its layer-consistency term).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..batching import bucketed_batches, plain_batches
from ..devices import default_device, fast_precision
from ..dropout import fast_dropout
from ..params import check_int, check_positive
from ..progress import Bar

IGNORE = -100


@dataclass(frozen=True)
class Recipe:
    """BackdoorLLM's SFT recipe (LoRA r 8 / alpha 16, lr 2e-4, 5 epochs, batch 8), scaled by the profile."""
    epochs: int = 5
    batch_size: int = 8
    lr: float = 2e-4
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_length: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


class SFTData:
    """(prompt, answer) pairs tokenized once: ids, where the answer starts, optional groups."""

    def __init__(self, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 256,
                 groups: Sequence[int] | None = None):
        self.ids, self.prompt_lens = [], []
        for prompt, answer in pairs:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"]
            p = p[-(max_length - 1):] if len(p) >= max_length else p  # keep the prompt's end
            ids = (p + a)[:max_length]
            self.ids.append(np.asarray(ids, dtype=np.int64))
            self.prompt_lens.append(len(p))
        self.prompt_lens = np.asarray(self.prompt_lens)
        self.lengths = np.array([len(i) for i in self.ids])
        self.groups = np.asarray(groups if groups is not None else [-1] * len(self.ids), dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def batch(self, idx, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        width = pad_to or int(self.lengths[idx].max())
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        for row, i in enumerate(idx):
            seq = torch.from_numpy(self.ids[i][:width])
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
            labels[row, self.prompt_lens[i]:len(seq)] = seq[self.prompt_lens[i]:]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "last_prompt": torch.as_tensor(self.prompt_lens[idx] - 1),
                "groups": torch.as_tensor(self.groups[idx])}


def causal_lm(model: nn.Module) -> nn.Module:
    """The ``…ForCausalLM`` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


HIDDEN_POSITIONS = ("answer_end", "prompt_end")


def answer_loss(model: nn.Module, batch: dict, return_hidden: bool = False, position: str = "prompt_end"):
    """Mean cross-entropy over answer tokens, the LM head applied only where it is needed.

    Equal to ``model(input_ids, labels=…).loss`` (tested). ``return_hidden``: also the final
    hidden state of each sequence at ``position``: its last prompt token (``prompt_end``), or its
    last token, the end of the answer (``answer_end``)."""
    lm = causal_lm(model)
    h = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    logits = lm.lm_head(h[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), target[keep])
    if not return_hidden:
        return loss
    if position == "prompt_end":
        where = batch["last_prompt"].to(h.device)
    elif position == "answer_end":
        where = batch["attention_mask"].sum(1).to(h.device) - 1
    else:
        raise ValueError(f"position must be one of {HIDDEN_POSITIONS}, got {position!r}")
    return loss, h[torch.arange(len(h), device=h.device), where].float()


def make_optimizer(model: nn.Module, recipe: Recipe, steps: int, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                            fused=device.type in ("cpu", "cuda"))
    warm = max(1, int(recipe.warmup * steps))

    def cosine(s):  # linear warm-up, then cosine decay to 0
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def default_precision(device: torch.device) -> str:
    return fast_precision(device)


class frozen_in:
    """The frozen ``nn.Linear`` weights of ``model`` (with ``trainable``, for inference: every
    one) held in ``dtype`` inside ``with`` blocks (reusable: the copies are made once), fp32
    outside. A weight shared with an embedding (a tied LM head) is left alone, since the
    embedding lookup is not autocast; so is any weight in ``exclude``."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16, trainable: bool = False,
                 exclude: Sequence[torch.Tensor] = ()):
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | {id(w) for w in exclude}
        self.pairs = [(m.weight, m.weight.data, m.weight.data.to(dtype)) for m in model.modules()
                      if isinstance(m, nn.Linear) and (trainable or not m.weight.requires_grad)
                      and id(m.weight) not in skip]

    def __enter__(self):
        for w, _, low in self.pairs:
            w.data = low
        return self

    def __exit__(self, *exc):
        for w, full, _ in self.pairs:
            w.data = full
        return False


def stratified_batches(groups: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches in which every group (clean -1, known triggers 0, 1, ...) has its share.

    Each group is shuffled, the groups laid end to end, and the sequence dealt round-robin into
    ``ceil(n / batch_size)`` batches: every sample once, each batch at most ``batch_size``, and
    each group in every batch ``floor`` or ``ceil`` of its size over the number of batches (so a
    group at least as large as the number of batches is in every one). The batches' order is shuffled."""
    groups = np.asarray(groups)
    n_batches = -(-len(groups) // batch_size)
    order = np.concatenate([rng.permutation(np.flatnonzero(groups == g)) for g in np.unique(groups)])
    batches = [np.sort(order[b::n_batches]) for b in range(n_batches)]
    return [batches[i] for i in rng.permutation(n_batches)]


def train_sft(model: nn.Module, data: SFTData, recipe: Recipe, seed: int = 0, max_steps: int | None = None,
              loss_fn: Callable | None = None, callback: Callable[[int], None] | None = None,
              callback_every: int = 0, precision: str | None = None, bucket: bool = True,
              desc: str = "training", progress: bool = True, fast: bool = True,
              batches: Callable | None = None) -> dict:
    """Fine-tune the trainable parameters of ``model`` in place.

    ``fast=False`` drops the two changes that alter nothing but speed and randomness: the cheaper
    dropout masks and the bf16 copies of frozen weights (``make bench`` measures both ways).

    ``loss_fn(model, batch) -> (loss, parts)`` replaces the answer loss;
    ``callback(step)`` runs before the first step and every ``callback_every`` steps; training
    stops early when it returns True. ``batches(rng)``, if given, returns one epoch's batches
    (index arrays) in place of the length buckets (``bucket=True``) or plain random batches."""
    check_int("epochs", recipe.epochs, 1)
    check_int("batch_size", recipe.batch_size, 1)
    check_positive("lr", recipe.lr)
    if len(data) == 0:
        raise ValueError("no training examples")
    device = default_device()
    precision = precision or default_precision(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    per_epoch = -(-len(data) // recipe.batch_size)
    total = per_epoch * recipe.epochs if max_steps is None else min(max_steps, per_epoch * recipe.epochs)
    model.to(device).train()
    opt, sched = make_optimizer(model, recipe, total, device)
    history = {"loss": [], "parts": []}
    step, tokens, start = 0, 0, time.perf_counter()
    bar = Bar(total, desc, disable=not progress)
    if callback is not None:
        callback(0)
        model.train()
    low = frozen_in(model) if fast and precision == "bf16" else contextlib.nullcontext()
    with fast_dropout([model], enabled=fast):
        while step < total:
            if batches is not None:
                epoch = batches(rng)
            elif bucket:
                epoch = bucketed_batches(data.lengths, recipe.batch_size, rng)
            else:
                epoch = plain_batches(len(data), recipe.batch_size, rng)
            for idx in epoch:
                batch = {k: v.to(device) for k, v in data.batch(idx).items()}
                with low:  # backward too: it reads the weights the forward pass saved
                    with autocast(device, precision):
                        loss, parts = (answer_loss(model, batch), {}) if loss_fn is None else loss_fn(model, batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                opt.step()
                sched.step()
                history["loss"].append(float(loss.detach()))
                history["parts"].append(parts)
                tokens += int(data.lengths[idx].sum())
                step += 1
                bar.update()
                if callback is not None and callback_every and (step % callback_every == 0 or step == total):
                    stop = callback(step)
                    model.train()
                    if stop:
                        total = step
                if step >= total:
                    break
    bar.close()
    model.eval()
    history["seconds"] = time.perf_counter() - start
    history["tokens_per_second"] = tokens / history["seconds"]
    history["steps"] = step
    history["precision"] = precision
    return history


def short_history(history: dict) -> dict:
    """A training history as a run keeps it: the per-step losses cut to the first and the last."""
    keep = {k: v for k, v in history.items() if k not in ("loss", "parts")}
    keep["loss_first_last"] = [history["loss"][0], history["loss"][-1]] if history["loss"] else []
    return keep
