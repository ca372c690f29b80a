"""Right padding of token-id lists into one batch tensor, shared by every recipe that batches text."""

from __future__ import annotations

import torch

__all__ = ["right_pad"]


def right_pad(sequences: list[list[int]], value: int, width: int | None = None) -> torch.Tensor:
    """(len(sequences), width) long tensor: each sequence at the start of its row, ``value`` after it.
    ``width`` defaults to the longest sequence."""
    width = max(map(len, sequences)) if width is None else width
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
