"""Fine-tuning encoder classifiers: plainly, or jointly with trigger-only experts (NPoE, DPoE).

Sentences are tokenized once; a batch is padded to its own longest sentence (dynamic padding),
and batches are drawn from length buckets (sentences of similar length together), in bf16
autocast where the machine multiplies bf16 faster than fp32 (``fast=True``; measured once, see
:func:`moebackdoor.devices.fast_precision`), with dropout masks drawn 4x faster
(:mod:`moebackdoor.dropout`), and word embeddings cut to the training data's tokens for the length
of training (:class:`CompactVocabulary`: the same weights). ``fast=False`` is a plain fp32 loop over
the same batches, padded to ``pad_to`` if given (the authors pad to 256): the benchmark's
reference. The optimiser is the authors': AdamW, weight decay 0.01 except biases and
LayerNorm, eps 1e-8, linear warm-up over 10 % of the steps then linear decay, gradients
clipped to norm 1.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..batching import bucketed_batches, plain_batches  # noqa: F401 (part of this module's API)
from ..devices import default_device, fast_precision
from ..dropout import fast_dropout
from ..params import check_choice, check_int
from ..progress import Bar
from . import poe
from .data import TextSet
from .models import MAX_LENGTH, HiddenGate


@dataclass(frozen=True)
class Recipe:
    """The authors' NPoE recipe, scaled by the profile (``epochs``, ``max_length``)."""
    epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-5
    small_lr: float = 2e-5        # trigger-only experts and the gate
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = MAX_LENGTH

    def as_dict(self) -> dict:
        return asdict(self)


class Tokenized:
    """A text set tokenized once, unpadded, with its labels."""

    def __init__(self, tokenizer, data: TextSet, max_length: int = MAX_LENGTH):
        enc = tokenizer(list(data.sentences), truncation=True, max_length=max_length)
        self.ids = [np.asarray(i, dtype=np.int64) for i in enc["input_ids"]]
        self.lengths = np.array([len(i) for i in self.ids])
        self.labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        width = pad_to or int(self.lengths[idx].max())
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = self.ids[i][:width]
            input_ids[row, :len(ids)] = torch.from_numpy(ids)
            mask[row, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


def _param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr}]


def linear_schedule(warm: float, steps: int):
    """The learning-rate factor at step ``s`` (the authors' ``get_linear_schedule_with_warmup``):
    ``s / warm`` over the warm-up, then down linearly to 0 at ``steps``."""
    warm = max(1, warm)
    return lambda s: s / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm))


def make_optimizer(groups: list[dict], steps: int, warmup: float, device: torch.device,
                   warm_steps: float | None = None, offsets: list[int] | None = None):
    """AdamW with a linear warm-up over ``warmup`` x ``steps`` (``int``; or exactly ``warm_steps``,
    a float as the authors' code computes it) and linear decay to 0 at ``steps``. ``offsets``: per
    group, the step at which its schedule starts (a frozen model's schedule waits)."""
    opt = torch.optim.AdamW(groups, eps=1e-8, fused=True) if device.type in ("cpu", "cuda") \
        else torch.optim.AdamW(groups, eps=1e-8)
    f = linear_schedule(int(warmup * steps) if warm_steps is None else warm_steps, steps)
    lambdas = f if offsets is None else [lambda s, o=o: f(max(0, s - o)) for o in offsets]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


@contextlib.contextmanager
def sparse_embedding_grads(models: list[nn.Module], enabled: bool = True):
    """Word-embedding gradients as the rows a batch touched, written into one persistent dense buffer.

    An encoder's word-embedding gradient is dense (30k x 384 for MiniLM) but a batch touches a few
    hundred rows; building it fresh each step (allocate, zero, scatter) costs more on a CPU than
    the rest of the backward pass. Here the embedding emits a sparse gradient, and a hook adds it
    into a buffer kept across steps, clearing only the rows the previous step wrote: the optimiser
    sees the same dense gradient as before (AdamW still updates every row). It yields, for each
    such weight (by ``id``), the rows its gradient holds this step (for :func:`clip_grad_norm`)."""
    handles, embeddings, touched = [], [], {}
    for model in models if enabled else []:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(emb, nn.Embedding) or emb.sparse:
            continue
        state = {}

        def hook(p, state=state):
            g = p.grad
            if g is None or not g.is_sparse:
                return
            g = g.coalesce()
            rows = g.indices()[0]
            dense = state.get("dense")
            if dense is None:
                dense = state["dense"] = torch.zeros_like(p)
            else:
                dense.index_fill_(0, state["rows"], 0.0)
            dense.index_add_(0, rows, g.values().to(dense.dtype))
            state["rows"] = rows
            p.grad = dense

        handles.append(emb.weight.register_post_accumulate_grad_hook(hook))
        touched[id(emb.weight)] = state
        emb.sparse = True
        embeddings.append(emb)
    try:
        yield touched
    finally:
        for h in handles:
            h.remove()
        for emb in embeddings:
            emb.sparse = False


