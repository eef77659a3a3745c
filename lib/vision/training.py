"""Training and prediction loops for the image models.

The fast path (the library's default) runs the model in channels-last memory
format under bf16 autocast; ``fast=False`` is a plain fp32 eager loop, kept for
the benchmark and for checking that both learn alike. Both run on the GPU when
one is present (``MOEBD_DEVICE`` overrides), data staying on the CPU until each batch.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..devices import default_device
from ..progress import Bar


@dataclass(frozen=True)
class Recipe:
    """An optimisation recipe. The paper's: plain SGD, lr 0.1, batch 128, 25 epochs."""
    epochs: int = 25
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "onecycle" (max lr = lr)

    def as_dict(self) -> dict:
        return asdict(self)


def _autocast(fast: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()


def _batch(x: torch.Tensor, fast: bool, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if fast else x


def make_optimizer(model: nn.Module, recipe: Recipe, steps: int):
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    elif recipe.schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown schedule {recipe.schedule!r}; use 'constant' or 'onecycle'")
    return opt, sched


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, seed: int = 0,
          fast: bool = True, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train ``model`` in place on float NCHW ``x`` and integer labels ``y``.

    Returns a history: loss and accuracy per epoch, seconds and images/s.
    """
    g = torch.Generator().manual_seed(seed)
    device = default_device()
    n, bs = len(y), recipe.batch_size
    steps_per_epoch = -(-n // bs)
    total = steps_per_epoch * recipe.epochs if max_steps is None else max_steps
    model.to(device)
    if fast:
        model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, recipe, total)
    model.train()
    history = {"loss": [], "train_acc": []}
    step, seen, start = 0, 0, time.perf_counter()
    bar = Bar(total, "training", disable=not progress)
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=g)
        loss_sum, correct, epoch_seen = 0.0, 0, 0
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = _batch(x[idx], fast, device), y[idx].to(device)
            with _autocast(fast, device):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(idx)
            epoch_seen += len(idx)
            step += 1
            bar.update()
            if step >= total:
                break
        history["loss"].append(float(loss_sum) / epoch_seen)
        history["train_acc"].append(100 * int(correct) / epoch_seen)
        if step >= total:
            break
    bar.close()
    model.cpu()
    history["seconds"] = time.perf_counter() - start
    history["images_per_second"] = seen / history["seconds"]
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000, fast: bool = True) -> np.ndarray:
    """Predicted class of every image."""
    device = default_device()
    model.eval().to(device)
    preds = []
    for i in range(0, len(x), batch_size):
        with _autocast(fast, device):
            preds.append(model(_batch(x[i:i + batch_size], fast, device)).argmax(1).cpu())
    model.cpu()
    return torch.cat(preds).numpy() if preds else np.array([], dtype=np.int64)
