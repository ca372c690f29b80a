"""Training checkpoints: weights (safetensors), optimizer, scheduler, RNG states and the step (which is the
data position, since batches are a pure function of the step).

A checkpoint is a directory ``checkpoints/step-00001234``. It is written under a temporary name and renamed
into place in one step, so a kill at any moment leaves every earlier checkpoint intact and never a partial
one under a real name; leftover temporary directories of a killed run are removed by the next save or resume.

The trainer state holds only tensors, numbers, strings and containers of them (the numpy RNG state is stored
as a tensor), and is loaded with ``torch.load(weights_only=True)``: a checkpoint from someone else cannot run
code when it is resumed.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from ..errors import InvalidArgument, RoformerError
from ..io import sha256_file, umask_mode

__all__ = ["CorruptCheckpoint", "UnsafeCheckpoint", "DiskFull", "save_checkpoint", "load_checkpoint",
           "remove_temporary", "latest_checkpoint", "list_checkpoints", "average_checkpoints", "rng_state",
           "set_rng_state", "read_trainer_state"]

_NAME = re.compile(r"^step-(\d{8})$")
_DIGESTS = "sha256.json"  # the SHA-256 of each file of the checkpoint, written with them


class CorruptCheckpoint(RoformerError, ValueError):
    """A checkpoint directory that cannot be read back (truncated, or not ours)."""


class UnsafeCheckpoint(RoformerError, ValueError):
    """A trainer state that holds objects other than tensors and plain data: loading it could run code."""


class DiskFull(RoformerError, OSError):
    """No room to write a checkpoint (ENOSPC): the earlier checkpoints are kept."""

    def __init__(self, path: Path, step: int):
        free = shutil.disk_usage(path.parent).free
        super().__init__(errno.ENOSPC, f"no space left on the device to write the checkpoint of step {step} ({free} "
                         "bytes free); the earlier checkpoints are kept: free some space and rerun with --resume",
                         str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or torch's zip writer failing (it reports a short write as
    'unexpected pos', a RuntimeError) on a file system with almost nothing left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, (OSError, RuntimeError, SafetensorError)) and shutil.disk_usage(directory).free < 1 << 20


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint of update ``step`` is saved in a run's ``checkpoints`` directory."""
    return Path(directory) / f"step-{step:08d}"


def save_checkpoint(directory: Path, step: int, model: torch.nn.Module, trainer_state: dict, keep_last: int) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    remove_temporary(directory)
    tmp = directory / f".tmp-step-{step:08d}-{os.getpid()}"
    try:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        digests = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        (tmp / _DIGESTS).write_text(json.dumps(digests, indent=2) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, umask_mode())  # safetensors writes through a private temporary file (0600)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, RuntimeError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e, directory):
            raise DiskFull(final, step) from e
        raise
    if final.exists():  # the same step saved again (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_temporary(directory: Path) -> None:
    """Delete the temporary directories a killed save left behind (never a finished checkpoint)."""
    for leftover in Path(directory).glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def list_checkpoints(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name) and p.is_dir())


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    """Load the weights into ``model`` and return the trainer state (optimizer, scheduler, RNG, step)."""
    path = Path(path)
    state = read_trainer_state(path)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (OSError, RuntimeError, SafetensorError) as e:
        if "size mismatch" in str(e):
            raise InvalidArgument(f"checkpoint {path} was trained with another model shape: {e}") from None
        raise CorruptCheckpoint(f"checkpoint {path}: model.safetensors is unreadable ({e})") from None
    if missing or unexpected:
        raise InvalidArgument(f"checkpoint {path} does not fit this model: missing {missing}, unexpected {unexpected}")
    return state


def read_trainer_state(path: Path) -> dict:
    """The trainer state of a checkpoint (optimizer, scheduler, RNG, step, and the settings and identity of its
    run). The files are first checked against the SHA-256 digests saved with them (checkpoints of older versions
    have none), so a damaged byte anywhere is found, not loaded as other numbers; CorruptCheckpoint or
    UnsafeCheckpoint says why one cannot be used."""
    path = Path(path)
    digests_file = path / _DIGESTS
    if digests_file.is_file():
        try:
            digests = json.loads(digests_file.read_text())
        except (OSError, ValueError) as e:
            raise CorruptCheckpoint(f"checkpoint {path}: {_DIGESTS} is unreadable ({e})") from None
        for name, expected in digests.items():
            if not (path / name).is_file() or sha256_file(path / name) != expected:
                raise CorruptCheckpoint(f"checkpoint {path}: {name} is missing or damaged (its SHA-256 differs from "
                                        "the one saved with it)")
    try:
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpoint(f"checkpoint {path}: refused, its trainer_state.pt holds objects other than tensors "
                               "and plain data, and loading it could run code; resume only checkpoints written by "
                               "this program") from None
    except Exception as e:  # truncated (EOFError, RuntimeError) or damaged (IndexError, KeyError, ...)
        raise CorruptCheckpoint(f"checkpoint {path}: trainer_state.pt is unreadable ({type(e).__name__}: {e})") \
            from None
    if not (isinstance(state, dict) and {"optimizer", "scheduler", "step", "rng"} <= state.keys()
            and isinstance(state["step"], int)):
        raise CorruptCheckpoint(f"checkpoint {path}: trainer_state.pt does not hold a trainer state")
    return state


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights of several checkpoints (paper §4.1: the last 5)."""
    if not paths:
        raise InvalidArgument("no checkpoints to average")
    total, dtypes = None, {}
    for p in paths:
        weights = load_file(str(Path(p) / "model.safetensors"))
        if total is None:
            total = {k: v.double() for k, v in weights.items()}
            dtypes = {k: v.dtype for k, v in weights.items()}
        else:
            if weights.keys() != total.keys():
                raise InvalidArgument(f"{p} holds different parameters from {paths[0]}")
            for k, v in weights.items():
                total[k] += v.double()
    return {k: (v / len(paths)).to(dtypes[k]) for k, v in total.items()}
