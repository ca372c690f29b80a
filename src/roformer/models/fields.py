"""Checks of a config dataclass's fields against their annotated types and ranges, so that a bad value (from
config.json, the command line or the Python API) is one error naming the field and what would be valid, not a
ZeroDivisionError or an IndexError deep in the forward pass, and never a silently wrong model."""

from __future__ import annotations

import dataclasses
import math

from ..errors import InvalidArgument, InvalidType

__all__ = ["check_fields", "POSITIVE", "NON_NEGATIVE", "PROBABILITY", "POSITIVE_FLOAT"]

# (low, high, low open, high open); None: unbounded
POSITIVE = (1, None, False, False)
NON_NEGATIVE = (0, None, False, False)
PROBABILITY = (0.0, 1.0, False, True)  # a dropout rate: 1 would drop everything
POSITIVE_FLOAT = (0.0, None, True, False)

_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
}
_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "dict": "an object"}


def check_fields(config, ranges: dict[str, tuple]) -> None:
    """Every field whose annotation is one of int / float / bool / str / dict (optionally ``| None``) must hold a
    value of that type (an int is accepted for a float, a bool never for a number); floats must be finite; the
    fields named in ``ranges`` must lie in their range."""
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(config, f.name)
        if value is None and "None" in kinds:
            continue
        checked = [k for k in kinds if k in _KINDS]
        if not checked or len(checked) != len([k for k in kinds if k != "None"]):
            continue  # a type this check does not know (tuple, Any, ...)
        if not any(_KINDS[k](value) for k in checked):
            wanted = " or ".join(_NAMES[k] for k in checked) + (" or null" if "None" in kinds else "")
            raise InvalidType(f"{owner}.{f.name} must be {wanted}, got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"{owner}.{f.name} must be a finite number, got {value!r}")
        if f.name in ranges:
            low, high, low_open, high_open = ranges[f.name]
            below = low is not None and (value <= low if low_open else value < low)
            above = high is not None and (value >= high if high_open else value > high)
            if below or above:
                lo = "" if low is None else f"{'(' if low_open else '['}{low}"
                hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
                raise InvalidArgument(f"{owner}.{f.name} must be in {lo or '(-inf'}, {hi}, got {value!r}")