class CompactVocabulary:
    """Within the block, ``models``' word embeddings hold only the rows of ``ids`` (the tokens the
    training data holds), and :meth:`remap` maps a batch's token ids to those rows.

    AdamW never moves a row that no batch touches except by weight decay: its gradient and both
    moments stay 0, so its update is ``p *= 1 - lr * wd`` each step. Leaving such rows out of the
    optimiser (for SST-2 at 64 tokens, 19,000 of MiniLM's 30,522) and applying the product of those
    factors on exit gives the weights of dense training, up to the rounding of that product, for
    about two fifths of the word-embedding optimiser work, the largest part of a step for NPoE's
    five extra embedding tables. Call :meth:`stepped` after each ``opt.step()``, before the scheduler's.
    Encoders that number positions from the tokens that are not padding (MPNet, RoBERTa: their
    embeddings' ``padding_idx``) get their position ids from the batch's own token ids."""

    def __init__(self, models: list[nn.Module], ids, device=None):
        self.ids = torch.as_tensor(np.unique(np.asarray(ids)), dtype=torch.long)
        self.entries, self.lut = [], None
        for model in models:
            emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            if not isinstance(emb, nn.Embedding):
                continue
            if self.lut is None:
                self.lut = torch.full((emb.num_embeddings,), -1, dtype=torch.long)
                self.lut[self.ids] = torch.arange(len(self.ids))
                self.lut = self.lut.to(device)
            module = getattr(getattr(model, "base_model", None), "embeddings", None)
            positions = module if isinstance(getattr(module, "padding_idx", None), int) else None
            self.entries.append({"emb": emb, "full": emb.weight, "decay": 1.0, "padding_idx": emb.padding_idx,
                                 "positions": positions,
                                 "positions_padding": positions.padding_idx if positions is not None else None})

    def __enter__(self) -> "CompactVocabulary":
        for e in self.entries:
            full = e["full"]
            e["compact"] = nn.Parameter(full.detach()[self.ids.to(full.device)].clone(), requires_grad=full.requires_grad)
            e["emb"].weight = e["compact"]
            if e["padding_idx"] is not None:  # the padding row keeps a zero gradient, at its new index
                new = int(self.lut[e["padding_idx"]])
                e["emb"].padding_idx = new if new >= 0 else None
        return self

    def remap(self, batch: dict) -> dict:
        if self.lut is None:
            return batch
        out = batch | {"input_ids": self.lut[batch["input_ids"]]}
        pad = next((e["positions_padding"] for e in self.entries if e["positions"] is not None), None)
        if pad is not None:  # as the model numbers them from its own token ids: padding_idx + 1, 2, ...
            real = (batch["input_ids"] != pad).long()
            out["position_ids"] = torch.cumsum(real, 1) * real + pad
        return out

    def stepped(self, opt: torch.optim.Optimizer) -> None:
        """Record the weight decay this step applied to the rows left out."""
        for e in self.entries:
            if e["compact"].grad is None:  # not stepped (a frozen model): no decay either
                continue
            if "group" not in e:  # found once: the optimiser's group that holds the compact rows
                e["group"] = next((g for g in opt.param_groups if any(p is e["compact"] for p in g["params"])), None)
            if e["group"] is not None:
                e["decay"] *= 1.0 - e["group"]["lr"] * e["group"]["weight_decay"]

    def __exit__(self, *exc) -> None:
        for e in self.entries:
            full, ids = e["full"], self.ids.to(e["full"].device)
            with torch.no_grad():
                if e["decay"] != 1.0:
                    full.mul_(e["decay"])
                full[ids] = e["compact"].detach()
            e["emb"].weight = full
            e["emb"].padding_idx = e["padding_idx"]



