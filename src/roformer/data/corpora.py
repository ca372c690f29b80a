"""Loaders for the text corpora in the registry, each split as the registry states."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch

from ..errors import InvalidArgument
from ..io import read_text
from .registry import get, resolve

__all__ = ["load_bytes_corpus", "byte_tensor", "load_articles"]


def _split_by_fraction(data: bytes, fractions: tuple[float, ...], names: tuple[str, ...]) -> dict[str, bytes]:
    out, start = {}, 0
    for i, (name, frac) in enumerate(zip(names, fractions, strict=True)):
        end = len(data) if i == len(names) - 1 else start + int(len(data) * frac)
        out[name] = data[start:end]
        start = end
    return out


def load_bytes_corpus(name: str, mirror: str | Path | None = None) -> dict[str, bytes]:
    """A byte-level corpus as {"train", "validation"[, "test"]} -> bytes, split as the registry says."""
    paths = resolve(name, mirror)
    files = [paths[f.path] for f in get(name).files]
    data = b"".join(Path(p).read_bytes() for p in files)
    if name == "enwik8":
        return _split_by_fraction(data, (0.90, 0.05, 0.05), ("train", "validation", "test"))
    if name == "tinyshakespeare":
        return _split_by_fraction(data, (0.9, 0.1), ("train", "validation"))
    raise InvalidArgument(f"{name!r} is not a byte-level corpus; use enwik8 or tinyshakespeare")


def byte_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (the token ids of a byte-level model)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


_DOC = re.compile(r'<doc id="[^"]*" url="[^"]*" title="([^"]*)">\n(.*?)</doc>', re.S)


def load_articles(name: str = "enwiki", mirror: str | Path | None = None, limit: int | None = None
                  ) -> dict[str, list[str]]:
    """English Wikipedia articles (WikiExtractor output) split by crc32 of the title: % 100 == 0 validation,
    == 1 test, else train. Each article is its text with the title line removed and blank lines dropped.
    ``limit`` keeps the first ``limit`` training articles and ``limit // 10`` of the others (smoke runs)."""
    if name != "enwiki":
        raise InvalidArgument(f"{name!r} is not an article corpus; use enwiki")
    paths = resolve(name, mirror)
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for f in get(name).files:
        text = read_text(paths[f.path])
        for title, body in _DOC.findall(text):
            lines = [line for line in body.split("\n")[1:] if line.strip()]
            if not lines:
                continue
            bucket = zlib.crc32(title.encode()) % 100
            split = "validation" if bucket == 0 else "test" if bucket == 1 else "train"
            splits[split].append("\n".join(lines))
    if limit:
        splits = {k: v[: limit if k == "train" else limit // 10] for k, v in splits.items()}
    return splits
