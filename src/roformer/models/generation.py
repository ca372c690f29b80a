"""Sampling from a causal language model, shared by every causal LM here."""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention import KVCache


@torch.no_grad()
def sample(model, input_ids: Tensor, max_new_tokens: int, num_layers: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:
    """Continue ``input_ids`` (batch, seq) by ``max_new_tokens`` tokens: greedy when ``temperature == 0``,
    else sampled from softmax(logits / temperature) restricted to the ``top_k`` most likely. With
    ``use_cache`` each step feeds only the new token and reuses the cached keys and values; without, each
    step recomputes the whole prefix (for models without a KV cache, such as linear attention)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    cache = KVCache(num_layers) if use_cache else None
    ids = input_ids
    logits = model(ids, kv_cache=cache).logits[:, -1] if use_cache else model(ids).logits[:, -1]
    for step in range(max_new_tokens):
        if temperature == 0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            scaled = logits.float() / temperature
            if top_k is not None:
                kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            next_id = torch.multinomial(scaled.softmax(-1), 1, generator=generator)
        ids = torch.cat((ids, next_id), dim=1)
        if step + 1 < max_new_tokens:
            logits = (model(next_id, kv_cache=cache) if use_cache else model(ids)).logits[:, -1]
    return ids
