"""The errors roformer raises for a problem with what it was given (an argument, a config, a file, a run directory),
as opposed to a bug in roformer.

Each one also derives from the built-in type a Python caller would expect (``ValueError``, ``TypeError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working. The ``roformer`` command turns exactly these
(and the operating system's ``OSError``: a missing file, a read-only directory, a full disk) into one line and exit
status 2; any other exception is a bug and is reported as one (exit 1, ``--debug`` for the traceback), never as
a user's mistake. Imports nothing, so the torch-only modules (``rope``, ``attention``, ...) can use it.
"""

from __future__ import annotations

__all__ = ["RoformerError", "InvalidArgument", "InvalidType", "MissingFile", "UnknownName", "RunConflict"]


class RoformerError(Exception):
    """A problem with the input or with the files a command works on, which the message names."""


class InvalidArgument(RoformerError, ValueError):
    """A value out of range, of the wrong shape, or inconsistent with another one."""


class InvalidType(RoformerError, TypeError):
    """A value of the wrong type (e.g. a float tensor where positions must be integers)."""


class MissingFile(RoformerError, FileNotFoundError):
    """A file or directory that should be there is not (a model directory without config.json, ...)."""


class UnknownName(RoformerError, KeyError):
    """A name that is not one of the known ones (a data set, a preset, an output field)."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class RunConflict(RoformerError, ValueError):
    """A run directory that cannot be used as asked: another process holds it, it holds another run, or writing
    would replace work (a trained model, a tokenizer) that the command was not told to replace."""
