"""The text datasets and the pre-generated paraphrase triggers, checked against MANIFEST.md.

Clean sets (NPoE's / DPoE's TSVs): SST-2, OffensEval (OLID task A), TREC-6 and HateSpeech.
Paraphrase triggers come pre-generated, because their generators (SCPN, StyleBkd's GPT-2
paraphrasers) are large models:

- syntactic (HiddenKiller, SCPN template ``S(SBAR)(,)(NP)(VP)(.)``): SST-2 and OffensEval;
- style (StyleBkd): SST-2 and HateSpeech in five styles (Bible by default).

TREC has neither, and OffensEval has no style set: the chapter says so and runs what exists.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..manifest import DataError, data_file
from ..params import ParameterError

SPLITS = ("train", "dev", "test")
# name: (folder, file pattern, classes, name in the paraphrase folders)
DATASETS = {
    "sst2": ("sst2", "{split}.tsv.gz", 2, "sst-2"),
    "offenseval": ("olid", "{split}.tsv.gz", 2, "offenseval"),
    "trec": ("trec", "npoe_{split}.tsv.gz", 6, None),
    "hatespeech": ("hatespeech", "{split}.tsv.gz", 2, "hate-speech"),
}
# rows per split, checked on load (the manifest's counts)
SIZES = {"sst2": (6920, 872, 1821), "offenseval": (11915, 1323, 859), "trec": (5452, 500, 500),
         "hatespeech": (7074, 1000, 2000)}
STYLES = ("bible", "shakespeare", "tweets", "lyrics", "poetry")
SYNTACTIC_DATASETS = ("sst2", "offenseval")
STYLE_DATASETS = ("sst2", "hatespeech")


@dataclass
class TextSet:
    sentences: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.sentences)

    def subset(self, idx) -> "TextSet":
        idx = np.asarray(idx, dtype=np.int64)
        return TextSet([self.sentences[i] for i in idx], self.labels[idx])


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ParameterError("dataset", f"one of {list(DATASETS)}", name)
    return name


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ParameterError("style", f"one of {list(STYLES)}", style)
    return style


def read_tsv(relative: str) -> TextSet:
    """A two-column TSV (sentence, label; the headers and spacing vary between sources)."""
    path = data_file(relative)
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, dtype=str)
        sentences = df.iloc[:, 0].str.strip().tolist()
        labels = df.iloc[:, 1].str.strip().astype(int).to_numpy()
    except (ValueError, IndexError, pd.errors.ParserError) as e:
        raise DataError(f"{path} is not a sentence<TAB>label file: {e}") from e
    return TextSet(sentences, labels)


@functools.lru_cache(maxsize=16)
def load_split(dataset: str, split: str) -> TextSet:
    """One split of a clean dataset, checked by sha256 and by its row count."""
    folder, pattern, _, _ = DATASETS[check_dataset(dataset)]
    if split not in SPLITS:
        raise ParameterError("split", f"one of {list(SPLITS)}", split)
    data = read_tsv(f"{folder}/{pattern.format(split=split)}")
    expected = SIZES[dataset][SPLITS.index(split)]
    if len(data) != expected:
        raise DataError(f"{dataset} {split} has {len(data)} rows, expected {expected}")
    return data


def n_classes(dataset: str) -> int:
    return DATASETS[check_dataset(dataset)][2]


@dataclass
class Paraphrases:
    """Paraphrased (triggered) training sentences and a triggered non-target test set.

    ``train_rows[i]`` is the clean training row that ``train_sentences[i]`` paraphrases, or -1
    where the file is not row-aligned with the clean set (then a poisoned row takes a paraphrase
    of some other sentence: the trigger is the same, the content differs).
    """
    train_sentences: list[str]
    train_rows: np.ndarray
    test: TextSet  # original (non-target) labels where known; -1 where the file only gives the target


def _normal(sentence: str) -> str:
    return sentence.strip().strip('"').replace('""', '"').strip()


def _paraphrase_files(kind: str, dataset: str, style: str) -> str:
    name = DATASETS[check_dataset(dataset)][3]
    if kind == "syntactic":
        if dataset not in SYNTACTIC_DATASETS:
            raise DataError(f"no pre-generated syntactic (HiddenKiller) set for {dataset}; "
                            f"there is one for {list(SYNTACTIC_DATASETS)}")
        return f"poison/hiddenkiller_syntactic/{name}"
    if dataset not in STYLE_DATASETS:
        raise DataError(f"no pre-generated style (StyleBkd) set for {dataset}; "
                        f"there is one for {list(STYLE_DATASETS)}")
    return f"poison/stylebkd_transfer/{check_style(style)}/{name}"


@functools.lru_cache(maxsize=16)
def load_paraphrases(kind: str, dataset: str, style: str = "bible", target: int = 1) -> Paraphrases:
    folder = _paraphrase_files(kind, dataset, style)
    clean = load_split(dataset, "train")
    train = read_tsv(f"{folder}/train.tsv.gz")
    known = {_normal(s) for s in clean.sentences}
    aligned = len(train) == len(clean)
    # StyleBkd's train file is the whole set paraphrased. HiddenKiller's is the poisoned set itself:
    # its paraphrases are the new sentences labelled with the target, lower-cased by SCPN (OffensEval's
    # other rows differ from the clean file only in quoting)
    new = [i for i, s in enumerate(train.sentences) if _normal(s) not in known]
    if kind == "syntactic":
        new = [i for i in new if train.labels[i] == target and train.sentences[i] == train.sentences[i].lower()]
    rows = np.array(new, dtype=np.int64)
    sentences = [train.sentences[i] for i in rows]
    train_rows = rows if aligned else np.full(len(rows), -1, dtype=np.int64)
    test = read_tsv(f"{folder}/test.tsv.gz")
    if kind == "syntactic":  # already the non-target test sentences, labelled with the target
        test = TextSet(test.sentences, np.full(len(test), -1, dtype=np.int64))
    else:
        test = test.subset(np.flatnonzero(test.labels != target))
    return Paraphrases(sentences, train_rows, test)
