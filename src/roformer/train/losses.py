"""Losses the recipes share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["token_cross_entropy"]


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                        ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (in float32) over the tokens whose target is not ``ignore_index``, with optional
    label smoothing (paper §4.1 uses 0.1), and the number of such tokens (for tokens/s)."""
    loss = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=ignore_index,
                           label_smoothing=label_smoothing)
    return loss, (targets != ignore_index).sum()
