"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidArgument

__all__ = ["build_optimizer", "lr_multiplier", "SCHEDULES"]

SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW or Adam (weight decay spares biases, LayerNorm weights and other 1-d parameters), or Amos (Tian &
    Parikh 2022, as the ``pytorch-optimizer`` package implements it: its own decay towards a scale set by each
    parameter's shape replaces ``weight_decay``, and ``betas``/``eps`` do not apply; the Amos authors advise a
    constant or warm-up-to-constant schedule and a learning rate of about 1/sqrt(number of batches))."""
    if name == "amos":
        from pytorch_optimizer import Amos

        return Amos([p for p in model.parameters() if p.requires_grad], lr=lr)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    raise InvalidArgument(f"unknown optimizer {name!r}; use adamw, adam or amos")


def lr_multiplier(schedule: str, step: int, warmup: int, total: int, peak_lr: float,
                  min_ratio: float = 0.0, init_lr: float = 1e-7) -> float:
    """Factor on the peak learning rate at ``step`` (0-based: the update about to be made).

    constant:     linear warm-up from 0, then 1.
    linear:       linear warm-up from 0, then linear decay to ``min_ratio`` at ``total``.
    cosine:       linear warm-up from 0, then half a cosine down to ``min_ratio`` at ``total``.
    inverse_sqrt: paper §4.1 (after Vaswani et al.): linear from ``init_lr`` (1e-7) to the peak over
                  ``warmup`` steps, then peak * sqrt(warmup / step).
    """
    s = step + 1
    if schedule == "inverse_sqrt":
        if warmup and s <= warmup:
            start = init_lr / peak_lr
            return start + (1.0 - start) * s / warmup
        return math.sqrt(max(warmup, 1) / s)
    if warmup and s <= warmup:
        return s / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (s - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise InvalidArgument(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
