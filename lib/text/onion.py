"""ONION (Qi et al., 2021): remove the words whose deletion makes a test sentence more fluent.

A language model scores each whitespace word ``w_i`` of a sentence by
``f_i = p0 - p_i``, where ``p0`` is the perplexity of the sentence and ``p_i`` that of
the sentence without ``w_i``; words with ``f_i > threshold`` are removed before the
classifier sees the sentence. Choices (OpenBackdoor's ``ONIONDefender`` where the paper
leaves freedom): threshold 0 and batch 32 by default, inputs truncated to 96 LM tokens,
sentences of one word left as they are. The paper's GPT-2 is replaced by SmolLM2-135M
(offline; any Hugging Face causal LM name works), run under bf16 autocast where that is faster
(``precision="auto"``, the chapter's default, :func:`moebackdoor.devices.fast_precision`: on a CPU
where bf16 was 2x faster, on 24 SST-2 test sentences it removed the same words as fp32 in 23). Unlike OpenBackdoor, padding is masked
out of the loss, and a start token is prepended so that the first word is scored too (the
tokenizer's BOS; for SmolLM2, ``<|endoftext|>``). The leave-one-out variants of several
sentences share forward passes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .. import metrics, pretrained
from ..devices import fast_precision
from ..params import ParameterError, check_int
from ..progress import Bar

DEFAULT_LM = pretrained.SMOLLM
MAX_LM_TOKENS = 96  # OpenBackdoor's GPT2LM max_length
PRECISIONS = ("auto", "bf16", "fp32")  # the LM's forward pass: bf16 autocast, plain fp32, or the faster here
# SmolLM2-Instruct's BOS is its chat token <|im_start|>; its pretraining documents follow
# <|endoftext|>, after which plain sentences get a lower perplexity
START_TOKEN = {pretrained.SMOLLM: "<|endoftext|>"}


def leave_one_out(words: Sequence[str]) -> list[str]:
    """The sentence without each of its words in turn."""
    return [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]


class Perplexity:
    """Sentence perplexity under a causal LM: ``exp`` of the mean next-token loss after a start token."""

    def __init__(self, name: str = DEFAULT_LM, batch_size: int = 32, max_length: int = MAX_LM_TOKENS,
                 device: str | torch.device | None = None, precision: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.max_length = check_int("max_length", max_length, minimum=1)
        if precision not in PRECISIONS:
            raise ParameterError("precision", f"one of {list(PRECISIONS)}", precision)
        try:
            path = pretrained.causal_lm_path(name)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path)
        except (OSError, ValueError) as e:  # a missing folder or an unknown hub name
            raise ParameterError("lm", "a causal LM name or folder that can be loaded", name) from e
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()
        self.precision = fast_precision(torch.device(device)) if precision == "auto" else precision
        # the token every sentence is scored after: BOS (GPT-2's is its EOS, <|endoftext|>)
        start = START_TOKEN.get(name, self.tokenizer.bos_token or self.tokenizer.eos_token)
        self.start_id = self.tokenizer.convert_tokens_to_ids(start)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids[:self.max_length - 1]
        return [self.start_id] + ids

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Perplexity of each text (``nan`` for an empty text: no token to predict)."""
        ids = [self._token_ids(t) for t in texts]
        out = np.full(len(ids), np.nan)
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths together
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            batch = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):  # right padding; pad positions are masked everywhere
                batch[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            batch, mask = batch.to(self.device), mask.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                logits = self.model(input_ids=batch, attention_mask=mask).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(),
                                                    reduction="none").view(len(idx), width - 1)
            target_mask = mask[:, 1:].float()
            mean_nll = (nll * target_mask).sum(1) / target_mask.sum(1)  # 0/0 = nan for empty texts
            out[idx] = mean_nll.exp().cpu().numpy()
        return out


def batch_suspicion_scores(sentences: Sequence[str], lm: Perplexity, progress: bool = True) -> list[list[float]]:
    """ONION's ``f_i`` for every whitespace word of every sentence (one word: ``[0.0]``, never removed).

    The sentence and its leave-one-out variants of many sentences go through the LM together,
    in chunks of about ``4 * lm.batch_size`` texts.
    """
    split = [s.split() for s in sentences]
    scores: list[list[float]] = [[] for _ in split]
    bar = Bar(total=len(split), desc="ONION", disable=not progress)
    pending: list[int] = []

    def flush() -> None:
        texts = [t for i in pending for t in [" ".join(split[i])] + leave_one_out(split[i])]
        ppl = lm(texts)
        pos = 0
        for i in pending:
            n = len(split[i])
            scores[i] = (ppl[pos] - ppl[pos + 1:pos + 1 + n]).tolist()
            pos += n + 1
        bar.update(len(pending))
        pending.clear()

    for i, words in enumerate(split):
        if len(words) < 2:
            scores[i] = [0.0] * len(words)
            bar.update()
            continue
        pending.append(i)
        if sum(len(split[j]) + 1 for j in pending) >= 4 * lm.batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    return scores


def suspicion_scores(sentence: str, lm: Perplexity) -> list[float]:
    """``f_i = p0 - p_i`` for each whitespace word of one sentence."""
    return batch_suspicion_scores([sentence], lm, progress=False)[0]


def remove_suspicious(sentence: str, scores: Sequence[float], threshold: float) -> str:
    """The sentence without its words scored above ``threshold`` (a one-word sentence stays)."""
    words = sentence.split()
    if len(words) < 2:
        return sentence
    return " ".join(w for w, f in zip(words, scores) if not f > threshold)


def onion_filter(sentences: Sequence[str], lm: Perplexity, threshold: float = 0.0,
                 progress: bool = True) -> list[str]:
    """Each sentence with its suspicious words (``f_i > threshold``) removed."""
    scores = batch_suspicion_scores(sentences, lm, progress)
    return [remove_suspicious(s, f, threshold) for s, f in zip(sentences, scores)]


def choose_threshold(clean_dev_sentences: Sequence[str], labels, classifier, lm: Perplexity,
                     candidates: Sequence[float], max_drop: float, progress: bool = True) -> float:
    """The smallest (most filtering) candidate threshold whose clean-dev accuracy drop is
    at most ``max_drop`` percentage points; clean dev data only.

    ``classifier`` is anything with ``.predict(sentences)`` (a ``TextClassifier``). If no
    candidate keeps within ``max_drop``, the one with the smallest drop (ties: the larger
    threshold) is returned.
    """
    if not candidates:
        raise ParameterError("candidates", "a non-empty list of thresholds", candidates)
    scores = batch_suspicion_scores(clean_dev_sentences, lm, progress)
    base = metrics.accuracy(classifier.predict(list(clean_dev_sentences)), labels)
    drops = {}
    for t in sorted(set(candidates)):
        filtered = [remove_suspicious(s, f, t) for s, f in zip(clean_dev_sentences, scores)]
        drops[t] = base - metrics.accuracy(classifier.predict(filtered), labels)
    within = [t for t, d in drops.items() if d <= max_drop]
    if within:
        return min(within)
    return min(drops, key=lambda t: (drops[t], -t))
