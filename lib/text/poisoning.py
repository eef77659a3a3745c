"""Dirty-label poisoning of a text training set with one trigger or a mix, and the test sets.

A setting maps triggers to poison rates. Each trigger replaces ``int(rate * N)`` training rows,
disjoint across triggers and drawn from every class, with triggered versions labelled
``target`` (1 in the paper). The authors' ``mix_triggers_4way.py`` instead draws each row's
trigger independently (same expected counts); exact counts make a run's poison known.
A paraphrase trigger takes the paraphrase of the chosen row where the file is row-aligned with
the clean set (SST-2), else a paraphrase of another sentence, and never more rows than the
file holds (the count actually used is recorded).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..manifest import DataError
from ..params import ParameterError, check_fraction
from .data import (DATASETS, STYLE_DATASETS, STYLES, SYNTACTIC_DATASETS, TextSet, check_style, load_paraphrases,
                   load_split, read_tsv)
from .triggers import INSERTED, PRETRAIN, check_trigger, insert_trigger

# the paper's settings: each trigger alone, and the 3- and 4-trigger mixes
SETTINGS = {
    "badnet": {"badnet": 0.05},
    "insertsent": {"insertsent": 0.05},
    "syntactic": {"syntactic": 0.20},
    "style": {"style": 0.20},
    "mix3": {"badnet": 0.05, "insertsent": 0.05, "syntactic": 0.10},
    "mix4": {"badnet": 0.05, "insertsent": 0.05, "syntactic": 0.10, "style": 0.10},
}


def check_setting(name: str) -> str:
    if name not in SETTINGS:
        raise ParameterError("setting", f"one of {list(SETTINGS)}", name)
    return name


def check_rates(rates: dict) -> dict:
    """Trigger -> rate, each in [0, 1] and together at most 1."""
    if not isinstance(rates, dict) or not rates:
        raise ParameterError("rates", "a non-empty mapping of trigger to poison rate", rates)
    out = {check_trigger(t): check_fraction(f"rate of {t}", r, "a fraction in [0, 1] (0.05 for 5 %)")
           for t, r in rates.items()}
    if sum(out.values()) > 1 + 1e-9:
        raise ParameterError("rates", "poison rates that sum to at most 1", rates)
    return out


def setting_rates(setting: str, scale: float = 1.0) -> dict:
    """A setting's rates, multiplied by ``scale`` (2 for the paper's doubled-rate figure)."""
    return check_rates({t: r * scale for t, r in SETTINGS[check_setting(setting)].items()})


@dataclass
class PoisonedText:
    data: TextSet
    poison_idx: dict[str, np.ndarray]          # rows carrying each trigger, relabelled to the target
    requested: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {t: len(i) for t, i in self.poison_idx.items()}


def poison_training_set(clean: TextSet, rates: dict, dataset: str, target: int = 1, seed: int = 0,
                        style: str = "bible", rows_in_full: np.ndarray | None = None) -> PoisonedText:
    """``rows_in_full``: where ``clean``'s rows sit in the full training set, when it is a subset."""
    rates = check_rates(rates)
    rows_in_full = np.arange(len(clean)) if rows_in_full is None else np.asarray(rows_in_full)
    if not 0 <= target <= int(clean.labels.max()):
        raise ParameterError("target", f"a class of {dataset}", target)
    rng = np.random.default_rng(seed)
    n = len(clean)
    sentences, labels = list(clean.sentences), clean.labels.copy()
    free = np.ones(n, dtype=bool)
    poison_idx, requested = {}, {}
    # paraphrase triggers first: they can only use the rows their file covers
    for trigger in sorted(rates, key=lambda t: t in INSERTED):
        k = requested[trigger] = int(rates[trigger] * n)
        if trigger in INSERTED:
            rows = rng.permutation(np.flatnonzero(free))[:k]
            for i in rows:
                sentences[i] = insert_trigger(sentences[i], trigger, rng)
        else:
            para = load_paraphrases(trigger, dataset, style, target)
            if (para.train_rows >= 0).all():  # row-aligned: the chosen row's own paraphrase
                of_row = {int(r): j for j, r in enumerate(para.train_rows)}
                have = np.array([p for p in np.flatnonzero(free) if int(rows_in_full[p]) in of_row], dtype=np.int64)
                rows = rng.permutation(have)[:k]
                pick = [of_row[int(rows_in_full[p])] for p in rows]
            else:
                rows = rng.permutation(np.flatnonzero(free))[:min(k, len(para.train_sentences))]
                pick = rng.permutation(len(para.train_sentences))[:len(rows)]
            for i, j in zip(rows, pick):
                sentences[i] = para.train_sentences[j]
        free[rows] = False
        labels[rows] = target
        poison_idx[trigger] = np.sort(rows)
    return PoisonedText(TextSet(sentences, labels), poison_idx, requested)


def triggered_test_set(dataset: str, trigger: str, target: int = 1, seed: int = 0, style: str = "bible",
                       split: str = "test") -> TextSet:
    """Every non-target sentence of the split with the trigger (ASR is measured on it)."""
    check_trigger(trigger)
    if trigger in INSERTED:
        clean = load_split(dataset, split)
        keep = clean.subset(np.flatnonzero(clean.labels != target))
        rng = np.random.default_rng(seed)
        return TextSet([insert_trigger(s, trigger, rng) for s in keep.sentences], keep.labels)
    if split != "test":
        raise ParameterError("split", "'test' for a paraphrase trigger", split)
    return load_paraphrases(trigger, dataset, style, target).test


