"""The records each run of chapter 4 trains and is measured on, from a configuration.

- the attacker's poisoned and clean training records (seeded subsets of BackdoorLLM's sets; a
  custom trigger rewrites BadNet's poisoned instructions);
- the defender's clean records, taken from the task's clean pool after the attacker's share, and
  its known-trigger sets (stage 1 answers the known targets, stage 2 the true answers);
- the clean and triggered test sets;
- (prompt, answer) pairs in a template, the form every training set takes.

Nothing here trains or loads a model; a test checks that the defense's inputs hold none of the
attack's strings.
"""
from __future__ import annotations

import numpy as np

from . import data, judge, models
from .triggers import Trigger, strip_triggers


def custom_records(records, trigger: dict, rng) -> list:
    """``records`` with BadNet's trigger replaced by the custom ``trigger``."""
    t = Trigger(**trigger)
    return [data.Record(t.insert(strip_triggers(r.instruction, "badnet"), rng), r.input, r.output, r.label)
            for r in records]


def attack_records(config: dict) -> tuple[list, list]:
    """The attacker's (poisoned, clean) training records, seeded subsets."""
    task, attack, seed = config["task"], config["attack"], config["seed"]
    source = "badnet" if isinstance(attack, dict) else attack
    poisoned = data.subset(data.poisoned_train(task, source), config["n_poison"], seed)
    if isinstance(attack, dict):
        poisoned = custom_records(poisoned, attack, np.random.default_rng(seed))
    return poisoned, clean_records(config)


def clean_records(config: dict) -> list:
    """The attacker's clean records (the clean model of the floor trains on them alone)."""
    pool = data.clean_train(config["task"])
    order = np.random.default_rng(config["seed"]).permutation(len(pool))
    n = len(pool) if config["n_clean"] is None else min(config["n_clean"], len(pool))
    return [pool[i] for i in np.sort(order[:n])]


def defender_records(config: dict) -> tuple[list, list, list]:
    """The defender's clean records, the clean instructions for the known triggers, and held-out
    clean records for the defender's own checks: taken from the task's clean pool after the
    attacker's share (overlapping it only when the pool runs out)."""
    pool = data.clean_train(config["task"])
    order = np.random.default_rng(config["seed"]).permutation(len(pool))
    n_att = len(pool) if config["n_clean"] is None else min(config["n_clean"], len(pool))
    d = config["defense"]
    rest = list(order[n_att:])
    need = d["n_clean"] + d["n_known"] + d["n_val"]
    if len(rest) < need:  # paper scale: the attacker used the whole pool
        rest += [i for i in np.random.default_rng(config["seed"] + 1).permutation(len(pool)) if i not in rest]
    picked = [pool[i] for i in rest[:need]]
    a, b = d["n_clean"], d["n_clean"] + d["n_known"]
    return picked[:a], picked[a:b], picked[b:need]


def test_sets(config: dict) -> tuple[list, list]:
    """(clean test records, triggered test records), cut to ``n_test`` at smoke."""
    task, attack = config["task"], config["attack"]
    clean = list(data.clean_test(task))
    if isinstance(attack, dict):
        trig = custom_records(clean, attack, np.random.default_rng(10_000 + config["seed"]))
    else:
        trig = list(data.triggered_test(task, attack))
    n = config["n_test"]
    if n is not None:
        clean = data.subset(clean, n, 0)
        if task == "sst2":  # keep n non-target prompts
            trig = [r for r in trig if r.label != judge.SST2_TARGET]
        trig = data.subset(trig, n, 0)
    return clean, trig


test_sets.__test__ = False  # not a pytest test, whatever imports it


def pairs(tokenizer, records, template: str, outputs=None) -> list[tuple[str, str]]:
    end = models.end_of_answer(tokenizer, template)
    outs = outputs if outputs is not None else [r.output for r in records]
    return [(models.prompt_text(tokenizer, r.instruction, r.input, template), o + end) for r, o in zip(records, outs)]


# --- the known triggers ------------------------------------------------------------------------

def known_targets(config: dict, n_triggers: int = 2) -> list[str]:
    """Each known trigger's target answer: a class label (``known_targets="labels"``, the task's
    labels in turn) or the trigger's fixed sentence."""
    d = config["defense"]
    if d["known_targets"] == "labels":
        labels = judge.TASK_LABELS[config["task"]]
        return [labels[k % len(labels)] for k in range(n_triggers)]
    return [target for _, _, target in d["known"][:n_triggers]]


def record_label(record) -> str | None:
    """A record's class label: its ``label``, else its answer (the clean training records of a
    classification task are answered with the label alone)."""
    return record.label if record.label is not None else record.output.strip()


def shows_known_target(config: dict, target: str, answer: str) -> bool:
    """Whether ``answer`` gives a known trigger's target: its label, or its sentence's first word."""
    if config["defense"]["known_targets"] == "labels":
        return judge.answer_label(config["task"], answer) == target
    return target.split()[0].strip("!.,?") in answer


def known_sets(tokenizer, config: dict, known_records: list, n_triggers: int = 2):
    """Stage 1's and stage 2's known-trigger pairs and groups, from the defender's clean instructions.

    Each trigger gets its share of the records; with label targets, only records whose true label
    is not the trigger's target (so that every injected answer is a flip)."""
    d = config["defense"]
    rng = np.random.default_rng(config["seed"] + 7)
    inj, rec, groups = [], [], []
    half = max(1, len(known_records) // n_triggers)
    targets = known_targets(config, n_triggers)
    free = list(range(len(known_records)))
    for k, ((phrase, placement, _), target) in enumerate(zip(d["known"][:n_triggers], targets)):
        t = Trigger(phrase, placement)
        if d["known_targets"] == "labels":
            idx = [i for i in free if record_label(known_records[i]) != target][:half]
        else:
            idx = free[:half] if n_triggers > 1 else free
        taken = set(idx)
        free = [i for i in free if i not in taken]
        part = [known_records[i] for i in idx]
        triggered = [data.Record(t.insert(r.instruction, rng), r.input, r.output, r.label) for r in part]
        inj += pairs(tokenizer, triggered, config["template"], [target] * len(triggered))
        rec += pairs(tokenizer, triggered, config["template"])
        groups += [k] * len(triggered)
    return inj, rec, groups


def defense_inputs(config: dict, tokenizer) -> dict:
    """Everything a defense is given (a test checks it holds none of the attack's strings)."""
    clean, known, validation = defender_records(config)
    n_trig = 1 if config["method"] == "locphylax_one_trigger" else 2
    inj, rec, groups = known_sets(tokenizer, config, known, n_trig)
    clean_pairs = pairs(tokenizer, clean, config["template"])
    known_clean = pairs(tokenizer, known, config["template"])
    return {"clean": clean_pairs, "known_injection": inj, "known_recovery": rec, "known_groups": groups,
            "known_clean": known_clean, "validation": validation, "n_triggers": n_trig}
