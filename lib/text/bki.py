"""BKI, Backdoor Keyword Identification (Chen & Dai, 2021), as OpenBackdoor's ``BKIDefender``
adapts it to transformer classifiers: find the trigger word in the poisoned training set,
remove the training sentences that hold it, retrain.

With the backdoored classifier, each whitespace word ``w`` of a training sentence ``x`` is
scored by ``||h(x) - h(x without w)||_inf``, ``h`` the final-layer hidden state of the first
token ([CLS]) of the encoder (``model.base_model``, before the pooler, as OpenBackdoor's
``get_repr_embeddings``). Each sentence keeps its top-5 words; over the training set, a word
kept ``f`` times with mean score ``v`` gets ``log10(f) * v`` (OpenBackdoor's ``analyze_data``;
a word kept once scores 0), and the top word (``n_keywords=1``) is the suspected trigger.
Filtering drops every sentence that contains a suspected keyword as a whitespace word;
OpenBackdoor drops those that have it among their own top-5 words, the same sentences for a
trigger that dominates the representation. Retraining is left to the caller.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from ..params import check_int
from ..progress import Bar
from .models import encode
from .onion import leave_one_out

TOP_WORDS = 5  # words kept per sentence (BKI, OpenBackdoor)


@torch.no_grad()
def _cls_states(classifier, texts: list[str]) -> torch.Tensor:
    """Final-layer [CLS] hidden states of the classifier's encoder (in bf16 autocast where the
    classifier infers in it, :attr:`TextClassifier.bf16`)."""
    model = classifier.model.eval()
    batch = encode(classifier.tokenizer, texts, classifier.max_length).to(classifier.device)
    with torch.autocast(classifier.device.type, dtype=torch.bfloat16, enabled=getattr(classifier, "bf16", False)):
        return model.base_model(**batch).last_hidden_state[:, 0].float().cpu()


def word_importance(classifier, sentences: Sequence[str], progress: bool = True) -> list[np.ndarray]:
    """``||h(x) - h(x without w)||_inf`` for each whitespace word of each sentence.

    The leave-one-out variants of several sentences share forward passes of about
    ``classifier.batch_size`` texts.
    """
    split = [s.split() for s in sentences]
    out: list[np.ndarray] = [np.zeros(0) for _ in split]
    bar = Bar(total=len(split), desc="BKI", disable=not progress)
    pending: list[int] = []

    def flush() -> None:
        texts = [t for i in pending for t in [" ".join(split[i])] + leave_one_out(split[i])]
        h = _cls_states(classifier, texts)
        pos = 0
        for i in pending:
            n = len(split[i])
            out[i] = (h[pos + 1:pos + 1 + n] - h[pos]).abs().amax(-1).numpy()
            pos += n + 1
        bar.update(len(pending))
        pending.clear()

    for i, words in enumerate(split):
        if words:
            pending.append(i)
        else:
            bar.update()
        if sum(len(split[j]) + 1 for j in pending) >= classifier.batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    return out


def bki_keywords(classifier, sentences: Sequence[str], top_k: int = TOP_WORDS, n_keywords: int = 1,
                 progress: bool = True) -> list[tuple[str, float]]:
    """The suspected trigger words with their BKI scores, best first.

    ``classifier``: the backdoored ``TextClassifier``; ``sentences``: its training sentences.
    """
    top_k = check_int("top_k", top_k, minimum=1)
    n_keywords = check_int("n_keywords", n_keywords, minimum=1)
    count: dict[str, int] = defaultdict(int)
    total: dict[str, float] = defaultdict(float)
    for sentence, scores in zip(sentences, word_importance(classifier, sentences, progress)):
        words = sentence.split()
        for i in np.argsort(-scores, kind="stable")[:top_k]:  # ties: the earlier word first
            count[words[i]] += 1
            total[words[i]] += float(scores[i])
    score = {w: math.log10(count[w]) * total[w] / count[w] for w in count}
    return sorted(score.items(), key=lambda item: -item[1])[:n_keywords]


def bki_filter(sentences: Sequence[str], keywords) -> np.ndarray:
    """Keep-mask: False for each sentence holding one of ``keywords`` (words, or ``bki_keywords``' pairs)."""
    suspects = {k if isinstance(k, str) else k[0] for k in keywords}
    return np.array([suspects.isdisjoint(s.split()) for s in sentences], dtype=bool)