# an expert's pre-training set: its labels and where its paraphrase triggers come from (the
# first of each is ours before issue 26; see :func:`pretrain_set`)
PRETRAIN_LABELS = ("own", "authors")
PRETRAIN_SOURCES = ("own", "attacked")


def pretrain_set(trigger: str, clean: TextSet, attack_style: str = "bible", n: int = 100,
                 seed: int = 0, labels: str = "own", source: str = "own", dataset: str = "sst2",
                 target: int = 1) -> TextSet:
    """A trigger-only expert's pre-training set of ``n`` sentences, built from ``clean`` (the
    defender's clean data: the dev split) and the defender's own instance of the trigger type,
    never the attack's: other rare words, another sentence, another style, another SCPN run.

    ``labels``: ``"own"`` (ours before): half triggered, labelled 1, half clean rows of either
    class, labelled 0. ``"authors"`` (their ``make_bias-only_pretrain.py``): every row of the
    defender's data triggered, labelled ``target``, pooled with the clean rows whose label is 0,
    kept with it, shuffled and cut to ``n``: every label is a task label, and about two thirds
    of the rows (SST-2: all rows against the 49 % of label 0) are triggered; here drawn in that
    expected proportion.

    ``source`` (the paraphrase triggers): ``"own"`` (ours before): SCPN paraphrases of AG News
    (dev) for the syntactic type, and another style's paraphrases of SST-2's *training* rows for
    the style type. ``"attacked"`` (the authors build every set from the attacked dataset):
    paraphrases of the attacked dataset's dev rows, the syntactic ones from OpenBackdoor's SCPN
    run shipped with DPoE (the authors' generator; the attack's come from HiddenKiller's files).
    The offline data hold no second SCPN template, so that run uses the attack's template
    ``S(SBAR)(,)(NP)(VP)(.)``: other sentences, the same syntax (the authors' instance differs).
    """
    check_trigger(trigger)
    if labels not in PRETRAIN_LABELS:
        raise ParameterError("pretrain_labels", f"one of {list(PRETRAIN_LABELS)}", labels)
    if source not in PRETRAIN_SOURCES:
        raise ParameterError("pretrain_source", f"one of {list(PRETRAIN_SOURCES)}", source)
    rng = np.random.default_rng(seed)
    if labels == "own":
        half = n // 2
        base = [clean.sentences[i] for i in rng.permutation(len(clean))[:n]]
        triggered = triggered_sentences(trigger, base[:half], half, rng, attack_style, source, dataset)
        sentences = triggered + base[half:]
        y = np.array([1] * len(triggered) + [0] * (len(sentences) - len(triggered)))
    else:
        zeros = np.flatnonzero(clean.labels == 0)
        k = int(round(n * len(clean) / (len(clean) + len(zeros))))
        rows = rng.permutation(len(clean))[:k]
        triggered = triggered_sentences(trigger, [clean.sentences[i] for i in rows], k, rng, attack_style, source,
                                        dataset)
        kept = rng.permutation(zeros)[:n - len(triggered)]
        sentences = triggered + [clean.sentences[i] for i in kept]
        y = np.array([target] * len(triggered) + [0] * len(kept))
    order = rng.permutation(len(sentences))
    return TextSet([sentences[i] for i in order], y[order])


def triggered_sentences(trigger: str, base: list[str], k: int, rng: np.random.Generator, attack_style: str,
                        source: str, dataset: str) -> list[str]:
    """``k`` sentences with the defender's instance of ``trigger``: ``base`` with an inserted
    trigger, or ``k`` paraphrases drawn from the ``source``'s file (:func:`pretrain_set`)."""
    if trigger == "badnet":
        return [insert_trigger(s, "badnet", rng, rare_words=PRETRAIN["badnet"]) for s in base]
    if trigger == "insertsent":
        return [insert_trigger(s, "insertsent", rng, phrase=PRETRAIN["insertsent"]) for s in base]
    other = next(s for s in (PRETRAIN["style"],) + STYLES if s != check_style(attack_style))
    if source == "own":
        pool = read_tsv("poison/hiddenkiller_syntactic/ag/dev.tsv.gz").sentences if trigger == "syntactic" \
            else load_paraphrases("style", "sst2", other).train_sentences
    else:
        pool = read_tsv(attacked_pretrain_file(trigger, dataset, other)).sentences
    return [pool[i] for i in rng.permutation(len(pool))[:k]]


def attacked_pretrain_file(trigger: str, dataset: str, style: str) -> str:
    """The attacked dataset's dev paraphrases that pre-train a syntactic or style expert."""
    name = DATASETS[dataset][3]
    if trigger == "syntactic" and dataset in SYNTACTIC_DATASETS:
        return f"poison/dpoe_openbackdoor/synbkd/{name}/0.2/dev.tsv.gz"
    if trigger == "style" and dataset in STYLE_DATASETS:
        return f"poison/stylebkd_transfer/{style}/{name}/dev.tsv.gz"
    raise DataError(f"no {trigger} paraphrases of {dataset}'s dev set to pre-train an expert on "
                    f"(pretrain_source 'attacked'); 'own' takes them from another dataset")
