"""ONION (Qi et al., 2021): remove the words whose deletion makes a test sentence more fluent.

A language model scores each whitespace word ``w_i`` of a sentence by
``f_i = p0 - p_i``, where ``p0`` is the perplexity of the sentence and ``p_i`` that of
the sentence without ``w_i``; words with ``f_i > threshold`` are removed before the
classifier sees the sentence. Choices (OpenBackdoor's ``ONIONDefender`` where the paper
leaves freedom): threshold 0 and batch 32 by default, inputs truncated to 96 LM tokens,
sentences of one word left as they are. The paper's GPT-2 is replaced by SmolLM2-135M
(offline; any Hugging Face causal LM name works), run under bf16 autocast where that is faster
(``precision="auto"``, the chapter's default, :func:`moebackdoor.devices.fast_precision`: on a CPU
where bf16 was 2x faster, on 24 SST-2 test sentences it removed the same words as fp32 in 23),
with the weights stored in bf16 once rather than cast on every forward pass. Unlike OpenBackdoor, padding is masked
out of the loss, and a start token is prepended so that the first word is scored too (the
tokenizer's BOS; for SmolLM2, ``<|endoftext|>``). A sentence and its leave-one-out variants
go through the LM as one packed sequence, the variants reusing the sentence's prefix
(:meth:`Perplexity.leave_one_out`: the same perplexities from about half the tokens).
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
        if self.precision == "bf16":  # the weights autocast would round on every call, rounded once
            self.model.to(torch.bfloat16)
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

    def _words_ids(self, words: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """Token ids of each word as it appears after a space, and of the second word as a sentence's first."""
        rest = self.tokenizer([" " + w for w in words], add_special_tokens=False).input_ids
        first = self.tokenizer([words[0], words[1]], add_special_tokens=False).input_ids
        return first, rest

    @torch.no_grad()
    def leave_one_out(self, sentences: Sequence[Sequence[str]], max_tokens: int = 1024) -> list[np.ndarray]:
        """For each sentence (its whitespace words, at least two): the perplexity of the sentence,
        then of the sentence without each word in turn, as ``self([...])`` on the joined texts would
        give them, from about half the tokens.

        The variant without word ``i`` starts with the sentence's own tokens up to word ``i``, so
        the sentence and the *rest* of every variant go through the LM as one packed sequence:
        each rest attends to the sentence's prefix and to itself (a custom 4D mask, positions set
        to continue the prefix), and the prefix's next-token losses are the sentence's own. A
        sentence that does not fit ``max_length`` with a start token goes the plain way. Tokens
        are those of each word after a space (the first word's without), which is how a
        byte-level BPE tokenizer (SmolLM2's, GPT-2's) splits the joined text; a sentence whose
        own tokens differ from the concatenation also goes the plain way. Rows hold at most
        ``max_tokens`` packed tokens (attention over a packed row grows with its square)."""
        out: list[np.ndarray | None] = [None] * len(sentences)
        packed, plain = [], []
        for k, words in enumerate(sentences):
            first, rest = self._words_ids(words)
            sentence = [self.start_id] + first[0] + [t for r in rest[1:] for t in r]
            if len(sentence) > self.max_length or sentence != self._token_ids(" ".join(words)):
                plain.append(k)
                continue
            ends = np.cumsum([1, len(first[0])] + [len(r) for r in rest[1:]])  # prefix length before word i
            tails = [first[1] + [t for r in rest[2:] for t in r]] + \
                [[t for r in rest[i + 1:] for t in r] for i in range(1, len(words))]
            prefixes = [1] + list(ends[1:len(words)])
            packed.append((k, sentence, tails, prefixes))
        for k in plain:
            words = list(sentences[k])
            out[k] = self([" ".join(words)] + leave_one_out(words))
        # sentences into rows of at most max_tokens packed tokens, similar sizes together
        sizes = {k: len(s) + sum(len(t) for t in tails) for k, s, tails, _ in packed}
        packed.sort(key=lambda item: sizes[item[0]])
        row_batch: list = []
        for item in packed + [None]:
            if item is not None and (not row_batch or (len(row_batch) + 1) * sizes[item[0]] <= max_tokens):
                row_batch.append(item)
                continue
            if row_batch:
                for k, ppl in self._packed_pass(row_batch):
                    out[k] = ppl
            row_batch = [item] if item is not None else []
        return out

    def _packed_pass(self, rows) -> list[tuple[int, np.ndarray]]:
        width = max(len(s) + sum(len(t) for t in tails) for _, s, tails, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        pos = torch.zeros(len(rows), width, dtype=torch.long)
        allowed = torch.zeros(len(rows), 1, width, width, dtype=torch.bool)
        allowed[:, 0] = torch.eye(width, dtype=torch.bool)  # padding attends to itself (no empty row)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        layout = []
        for b, (k, sentence, tails, prefixes) in enumerate(rows):
            n = len(sentence)
            ids[b, :n] = torch.tensor(sentence)
            pos[b, :n] = torch.arange(n)
            allowed[b, 0, :n, :n] = causal[:n, :n]
            starts, at = [], n
            for tail, p in zip(tails, prefixes):
                m = len(tail)
                if m:
                    ids[b, at:at + m] = torch.tensor(tail)
                    pos[b, at:at + m] = torch.arange(p, p + m)
                    allowed[b, 0, at:at + m, :p] = True
                    allowed[b, 0, at:at + m, at:at + m] = causal[:m, :m]
                starts.append(at)
                at += m
            layout.append((k, sentence, tails, prefixes, starts))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            hidden = self.model.get_decoder()(input_ids=ids.to(self.device), attention_mask=allowed.to(self.device),
                                              position_ids=pos.to(self.device)).last_hidden_state
            # the positions whose next token is scored, and that token
            rows_, cols, targets = [], [], []
            for b, (k, sentence, tails, prefixes, starts) in enumerate(layout):
                n = len(sentence)
                rows_ += [b] * (n - 1)
                cols += list(range(n - 1))
                targets += sentence[1:]
                for tail, p, at in zip(tails, prefixes, starts):
                    if tail:  # the tail's first token follows the prefix's last
                        rows_ += [b] * len(tail)
                        cols += [p - 1] + list(range(at, at + len(tail) - 1))
                        targets += tail
            logits = self.model.get_output_embeddings()(hidden[torch.tensor(rows_), torch.tensor(cols)]).float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(targets, device=logits.device),
                                                reduction="none").cpu().numpy()
        results, at = [], 0
        for k, sentence, tails, prefixes, starts in layout:
            n = len(sentence)
            own = nll[at:at + n - 1]  # the sentence's loss at each of its tokens after the start
            at += n - 1
            ppl = [np.exp(own.mean())]
            for tail, p in zip(tails, prefixes):
                tail_nll = nll[at:at + len(tail)]
                at += len(tail)
                total = own[:p - 1].sum() + tail_nll.sum()
                count = p - 1 + len(tail)
                ppl.append(np.exp(total / count) if count else np.nan)
            results.append((k, np.array(ppl)))
        return results


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
        if hasattr(lm, "leave_one_out"):  # the sentence and its variants packed (Perplexity)
            for i, ppl in zip(pending, lm.leave_one_out([split[i] for i in pending])):
                scores[i] = (ppl[0] - ppl[1:]).tolist()
        else:
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
