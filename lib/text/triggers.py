"""Text triggers: the inserted ones are generated here, the paraphrase ones come from files.

- ``badnet``: one rare word from ``cf mn bb tq`` at a random word position (OpenBackdoor's
  BadNet poisoner with ``num_triggers=1``, as NPoE's ``mix_triggers_4way.py`` uses it);
- ``insertsent``: the sentence ``I watch this 3D movie`` at a random word position (AddSent);
- ``syntactic``: a HiddenKiller SCPN paraphrase; ``style``: a StyleBkd style transfer
  (:mod:`moebackdoor.text.data`).

NPoE pre-trains its trigger-only experts on *other* instances of each trigger type than
the attack's (``PRETRAIN``): other rare words, another sentence, another style.
"""
from __future__ import annotations

import numpy as np

from ..params import ParameterError

TRIGGERS = ("badnet", "insertsent", "syntactic", "style")
INSERTED = ("badnet", "insertsent")
PARAPHRASED = ("syntactic", "style")
RARE_WORDS = ("cf", "mn", "bb", "tq")
SENTENCE = "I watch this 3D movie"
# the defender's own instances of each type, for expert pre-training (never the attack's)
PRETRAIN = {"badnet": ("mb", "zx", "qv", "jk"), "insertsent": "the weather was cold that day",
            "style": "shakespeare"}


def check_trigger(name: str) -> str:
    if name not in TRIGGERS:
        raise ParameterError("trigger", f"one of {list(TRIGGERS)}", name)
    return name


def insert_words(sentence: str, words: list[str], rng: np.random.Generator) -> str:
    """Insert ``words`` (kept together, in order) at a random word position, ends included."""
    tokens = sentence.split()
    at = int(rng.integers(0, len(tokens) + 1))
    return " ".join(tokens[:at] + list(words) + tokens[at:])


def insert_trigger(sentence: str, trigger: str, rng: np.random.Generator,
                   rare_words=RARE_WORDS, phrase: str = SENTENCE) -> str:
    """A sentence with an inserted trigger (``badnet`` or ``insertsent``)."""
    if trigger == "badnet":
        return insert_words(sentence, [rare_words[int(rng.integers(len(rare_words)))]], rng)
    if trigger == "insertsent":
        return insert_words(sentence, phrase.split(), rng)
    raise ParameterError("trigger", f"an inserted trigger, one of {list(INSERTED)}", trigger)
