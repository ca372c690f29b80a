"""Decoding: sampling from a causal language model; greedy and beam search for an encoder-decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention import KVCache
from ..errors import InvalidArgument


@torch.no_grad()
def sample(model, input_ids: Tensor, max_new_tokens: int, num_layers: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
           on_token=None) -> Tensor:
    """Continue ``input_ids`` (batch, seq) by ``max_new_tokens`` tokens: greedy when ``temperature == 0``,
    else sampled from softmax(logits / temperature) restricted to the ``top_k`` most likely. With
    ``use_cache`` each step feeds only the new token and reuses the cached keys and values; without, each
    step recomputes the whole prefix (for models without a KV cache, such as linear attention). ``on_token``,
    if given, is called with each new (batch, 1) token as soon as it is chosen (streaming)."""
    if max_new_tokens < 0:
        raise InvalidArgument(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise InvalidArgument(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InvalidArgument(f"top_k must be at least 1 (or None for no limit), got {top_k}")
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
        if on_token is not None:
            on_token(next_id)
        if step + 1 < max_new_tokens:
            logits = (model(next_id, kv_cache=cache) if use_cache else model(ids)).logits[:, -1]
    return ids


def _source_limits(src_ids: Tensor, src_mask: Tensor | None, max_extra_tokens: int) -> list[int]:
    """Per source, the most target tokens (EOS included) decoding may produce: its length + max_extra_tokens."""
    lengths = src_mask.sum(1) if src_mask is not None else torch.full((src_ids.shape[0],), src_ids.shape[1])
    return (lengths + max_extra_tokens).tolist()


@torch.no_grad()
def greedy_search(model, src_ids: Tensor, src_mask: Tensor | None = None, max_extra_tokens: int = 50,
                  use_cache: bool = True) -> list[list[int]]:
    """An encoder-decoder's most likely next token at every step until EOS or the length limit; per source the
    target ids without BOS and EOS."""
    c = model.config
    limits = _source_limits(src_ids, src_mask, max_extra_tokens)
    memory = model.encode(src_ids, src_mask)
    cache = KVCache(len(model.decoder)) if use_cache else None
    tokens = torch.full((src_ids.shape[0], 1), c.bos_token_id, dtype=torch.long, device=src_ids.device)
    out: list[list[int] | None] = [None] * len(limits)
    for t in range(max(limits)):
        logits = model.decode(tokens[:, -1:] if use_cache else tokens, memory, src_mask, cache)[:, -1]
        tokens = torch.cat((tokens, logits.argmax(-1, keepdim=True)), dim=1)
        for b, row in enumerate(tokens.tolist()):
            if out[b] is None and (row[-1] == c.eos_token_id or t + 1 == limits[b]):
                out[b] = row[1:-1] if row[-1] == c.eos_token_id else row[1:]
        if all(o is not None for o in out):
            break
    return out


@torch.no_grad()
def beam_search(model, src_ids: Tensor, src_mask: Tensor | None = None, beam_size: int = 4,
                length_penalty: float = 0.6, max_extra_tokens: int = 50, use_cache: bool = True) -> list[list[int]]:
    """Batched beam search for an encoder-decoder (Vaswani et al.: beam 4, length penalty 0.6).

    Every source keeps ``beam_size`` live hypotheses. At each step the 2 x beam best extensions are scanned
    in order of total log-probability: one ending in EOS among the first ``beam_size`` is finished and scored
    log p / lp(length) with the GNMT length penalty lp(n) = ((5 + n) / 6) ** length_penalty; the others
    refill the beam. A source is done once it has ``beam_size`` finished hypotheses, or when it reaches its
    length limit (source length + ``max_extra_tokens``), where the live ones are finished as they stand.
    The best finished hypothesis is returned (target ids without BOS and EOS). The KV cache follows the
    beams (``KVCache.reorder``); ``use_cache=False`` recomputes every prefix instead (same result, slower).
    With ``beam_size=1`` this is greedy search.
    """
    if beam_size < 1:
        raise InvalidArgument(f"beam_size must be at least 1, got {beam_size}")
    c, k = model.config, beam_size
    batch = src_ids.shape[0]
    limits = _source_limits(src_ids, src_mask, max_extra_tokens)
    memory = model.encode(src_ids, src_mask).repeat_interleave(k, 0)
    mask = None if src_mask is None else src_mask.repeat_interleave(k, 0)
    cache = KVCache(len(model.decoder)) if use_cache else None
    tokens = torch.full((batch * k, 1), c.bos_token_id, dtype=torch.long, device=src_ids.device)
    scores = torch.full((batch, k), float("-inf"), device=src_ids.device)
    scores[:, 0] = 0.0  # one live hypothesis to start from, not k copies of it
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max(limits)):
        logits = model.decode(tokens[:, -1:] if use_cache else tokens, memory, mask, cache)[:, -1]
        log_probs = F.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        top_scores, top_index = (scores.view(-1, 1) + log_probs).view(batch, k * vocab).topk(2 * k, dim=1)
        top_scores, top_beam, top_token = top_scores.tolist(), (top_index // vocab).tolist(), \
            (top_index % vocab).tolist()
        penalty = ((5 + t + 1) / 6) ** length_penalty
        rows, new_tokens, new_scores = [], [], []
        for b in range(batch):
            alive = []
            if not done[b]:
                for j in range(2 * k):
                    score, beam, token = top_scores[b][j], top_beam[b][j], top_token[b][j]
                    if score == float("-inf"):
                        break
                    if token == c.eos_token_id:
                        if j < k:
                            finished[b].append((score / penalty, tokens[b * k + beam, 1:].tolist()))
                    else:
                        alive.append((score, beam, token))
                        if len(alive) == k:
                            break
                if len(finished[b]) >= k:
                    done[b] = True
                elif t + 1 >= limits[b] or not alive:
                    finished[b] += [(s / penalty, tokens[b * k + beam, 1:].tolist() + [token])
                                    for s, beam, token in alive]
                    done[b] = True
            if done[b]:
                alive = []
            alive += [(float("-inf"), 0, c.eos_token_id)] * (k - len(alive))  # placeholders, never extended
            for score, beam, token in alive:
                rows.append(b * k + beam)
                new_tokens.append(token)
                new_scores.append(score)
        if all(done):
            break
        index = torch.tensor(rows, device=tokens.device)
        tokens = torch.cat((tokens[index], torch.tensor(new_tokens, device=tokens.device)[:, None]), dim=1)
        scores = torch.tensor(new_scores, device=tokens.device).view(batch, k)
        if cache is not None:
            cache.reorder(index)
    return [max(f, key=lambda h: h[0])[1] for f in finished]
