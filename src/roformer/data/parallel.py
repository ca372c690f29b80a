"""Parallel text for translation (§4.1): sentence pairs from the registry, and token-count batches.

Multi30k task 1 (En-De): train / validation / test (test2016 Flickr) as published; newstest2014 (En-De) is a
test set only. Lines pair up by line number.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgument
from ..io import read_text
from .registry import resolve

__all__ = ["load_parallel", "token_batches"]

SPLITS = {
    "multi30k": {"train": "train", "validation": "val", "test": "test_2016_flickr", "test2017": "test_2017_flickr"},
    "newstest2014": {"test": "newstest2014"},
}


def load_parallel(name: str, mirror: str | Path | None = None, src: str = "en", tgt: str = "de"
                  ) -> dict[str, list[tuple[str, str]]]:
    """Splits of (source, target) sentence pairs."""
    if name not in SPLITS:
        raise InvalidArgument(f"{name!r} is not a parallel corpus; use one of {', '.join(SPLITS)}")
    paths = {Path(p).name: Path(v) for p, v in resolve(name, mirror).items()}
    out = {}
    for split, stem in SPLITS[name].items():
        sides = []
        for lang in (src, tgt):
            if f"{stem}.{lang}" not in paths:
                raise InvalidArgument(f"{name} has no {lang} side for {split} ({stem}.{lang})")
            sides.append(read_text(paths[f"{stem}.{lang}"]).rstrip("\n").split("\n"))
        if len(sides[0]) != len(sides[1]):
            raise InvalidArgument(f"{name} {split}: {len(sides[0])} {src} lines but {len(sides[1])} {tgt} lines")
        out[split] = [(s.strip(), t.strip()) for s, t in zip(*sides, strict=True)]
    return out


def token_batches(src_lengths: list[int], tgt_lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group examples of similar length into batches of at most ``max_tokens`` tokens per side, padding
    included (rows x longest row), as translation systems batch by tokens rather than sentences. An example
    longer than ``max_tokens`` gets a batch of its own."""
    order = sorted(range(len(src_lengths)), key=lambda i: (src_lengths[i], tgt_lengths[i]))
    batches, current, longest = [], [], 0
    for i in order:
        width = max(longest, src_lengths[i], tgt_lengths[i])
        if current and width * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, width = [], max(src_lengths[i], tgt_lengths[i])
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches
