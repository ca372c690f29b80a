"""One recipe per paper section; each is a short script over the shared components."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from ..errors import InvalidArgument
from ..train.run import RunDirectory


def choose_preset(presets: dict[str, dict], name: str) -> dict:
    """A recipe's settings for preset ``name`` (smoke / small / paper), or an error naming the known ones."""
    if name not in presets:
        raise InvalidArgument(f"unknown preset {name!r}; use one of {', '.join(presets)}")
    return presets[name]


def owns_run(run: Callable) -> Callable:
    """A recipe's ``run(preset, data_dir, out, resume, ...)`` with its output directory held for the whole command
    (:class:`~roformer.train.run.RunDirectory`): locked against a second process, refused when it holds another
    run unless resumed, and the recipe and preset recorded, before any work (a vocabulary learnt on the data
    included)."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def held(*args, **kwargs):
        given = signature.bind(*args, **kwargs)
        given.apply_defaults()
        with RunDirectory(given.arguments["out"], resume=given.arguments["resume"]) as owner:
            owner.begin({"recipe": run.__module__.rsplit(".", 1)[-1], "preset": given.arguments["preset"]})
            return run(*args, **kwargs)

    return held
