"""Atomic file writes: a reader (or a crash at any moment) sees the old file or the new one, never half. Files
get the permissions the process umask gives a new file (``mkstemp`` alone would make them private). And the
cache root, where roformer keeps what it can fetch or rebuild (downloads, compiled kernels)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from .errors import InvalidArgument

__all__ = ["atomic_write", "atomic_write_text", "umask_mode", "sha256_file", "fingerprint", "read_text", "read_json",
           "read_jsonl", "read_safetensors", "cache_root"]

ENV_CACHE = "ROFORMER_CACHE"


def cache_root() -> Path:
    """``$ROFORMER_CACHE``, default ``~/.cache/roformer``."""
    return Path(os.environ.get(ENV_CACHE, "~/.cache/roformer")).expanduser()


def umask_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, flush it to disk, then rename it over
    ``path`` (``os.replace`` is atomic on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; one that is not UTF-8 is a ValueError naming the file, the line and the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InvalidArgument(f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line}); convert it "
                              "to UTF-8") from None


def fingerprint(data) -> str:
    """What a resume compares to know it has the same data: the size and CRC-32 of a tensor's bytes (``"N tokens,
    crc32 X"``: a token stream) or of JSON-serialisable data (``"N items, crc32 X"``: documents, examples)."""
    import zlib

    if hasattr(data, "numpy"):  # a tensor: no torch import here
        return f"{data.numel()} tokens, crc32 {zlib.crc32(data.cpu().numpy().tobytes()):08x}"
    return f"{len(data)} items, crc32 {zlib.crc32(json.dumps(data, ensure_ascii=False).encode()):08x}"


def read_json(path: str | Path, expect: type | None = None):
    """A JSON file's content; a malformed file, or one whose top level is not of type ``expect`` (e.g. dict for a
    config.json), is a ValueError that names it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{path} is not valid JSON ({e})") from None
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "an object", list: "a list"}.get(expect, expect.__name__)
        raise InvalidArgument(f"{path} must hold {kind} at its top level, got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (``metrics.jsonl``). A torn last line, what a kill or a full disk in the
    middle of an append leaves, is dropped with a warning naming the file; a bad line before the last is a
    ValueError naming the file and the line."""
    lines = Path(path).read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if all(not rest.strip() for rest in lines[number:]):
                warnings.warn(f"{path}: its last line is incomplete (an interrupted write); it is ignored",
                              stacklevel=2)
                break
            raise InvalidArgument(f"{path}: line {number} is not valid JSON ({e})") from None
    return records


def read_safetensors(path: str | Path) -> dict:
    """The tensors of a safetensors file; a truncated or foreign file is a ValueError that names it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InvalidArgument(f"{path} is not a readable safetensors file ({e}); it may be truncated: save or "
                              "download it again") from None
