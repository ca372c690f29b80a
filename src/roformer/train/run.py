"""The owner of a run directory: every command that trains, fine-tunes or reuses a run reads and writes it
through :class:`RunDirectory`.

- **One process at a time.** Opening a run takes an exclusive ``flock`` on ``<run>/.lock`` for the life of the
  command and writes the holder (pid, host, command) into it. A second process, on that directory or on one
  inside a directory being written, gets one line naming the holder. The kernel drops the lock when its
  process dies, so a lock left by a killed run (the file is still there) is taken over with a note.
- **One identity.** :meth:`RunDirectory.begin` records what identifies the run (settings, data and corpus
  fingerprints, tokenizer, model shape) in ``run.json`` and ``train_config.json`` *before anything else is
  written*. It refuses a directory that already holds a run unless the command resumes it (``--resume``:
  every recorded entry must match, the differences are named) or replaces it (``--overwrite``). A run
  directory without those files but with checkpoints is compared with the settings stored in its newest
  checkpoint. ``begin`` may be called again as more of the identity becomes known (e.g. the model shape once
  the vocabulary is learnt); each call compares what it adds.
- **Nothing lost, nothing written elsewhere.** Files are written atomically (a temporary file renamed into
  place) with the process umask, so a symbolic link in the run directory is replaced, never written through;
  a linked entry that leads out of the run directory (``model/ -> /elsewhere``) is refused before any work.
  A trained ``model/`` or tokenizer is replaced only by resuming the same run or with ``overwrite``.
- **Reuse.** :meth:`RunDirectory.result` gives a finished run's record (``summary.json``, ``result.json``, ...)
  to a resumed command, after the identity check, so a result is reused only by the run that made it.
  A finished run whose weights are gone (a report's fresh clone keeps records, not weights) is trained again
  under the check of :meth:`RunDirectory.retraining`: it must end at its record.

Under ``torchrun`` only rank 0 locks and writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgument, RunConflict
from ..io import atomic_write_text, read_json, umask_mode

__all__ = ["RunDirectory", "RESUMABLE_SETTINGS", "differences", "check_same_result"]

LOCK = ".lock"
IDENTITY = "run.json"
SETTINGS = "train_config.json"
# what a run directory may hold: any of them means a run was (being) made here
RUN_ENTRIES = ("run.json", "train_config.json", "checkpoints", "model", "metrics.jsonl", "summary.json",
               "result.json", "results.json", "report.md", "tokenizer.json", "vocab.txt", "bleu.json")
# what only a run (not a recipe's summary of its runs) holds: reused only if the run's identity can be checked
OWN_RESULTS = ("checkpoints", "model", "summary.json", "result.json", "bleu.json")
# training settings that may differ between an interrupted run and its resume: they change no result
RESUMABLE_SETTINGS = ("device", "progress", "log_every", "eval_every", "save_every", "keep_last")


@dataclass
class _Held:
    fd: int
    count: int = 1
    begun: bool = False
    overwrite: bool = False
    identity: dict = field(default_factory=dict)


_HELD: dict[Path, _Held] = {}  # run directories this process holds (resolved path)
# run directories this command began: reopening one later in the command (e.g. to decode a model it trained)
# continues its own run; forgotten when the command holds no run directory any more
_CLAIMED: set[Path] = set()


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: run has A, command has B"`` for each key of ``current`` whose value differs from ``saved`` (a key
    the run did not record, from an older version, is not a difference)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))  # tuples as lists, as saved
    return [f"{k}: run has {saved[k]!r}, command has {current[k]!r}" for k in sorted(current)
            if k not in ignore and k in saved and saved[k] != current[k]]


class RunDirectory:
    """``with RunDirectory(path, resume=..., overwrite=...) as run: run.begin(identity, settings); ...``.

    ``resume``: continue (or reuse) the run found there, which must have the same identity. ``overwrite``: replace
    whatever run is there (its files and sub-runs are deleted when :meth:`begin` first runs). Neither: the
    directory must not hold a run yet. Re-entrant within a process: a recipe and the trainer it calls may both
    open the same directory."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise InvalidArgument("--resume continues the run in the directory and --overwrite replaces it: give "
                                  "one of them")
        self.path, self.resume = Path(path), resume
        self._overwrite = overwrite
        self._key: Path | None = None

    # -- the lock -----------------------------------------------------------------------------------------
    def __enter__(self) -> RunDirectory:
        self._key = key = self.path.resolve()
        if not _main_process():
            self.path.mkdir(parents=True, exist_ok=True)
            return self
        if key in _HELD:
            _HELD[key].count += 1
            return self
        for parent in key.parents:  # a directory inside one that another process is writing
            if parent not in _HELD and (parent / LOCK).is_file():
                self._check_free(parent)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:  # ELOOP: a symbolic link in its place
            raise RunConflict(f"{key / LOCK}: cannot take the run's lock ({e.strerror}); remove it if it is a "
                              "symbolic link or not a file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise RunConflict(f"{self.path} is in use by another process ({_describe(holder)}): wait for it to "
                              "finish, or choose another --out") from None
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if left:
            print(f"note: {self.path}: taking over the lock left by a run that is no longer running "
                  f"({_describe(left)})", file=sys.stderr, flush=True)
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        inherited = any(p in _HELD and _HELD[p].overwrite for p in key.parents)
        _HELD[key] = _Held(fd, overwrite=self._overwrite or inherited)
        return self

    def __exit__(self, *exc) -> None:
        held = _HELD.get(self._key)
        if held is None:
            return
        held.count -= 1
        if held.count == 0:
            del _HELD[self._key]
            if not _HELD:
                _CLAIMED.clear()
            os.ftruncate(held.fd, 0)  # the file stays: unlinking it would race with a process opening it
            fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)

    @staticmethod
    def _check_free(directory: Path) -> None:
        fd = os.open(directory / LOCK, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            raise RunConflict(f"{directory} is in use by another process ({_describe(holder)}), and this run is "
                              "inside it: wait for it to finish, or choose another --out") from None
        finally:
            os.close(fd)

    def _held(self) -> _Held:
        if self._key is None or (_main_process() and self._key not in _HELD):
            raise RuntimeError("use the run directory inside `with RunDirectory(...) as run:`")
        return _HELD.get(self._key) or _Held(-1)

    # -- identity -----------------------------------------------------------------------------------------
    def holds_run(self) -> list[str]:
        """The entries that show a run was made here (empty: the directory is free for a new run)."""
        return [name for name in RUN_ENTRIES if (self.path / name).exists() or (self.path / name).is_symlink()]

    def begin(self, identity: dict, settings: dict | None = None) -> None:
        """Claim the directory for the run ``identity`` (and training ``settings``), comparing them with the run
        found there on resume, and record them before anything else is written. One RunConflict names every
        difference, or why the directory cannot be used."""
        held = self._held()
        if not _main_process():
            return
        self._check_links()
        if not held.begun and self._key not in _CLAIMED:
            found = self.holds_run()
            if found and held.overwrite:
                self._clear()
            elif found and not self.resume:
                raise RunConflict(f"{self.path} already holds a run ({', '.join(found)}): add --resume to continue "
                                  "it, --overwrite to replace it, or choose another --out; nothing was changed")
        held.begun = True
        _CLAIMED.add(self._key)
        saved_identity = self._read(IDENTITY)
        saved_settings = self._read(SETTINGS)
        if saved_identity is None and saved_settings is None:
            saved_identity, saved_settings = self._checkpoint_record()
            results = [name for name in OWN_RESULTS if (self.path / name).exists()]
            if saved_identity is None and saved_settings is None and results and self.resume:
                raise RunConflict(f"cannot resume {self.path}: it holds {', '.join(results)} but records no settings "
                                  "to check them against (no run.json, train_config.json or readable checkpoint; "
                                  "made by an older version or by hand). Run without --resume into another --out")
        differ = differences(saved_identity or {}, identity)
        if settings is not None:
            differ += differences(saved_settings or {}, settings, RESUMABLE_SETTINGS)
        if differ:
            raise RunConflict(f"cannot resume {self.path}: it was started with other settings ({'; '.join(differ)})"
                              ". Run without --resume into another --out, or repeat the original command")
        held.identity = {**(saved_identity or {}), **held.identity, **json.loads(json.dumps(identity))}
        atomic_write_text(self.path / IDENTITY, json.dumps(held.identity, indent=2))
        if settings is not None:
            atomic_write_text(self.path / SETTINGS, json.dumps(settings, indent=2))

    def _read(self, name: str) -> dict | None:
        path = self.path / name
        if not path.is_file():
            return None
        return read_json(path, expect=dict)

    def _checkpoint_record(self) -> tuple[dict | None, dict | None]:
        """(identity, settings) stored in the newest readable checkpoint, for a run directory whose run.json and
        train_config.json are gone."""
        from .checkpoint import CorruptCheckpoint, UnsafeCheckpoint, list_checkpoints, read_trainer_state

        for path in reversed(list_checkpoints(self.path / "checkpoints")):
            try:
                state = read_trainer_state(path)
            except (CorruptCheckpoint, UnsafeCheckpoint):  # the previous one may still be good
                continue
            return state.get("identity"), state.get("train_config")
        return None, None

    def _check_links(self) -> None:
        """Refuse an entry that is a symbolic link leading out of the run directory: writing into it (a model
        directory, checkpoints, the appended metrics) would change files elsewhere."""
        inside = self._key
        for name in RUN_ENTRIES + ("tensorboard",):
            entry = self.path / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(inside):
                raise RunConflict(f"{entry} is a symbolic link to {entry.resolve()}, outside the run directory; "
                                  "roformer does not write through it: remove the link or choose another --out")

    def _clear(self) -> None:
        """--overwrite: delete the run found here (its entries and the run directories inside it)."""
        for name in RUN_ENTRIES + ("tensorboard",):
            entry = self.path / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
        for sub in sorted(p for p in self.path.rglob(IDENTITY) if p.parent != self.path):  # rglob follows no links
            if sub.parent.is_dir() and not sub.parent.is_symlink():
                shutil.rmtree(sub.parent)
        print(f"note: {self.path}: --overwrite: the run that was there is deleted", file=sys.stderr, flush=True)

    # -- files ----------------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of ``name`` in the run directory (a relative path that stays inside it)."""
        path = self.path / name
        if Path(name).is_absolute() or not path.resolve().parent.is_relative_to(self.path.resolve()):
            raise RunConflict(f"{path} leads out of the run directory {self.path}")
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write a file atomically with the umask (a symbolic link there is replaced, never written through)."""
        path = self.file(name)
        if _main_process():
            atomic_write_text(path, text)
        return path

    def write_json(self, name: str, value) -> Path:
        return self.write_text(name, json.dumps(value, indent=2))

    def save_directory(self, name: str, write: Callable[[Path], None]) -> Path:
        """``write(tmp)`` a directory (a model with its tokenizer) under a temporary name, then move it into place,
        so that a kill leaves the previous directory or the new one, never a mix of both."""
        target = self.file(name)
        if not _main_process():
            return target
        for leftover in self.path.glob(f".tmp-{name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.path / f".tmp-{name}-{os.getpid()}"
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, umask_mode())  # safetensors writes through a private temporary file (0600)
        old = self.path / f".old-{name}-{os.getpid()}"
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return target

    def retraining(self, recorded: dict | None) -> Callable[[dict], None]:
        """Called before a finished run is trained again whose record (``recorded``: its final evaluation) was kept
        but whose weights are gone, as in a fresh clone of a report. Returns ``check(final)``, which requires the
        new run to end at the record (:func:`check_same_result`), or what was built on the first weights
        (fine-tunes, reports) would mix two models; if it does not, the checkpoints made since are removed, so
        that the next resume does not take them for the run, and the error is raised. Either way
        ``metrics.jsonl`` goes back to the recorded one. Without a record, ``check`` does nothing."""
        from .checkpoint import list_checkpoints

        if not recorded or not _main_process():
            return lambda final: None
        metrics, checkpoints = self.path / "metrics.jsonl", self.path / "checkpoints"
        before = metrics.read_text() if metrics.exists() else None
        kept = set(list_checkpoints(checkpoints))

        def check(final: dict) -> None:
            try:
                check_same_result(self.path, recorded, final)
            except ValueError:
                for path in set(list_checkpoints(checkpoints)) - kept:
                    shutil.rmtree(path)
                raise
            finally:  # the record stays the one of the run that was reported (this one only repeated it)
                if before is not None:
                    atomic_write_text(metrics, before)

        return check

    def result(self, name: str) -> dict | None:
        """A finished run's record ``name`` when the command resumes it (``begin`` has checked the identity), else
        None: the run is made again."""
        if not self._held().begun and _main_process():
            raise RuntimeError("call begin() before result(): a record is reused only after the identity check")
        return self._read(name) if self.resume else None


def check_same_result(run_dir: str | Path, recorded: dict, retrained: dict, rtol: float = 1e-6) -> None:
    """A finished run trained again must end with the metrics it recorded (every number of ``recorded``), to
    ``rtol``: on one machine a run trained twice ends within ~1e-8 of itself (its arithmetic is deterministic up
    to the order of threaded reductions); a larger gap means other weights (another CPU's kernels, changed code
    or data). One error naming the first metric that differs."""
    for key, a in recorded.items():
        b = retrained.get(key)
        if isinstance(a, bool) or not isinstance(a, int | float):
            continue
        if b is None or abs(a - b) > rtol * max(abs(a), 1e-12):
            raise InvalidArgument(f"cannot resume {run_dir}: its weights were gone and it was trained again, ending "
                                  f"with {key} {b!r} where the run recorded {a!r}; what was built on its first "
                                  "weights would mix two models. Run without --resume into another --out")


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