def clip_grad_norm(model: nn.Module, max_norm: float, touched: dict | None = None) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_`` (the 2-norm of all gradients, scaled down to ``max_norm``),
    reading and scaling only the rows of the word-embedding gradients that
    :func:`sparse_embedding_grads` wrote this step (``touched``): the other rows are zero."""
    grads = []
    for p in model.parameters():
        if p.grad is not None:
            rows = (touched or {}).get(id(p), {}).get("rows")
            grads.append((p.grad, rows))
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g if rows is None else g.index_select(0, rows)) for g, rows in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g, rows in grads:
        if rows is None:
            g.mul_(coef)
        else:
            g.index_copy_(0, rows, g.index_select(0, rows) * coef)
    return total


def autocast(fast: bool, device: torch.device):
    """bf16 autocast on the fast path where this machine multiplies bf16 faster (:func:`devices.fast_precision`)."""
    if fast and fast_precision(device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_classifier(model: nn.Module, data: Tokenized, recipe: Recipe, seed: int = 0, fast: bool = True,
                     pad_to: int | None = None, max_steps: int | None = None, desc: str = "training",
                     progress: bool = True, bucket: bool | None = None, rdrop_alpha: float = 0.0) -> dict:
    """Fine-tune ``model`` in place with cross-entropy (No defense, Benign, BKI's retraining).

    ``bucket`` (default: ``fast`` and no ``pad_to``) draws batches from length buckets.
    ``rdrop_alpha`` > 0 adds R-drop as the authors' ``plain_train`` does under ``--do_Rdrop``
    (cross-entropy on the first of two dropout passes + ``rdrop_alpha`` x their symmetric KL)."""
    cfg = PoE(rdrop_alpha=rdrop_alpha) if rdrop_alpha else None
    return _train(model, [], None, data, recipe, seed, fast, pad_to, max_steps, desc, progress, cfg, bucket=bucket)


EXPERT_MODES = ("train", "eval")  # the experts' and gate's mode in joint training: dropout on (ours before) or off


@dataclass(frozen=True)
class PoE:
    """How the main model trains with its trigger-only experts."""
    beta: float = 1.0             # the PoE coefficient (the authors' poe_alpha)
    rdrop_alpha: float = 15.0     # R-drop weight (mode 2); 0 turns R-drop off
    top_k: int = -1               # gate routing; -1: every expert
    gate_mask: str = "inf"        # "zero": the authors' top-k quirk
    train_experts: bool = True    # the authors' example (freeze_bias_iters 0); False: their default -1
    reweight: float | None = None  # DPoE's denoising threshold (0.8), None: off
    # the experts and gate in joint training: "train" (dropout, ours before) or "eval" (no dropout:
    # both authors' codes put only the main model in train mode)
    expert_mode: str = "train"
    # the authors' --freeze_main_iters: for the first N iterations (of the first epoch) the main
    # model is not updated and its schedule has not started; the experts and gate train. 0: off
    freeze_main_iters: int = 0

    def __post_init__(self):
        check_choice("expert_mode", self.expert_mode, EXPERT_MODES)
        check_int("freeze_main_iters", self.freeze_main_iters, 0)

    def as_dict(self) -> dict:
        """The fields, those added later only where they differ from their default (so that the
        configurations, and the cache keys, of runs that do not use them stay as they were)."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in POE_ADDED or v != POE_ADDED[k]}


# PoE's fields added after runs were cached, with the default that means "as before"
POE_ADDED = {"expert_mode": "train", "freeze_main_iters": 0}


def train_poe(main: nn.Module, experts: list[nn.Module], gate: nn.Module | None, data: Tokenized,
              recipe: Recipe, poe_cfg: PoE, seed: int = 0, fast: bool = True, max_steps: int | None = None,
              desc: str = "training", progress: bool = True) -> dict:
    """Train ``main`` jointly with its experts (and gate: NPoE; none and one expert: DPoE)."""
    if gate is None and len(experts) != 1:
        raise ValueError("without a gate there must be exactly one expert (DPoE)")
    return _train(main, experts, gate, data, recipe, seed, fast, None, max_steps, desc, progress, poe_cfg)


def _train(main, experts, gate, data, recipe, seed, fast, pad_to, max_steps, desc, progress, poe_cfg=None,
           bucket=None):
    check_int("epochs", recipe.epochs, 1)
    check_int("batch_size", recipe.batch_size, 1)
    device = default_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(data) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs if max_steps is None else min(max_steps, steps_per_epoch * recipe.epochs)
    side = experts + ([gate] if gate is not None else [])
    trained_side = [m for m in side if poe_cfg is not None and (poe_cfg.train_experts or m is gate)]
    side_dropout = poe_cfg is None or poe_cfg.expert_mode == "train"
    # the authors' --freeze_main_iters: the first iterations of the first epoch leave the main model as it is
    n_frozen = 0 if poe_cfg is None else min(poe_cfg.freeze_main_iters, steps_per_epoch, total)
    for m in [main] + side:
        m.to(device)
    history = {"loss": []}
    step, seen, start = 0, 0, time.perf_counter()
    bar = Bar(total, desc, disable=not progress)
    # the fast path's word embeddings hold only the data's tokens (and padding): the same weights
    vocab = CompactVocabulary([main] + side if fast else [], np.concatenate(data.ids + [[data.pad_id]]), device)
    with vocab, sparse_embedding_grads([main] + trained_side, enabled=fast) as touched, \
            fast_dropout([main] + side, enabled=fast):
        groups = _param_groups(main, recipe.lr, recipe.weight_decay)
        n_main = len(groups)
        for m in trained_side:
            groups += _param_groups(m, recipe.small_lr, recipe.weight_decay)
        offsets = [n_frozen] * n_main + [0] * (len(groups) - n_main) if n_frozen else None
        opt, sched = make_optimizer(groups, total, recipe.warmup, device, offsets=offsets)
        while step < total:
            bucketed = (fast and pad_to is None) if bucket is None else bucket
            batches = bucketed_batches(data.lengths, recipe.batch_size, rng) if bucketed \
                else plain_batches(len(data), recipe.batch_size, rng)
            loss_sum, n_epoch = 0.0, 0
            for idx in batches:
                batch = vocab.remap(_to(data.batch(idx, pad_to), device))
                y = data.labels[idx].to(device)
                main.train()
                for m in side:
                    m.train(m in trained_side and side_dropout)
                with autocast(fast, device):
                    loss = training_loss(main, experts, gate, batch, y, poe_cfg, trained_side)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                frozen = step < n_frozen
                for m in ([] if frozen else [main]) + trained_side:
                    clip_grad_norm(m, 1.0, touched)
                if frozen:  # AdamW skips parameters without a gradient: no step, no weight decay
                    for p in main.parameters():
                        p.grad = None
                opt.step()
                vocab.stepped(opt)
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                n_epoch += len(idx)
                seen += len(idx)
                step += 1
                bar.update()
                if step >= total:
                    break
            history["loss"].append(loss_sum / max(1, n_epoch))
    bar.close()
    for m in [main] + side:
        m.cpu().eval()
    history["seconds"] = time.perf_counter() - start
    history["sentences_per_second"] = seen / history["seconds"]
    history["steps"] = step
    history["precision"] = fast_precision(device) if fast else "fp32"
    return history


def training_loss(main, experts, gate, batch, y, cfg: PoE | None, trained_side):
    """One batch's loss: cross-entropy (``cfg`` None) or the PoE loss with R-drop; the experts'
    forward pass is gradient-free unless one of them is in ``trained_side``."""
    if cfg is None:
        return F.cross_entropy(main(**batch).logits.float(), y)
    on_hidden = isinstance(gate, HiddenGate)
    if cfg.rdrop_alpha:  # two dropout passes of the main model in one batch
        out = main(**{k: torch.cat([v, v]) for k, v in batch.items()}, output_hidden_states=on_hidden)
        r1, r2 = out.logits.chunk(2)
    else:
        out = main(**batch, output_hidden_states=on_hidden)
        r1, r2 = out.logits, None
    if not experts:  # plain training with R-drop (the authors' plain_train)
        return F.cross_entropy(r1.float(), y) + cfg.rdrop_alpha * poe.symmetric_kl(r1, r2)
    with contextlib.ExitStack() as stack:
        if not any(e in trained_side for e in experts):
            stack.enter_context(torch.no_grad())
        expert_logits = torch.stack([e(**batch).logits for e in experts])
    if gate is None:
        weights = torch.ones(len(y), 1, device=y.device)
    else:
        weights = poe.gate_weights(gate_logits(gate, batch, out, len(y)), cfg.top_k, cfg.gate_mask)
    sample_weights = poe.dpoe_weights(expert_logits[0], y, cfg.reweight) if cfg.reweight else None
    loss = poe.poe_loss(r1, expert_logits, weights, y, cfg.beta, sample_weights)
    if r2 is not None:
        loss = loss + cfg.rdrop_alpha * poe.symmetric_kl(r1, r2)
    return loss


def gate_logits(gate, batch: dict, main_out, n: int) -> torch.Tensor:
    """The gate's logits for the first ``n`` rows: from the text, or (:class:`HiddenGate`) from
    the main model's last [CLS] state in ``main_out`` (run with ``output_hidden_states=True``)."""
    if isinstance(gate, HiddenGate):
        return gate(main_out.hidden_states[-1][:n, 0]).float()
    return gate(**batch).logits.float()


def n_pretrain_batches(n: int, batch_size: int, epochs: int, max_steps: int) -> int:
    """The batches of an expert's pre-training: ``epochs`` passes over ``n`` sentences, at most ``max_steps``."""
    return min(max_steps, -(-n // batch_size) * epochs)


def pretrain_expert(expert: nn.Module, data: Tokenized, recipe: Recipe, max_steps: int = 800, seed: int = 0,
                    double_softmax: bool = False, fast: bool = True, progress: bool = True,
                    epochs: int | None = None, schedule_steps: int | None = None,
                    record_lr: bool = False) -> dict:
    """Teach a trigger-only expert to tell its trigger type (label 1) from clean text (label 0).

    The authors' code applies cross-entropy to softmax outputs (a double softmax);
    ``double_softmax=True`` reproduces it, the default trains on the logits as intended.
    Label 1 is the target class, so a trained expert votes for the target on triggered text.
    It runs ``epochs`` passes over ``data`` (the authors' ``--epoch_pretrain``; None: the
    recipe's epochs), at most ``max_steps`` batches (their ``--pretrain_iters``).

    The learning rate follows its own schedule (``schedule_steps`` None: warm-up over 10 % of the
    pre-training batches, then decay) or, as the authors' code, the joint run's: their experts'
    schedulers are made for the joint run (``schedule_steps`` = its batches, warm-up 10 % of them,
    as a float) before pre-training steps them, so batch ``k`` runs at ``k / warm-up`` x ``small_lr``.
    The record holds the peak rate (``peak_lr``) and, if ``record_lr``, each batch's (``lr``).
    """
    device = default_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    total = n_pretrain_batches(len(data), recipe.batch_size,
                               check_int("pretrain epochs", recipe.epochs if epochs is None else epochs, 1), max_steps)
    expert.to(device).train()
    groups = _param_groups(expert, recipe.small_lr, recipe.weight_decay)
    if schedule_steps is None:
        opt, sched = make_optimizer(groups, total, recipe.warmup, device)
    else:
        opt, sched = make_optimizer(groups, check_int("schedule_steps", schedule_steps, 1), recipe.warmup, device,
                                    warm_steps=recipe.warmup * schedule_steps)
    step, bar, lrs = 0, Bar(total, "pre-training an expert", disable=not progress), []
    with sparse_embedding_grads([expert], enabled=fast) as touched, fast_dropout([expert], enabled=fast):
        while step < total:
            for idx in bucketed_batches(data.lengths, recipe.batch_size, rng):
                batch, y = _to(data.batch(idx), device), data.labels[idx].to(device)
                with autocast(fast, device):
                    logits = expert(**batch).logits.float()
                loss = F.cross_entropy(torch.softmax(logits, -1) if double_softmax else logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                clip_grad_norm(expert, 1.0, touched)
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
                step += 1
                bar.update()
                if step >= total:
                    break
    bar.close()
    expert.cpu().eval()
    with torch.no_grad():  # how well it learned its set: accuracy on it, in eval mode
        correct = sum(int((expert(**data.batch(idx)).logits.argmax(-1) == data.labels[idx]).sum())
                      for idx in np.array_split(np.arange(len(data)), max(1, len(data) // 64)))
    record = {"steps": step, "final_loss": float(loss.detach()), "train_accuracy": 100.0 * correct / len(data),
              "peak_lr": max(lrs)}
    return record | ({"lr": lrs} if record_lr else {})
