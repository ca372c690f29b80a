"""Language modelling on a token stream: random training windows, a pure function of the step, and
held-out loss over non-overlapping windows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InvalidArgument
from .losses import token_cross_entropy

__all__ = ["step_generator", "window_batches", "next_token_loss", "stream_loss", "sliding_window_loss"]


def step_generator(seed: int, step: int, micro: int = 0, grad_accum: int = 1) -> torch.Generator:
    """The random generator of one micro-batch, seeded by (seed, step, micro) only: drawing batches from it
    makes the step the data position, so a resumed run sees exactly the batches of an uninterrupted one."""
    return torch.Generator().manual_seed(seed * 7919 + step * grad_accum + micro)


def window_batches(data: Tensor, seq_len: int, batch_size: int, seed: int, grad_accum: int = 1
                   ) -> Callable[[int, int], dict]:
    """``batch_fn(step, micro)`` drawing ``batch_size / grad_accum`` windows of ``seq_len + 1`` tokens from
    ``data`` with a generator seeded by (seed, step, micro): the step is the data position."""
    if len(data) <= seq_len + 1:
        raise InvalidArgument(f"training data of {len(data)} tokens is shorter than one window of {seq_len + 1}")
    if batch_size % grad_accum:
        raise InvalidArgument(f"batch size {batch_size} does not split into {grad_accum} micro-batches")
    rows = batch_size // grad_accum

    def batch_fn(step: int, micro: int) -> dict:
        g = step_generator(seed, step, micro, grad_accum)
        starts = torch.randint(len(data) - seq_len - 1, (rows,), generator=g).tolist()
        return {"input_ids": torch.stack([data[s : s + seq_len + 1] for s in starts]).long()}

    return batch_fn


def next_token_loss(model, batch: dict) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy of a window batch, and the number of predicted tokens."""
    x = batch["input_ids"]
    return token_cross_entropy(model(x[:, :-1]).logits, x[:, 1:])


@torch.no_grad()
def stream_loss(model, data: Tensor, seq_len: int, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of ``seq_len + 1`` tokens covering ``data``."""
    n_windows = (len(data) - 1) // seq_len
    if n_windows < 1:
        raise InvalidArgument(f"evaluation data of {len(data)} tokens is shorter than one window of {seq_len + 1}")
    windows = torch.stack([data[i * seq_len : i * seq_len + seq_len + 1] for i in range(n_windows)]).long()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, n_windows, batch_size):
        x = windows[start : start + batch_size].to(device)
        loss, n = token_cross_entropy(model(x[:, :-1]).logits, x[:, 1:])
        total += loss.item() * int(n)
        count += int(n)
    return total / count


@torch.no_grad()
def sliding_window_loss(model, data: Tensor, window: int, stride: int, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) with a sliding window (the evaluation of Press et al.'s ALiBi paper): windows
    of ``window + 1`` tokens start every ``stride`` tokens (and a last one ends at the end of ``data``); each
    window scores only the tokens no earlier window scored, so every token 1 .. N-1 is scored once, with at
    least ``window - stride`` tokens of context (except near the start)."""
    if not 0 < stride <= window:
        raise InvalidArgument(f"stride must be in 1 .. window ({window}), got {stride}")
    if len(data) < window + 1:
        raise InvalidArgument(f"evaluation data of {len(data)} tokens is shorter than one window of {window + 1}")
    starts = list(range(0, len(data) - window, stride))
    if starts[-1] + window < len(data) - 1:
        starts.append(len(data) - 1 - window)
    device = next(model.parameters()).device
    total, count, scored = 0.0, 0, 0  # tokens 1 .. scored are scored
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        x = torch.stack([data[s : s + window + 1] for s in chunk]).long().to(device)
        logits = model(x[:, :-1]).logits
        for row, s in enumerate(chunk):
            first = scored - s  # the prediction of token s + 1 + j sits at j
            loss, n = token_cross_entropy(logits[row : row + 1, first:], x[row : row + 1, first + 1 :])
            total += loss.item() * int(n)
            count += int(n)
            scored = s + window
    return total / count
