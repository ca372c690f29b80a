"""Checks of what a model's forward pass is given: token ids in the vocabulary, a mask that fits them, at least
one token. Each failure is one error naming the argument and what would be valid, instead of an IndexError
from the embedding (or, on CUDA, a device-side assert that ends the process).

The id range needs the ids' minimum and maximum (one host synchronisation); it is checked in eager mode and
skipped while ``torch.compile`` or ``torch.export`` traces the model, where data-dependent checks cannot run."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidArgument

__all__ = ["check_token_ids", "check_attention_mask"]


def check_token_ids(ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    if ids.ndim != 2 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InvalidArgument(f"{name} must be a (batch, seq) integer tensor, got {ids.dtype} {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise InvalidArgument(f"{name} is empty (shape {tuple(ids.shape)}): give at least one token per row")
    if torch.compiler.is_compiling():
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise InvalidArgument(f"{name} holds token id {low if low < 0 else high}, outside the vocabulary of "
                              f"{vocab_size} (ids 0..{vocab_size - 1}): the tokenizer and the model do not match")


def check_attention_mask(mask: Tensor | None, batch: int, keys: int, name: str = "attention_mask") -> None:
    """``mask`` (batch, keys): 1 for real tokens, 0 for padding (keys: the cached tokens and the new ones)."""
    if mask is None:
        return
    if mask.ndim != 2 or mask.shape[0] != batch or mask.shape[1] != keys:
        raise InvalidArgument(f"{name} must be (batch, seq) = ({batch}, {keys}) to fit the input, got "
                              f"{tuple(mask.shape)}")
