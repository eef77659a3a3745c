"""Checks for the parameters a reader passes to a chapter: fail before any work, and say
which parameter was wrong and what it accepts.

>>> check_int("seed", -1)
Traceback (most recent call last):
ParameterError: parameter `seed`: expected an integer >= 0, got -1
"""
from __future__ import annotations

from numbers import Integral, Real


class ParameterError(ValueError):
    """A parameter outside what the code accepts."""

    def __init__(self, name: str, expected: str, value):
        self.name = name
        super().__init__(f"parameter `{name}`: expected {expected}, got {value!r}")


def check_int(name: str, value, minimum: int = 0, maximum: int | None = None):
    """An integer in [minimum, maximum] (booleans are not integers here)."""
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum or \
            (maximum is not None and value > maximum):
        raise ParameterError(name, f"an integer {bounds}", value)
    return int(value)


def check_optional_int(name: str, value, minimum: int = 0, maximum: int | None = None):
    """``None`` (the profile's value) or an integer in [minimum, maximum]."""
    return None if value is None else check_int(name, value, minimum, maximum)


def check_fraction(name: str, value, what: str = "a fraction in [0, 1]") -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ParameterError(name, what, value)
    return float(value)


def check_positive(name: str, value, allow_zero: bool = False) -> float:
    """A real number > 0 (a learning rate, a coefficient), or >= 0 with ``allow_zero``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (value >= 0 if allow_zero else value > 0):
        raise ParameterError(name, f"a number {'>=' if allow_zero else '>'} 0", value)
    return float(value)


def check_list(name: str, values, check, allow_none: bool = True):
    """``None`` (the profile's default) or a non-empty list whose items pass ``check(name, item)``."""
    if values is None and allow_none:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not list(values):
        raise ParameterError(name, "a non-empty list" + (" or None" if allow_none else ""), values)
    return [check(name, v) for v in values]


def check_choices(name: str, values, choices) -> list:
    """A non-empty list of items from ``choices``."""
    if isinstance(values, str) or not hasattr(values, "__iter__") or not list(values) or \
            any(v not in choices for v in values):
        raise ParameterError(name, f"a non-empty list of items from {list(choices)}", values)
    return list(values)


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ParameterError(name, f"one of {list(choices)}", value)
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(name, "True or False", value)
    return value
