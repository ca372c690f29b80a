"""One recipe per paper section; each is a short script over the shared components."""

from __future__ import annotations

from ..errors import InvalidArgument


def choose_preset(presets: dict[str, dict], name: str) -> dict:
    """A recipe's settings for preset ``name`` (smoke / small / paper), or an error naming the known ones."""
    if name not in presets:
        raise InvalidArgument(f"unknown preset {name!r}; use one of {', '.join(presets)}")
    return presets[name]
