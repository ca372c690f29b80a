"""Position encodings behind one interface: the baselines the paper compares RoPE with (§2.2-2.3) and RoPE.

A position encoding can act in two places, and each scheme uses one:
- on the input, adding a vector per absolute position to the token embeddings (``embed``):
  ``learned`` (BERT / GPT, Eq. 3 with trainable p_i) and ``sinusoidal`` (Vaswani et al., Eq. 4);
- inside attention (``attention``), through a :class:`PositionalAttention` handed to every layer:
  ``rope`` rotates q and k (Eq. 16); ``shaw`` adds q_m . a^K_clip(n-m) to the score and a^V_clip(n-m) to the
  values (Shaw et al., per-layer tables clipped at a maximum distance; the paper's Eq. 5-6); ``t5`` adds a
  learnt per-head bias of the bucketed relative distance (Raffel et al., Eq. 10's b_(i,j)); ``alibi`` (beyond
  the paper) adds -slope_h * |m - n|.
``none`` does neither. Relative schemes depend on n - m only, so a shift of every position leaves every
score unchanged; tests check that for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import InvalidArgument
from .rope import RotaryEmbedding, rotary_cos_sin

__all__ = ["POSITIONS", "PositionalAttention", "PositionEncoding", "build_position", "t5_bucket", "alibi_slopes"]

POSITIONS = ("none", "learned", "sinusoidal", "shaw", "t5", "alibi", "rope")


@dataclass
class PositionalAttention:
    """What a position encoding contributes to every attention layer of one forward pass."""

    offset: int = 0  # how many cached positions come before the new tokens
    position_ids: Tensor | None = None  # or every new token's position, (seq,) or (batch, seq) (rope only)
    rope: tuple[Tensor, Tensor] | None = None  # cos, sin for the new tokens (head-dim RoPE is on)
    bias: Tensor | None = None  # additive score bias broadcastable to (batch, heads, q, k)
    shaw: ShawRelative | None = None  # Shaw et al.'s per-layer relative key and value tables ...
    shaw_index: Tensor | None = None  # ... and the (q, k) index of clip(n - m) into them


class PositionEncoding(nn.Module):
    """No position information (``none``); the base of the others."""

    name = "none"

    def embed(self, x: Tensor, offset: int) -> Tensor:
        """Token embeddings (batch, seq, hidden) of positions offset .. offset+seq-1 -> input to layer 1."""
        return x

    def attention(self, q_len: int, k_len: int, offset: int, device, position_ids: Tensor | None = None
                  ) -> PositionalAttention:
        """Per-forward inputs to attention for q_len new tokens after offset cached ones (k_len in all);
        ``position_ids`` (RoPE only): the new tokens' positions, in place of offset .. offset + q_len - 1."""
        if position_ids is not None:
            raise InvalidArgument(f"position_ids need position='rope'; {self.name!r} takes the positions after "
                                  "the cache")
        return PositionalAttention(offset=offset)

    @property
    def has_score_bias(self) -> bool:
        return False

    @property
    def allows_kv_cache(self) -> bool:
        return True


class LearnedAbsolute(PositionEncoding):
    """p_i trainable, added to the token embedding of position i (BERT, GPT). Limited to ``max_positions``."""

    name = "learned"

    def __init__(self, hidden_size: int, max_positions: int):
        super().__init__()
        self.embeddings = nn.Embedding(max_positions, hidden_size)
        nn.init.normal_(self.embeddings.weight, std=0.02)

    def embed(self, x: Tensor, offset: int) -> Tensor:
        end = offset + x.shape[1]
        if end > self.embeddings.num_embeddings:
            raise InvalidArgument(f"learned absolute positions stop at {self.embeddings.num_embeddings}; "
                                  f"position {end - 1} was asked for (RoPE has no such limit)")
        return x + self.embeddings.weight[offset:end]


class SinusoidalAbsolute(PositionEncoding):
    """Vaswani et al.: p_(i,2t) = sin(i / 10000^(2t/d)), p_(i,2t+1) = cos(i / 10000^(2t/d)) (Eq. 4), added to
    the token embeddings after scaling them by sqrt(d), as Vaswani et al. do (without it, unit-amplitude
    sinusoids swamp embeddings initialised at std 0.02). ``scale_embeddings=False`` leaves the scaling to a
    model that scales the embeddings itself for every position encoding (the encoder-decoder)."""

    name = "sinusoidal"

    def __init__(self, hidden_size: int, base: float = 10000.0, scale_embeddings: bool = True):
        super().__init__()
        if hidden_size % 2:
            raise InvalidArgument(f"sinusoidal positions need an even hidden size, got {hidden_size}")
        self.hidden_size, self.base, self.scale_embeddings = hidden_size, base, scale_embeddings

    def embed(self, x: Tensor, offset: int) -> Tensor:
        cos, sin = rotary_cos_sin(torch.arange(offset, offset + x.shape[1], device=x.device), self.hidden_size,
                                  self.base)
        table = torch.stack((sin, cos), dim=-1).flatten(-2)  # sin at even features, cos at odd ones
        return (x * math.sqrt(self.hidden_size) if self.scale_embeddings else x) + table.to(x.dtype)


class Rotary(PositionEncoding):
    """RoPE (ours, §3): rotates queries and keys in every layer."""

    name = "rope"

    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = True, scaling: dict | None = None,
                 max_positions: int | None = None):
        super().__init__()
        self.rotary = RotaryEmbedding(dim, base, interleaved, scaling, max_position_embeddings=max_positions)

    @property
    def allows_kv_cache(self) -> bool:
        """False for a length-dependent scaling (dynamic NTK, LongRoPE): the angles of *every* position change as
        the sequence grows, so keys cached at a shorter length, and in deeper layers everything computed from
        them, would be stale (the trap of caching under dynamic scaling); such a model decodes without a cache."""
        return not self.rotary.length_dependent

    def attention(self, q_len, k_len, offset, device, position_ids=None) -> PositionalAttention:
        if self.rotary.length_dependent and (offset or position_ids is not None):
            raise InvalidArgument(f"rope_type {self.rotary.scaling['rope_type']!r} changes every position's angles "
                                  "with the sequence length, so it takes no KV cache and no position_ids: run the "
                                  "whole sequence")
        if position_ids is not None:
            cos_sin = self.rotary.cos_sin(q_len, position_ids=position_ids, device=device)
        else:
            cos_sin = self.rotary.cos_sin(q_len, offset=offset, device=device, total_len=k_len)
        return PositionalAttention(offset=offset, position_ids=position_ids, rope=cos_sin)


def _relative(q_len: int, k_len: int, device) -> Tensor:
    """n - m for the q_len newest queries (at positions k_len-q_len ..) against all k_len keys."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    return torch.arange(k_len, device=device)[None, :] - q_pos[:, None]


class ShawRelative(PositionEncoding):
    """Shaw et al. (2018), as published: learnt vectors a^K_r and a^V_r per clipped relative distance
    r = clip(n - m, -k, k), one table of each per layer, shared by the heads of that layer:

        e_mn = q_m . (k_n + a^K_(n-m)) / sqrt(d),    z_m = sum_n softmax_n(e_mn) (v_n + a^V_(n-m))

    (their Eq. 3-4; the paper under study writes the key term as its Eq. 5). ``max_distance`` is the clipping
    distance k (16 by default, the value Shaw et al. used for their base model)."""

    name = "shaw"

    def __init__(self, head_dim: int, max_distance: int = 16, num_layers: int = 1):
        super().__init__()
        self.max_distance = max_distance
        self.keys = nn.ModuleList(nn.Embedding(2 * max_distance + 1, head_dim) for _ in range(num_layers))
        self.values = nn.ModuleList(nn.Embedding(2 * max_distance + 1, head_dim) for _ in range(num_layers))
        for table in [*self.keys, *self.values]:
            nn.init.normal_(table.weight, std=0.02)

    def attention(self, q_len, k_len, offset, device, position_ids=None) -> PositionalAttention:
        super().attention(q_len, k_len, offset, device, position_ids)  # refuses position_ids
        rel = _relative(q_len, k_len, device).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return PositionalAttention(offset=offset, shaw=self, shaw_index=rel)

    @property
    def has_score_bias(self) -> bool:
        return True


def t5_bucket(relative: Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5's bucket of a relative distance n - m: exact buckets for short distances, logarithmically wider
    ones up to ``max_distance`` (everything beyond shares the last); with ``bidirectional`` half the buckets
    are for keys after the query. A causal model (``bidirectional=False``) only sees n <= m."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, large)


class T5RelativeBias(PositionEncoding):
    """Raffel et al. (T5): a learnt scalar per head and relative-distance bucket added to the attention
    logits (32 buckets up to distance 128, as in T5)."""

    name = "t5"

    def __init__(self, num_heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.bias = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.bias.weight, std=0.02)

    def attention(self, q_len, k_len, offset, device, position_ids=None) -> PositionalAttention:
        super().attention(q_len, k_len, offset, device, position_ids)  # refuses position_ids
        buckets = t5_bucket(_relative(q_len, k_len, device), self.bidirectional, self.num_buckets,
                            self.max_distance)
        return PositionalAttention(offset=offset, bias=self.bias(buckets).permute(2, 0, 1)[None])

    @property
    def has_score_bias(self) -> bool:
        return True


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's head slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ... for n heads when n is a power of
    two; otherwise those of the nearest lower power of two followed by every other slope of twice as many."""
    def geometric(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(geometric(num_heads))
    lower = 2 ** math.floor(math.log2(num_heads))
    return torch.tensor(geometric(lower) + geometric(2 * lower)[0::2][: num_heads - lower])


class ALiBi(PositionEncoding):
    """Press et al. (2022), beyond the paper: score_(m,n) += -slope_h * |n - m| (no learnt parameters)."""

    name = "alibi"

    def __init__(self, num_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def attention(self, q_len, k_len, offset, device, position_ids=None) -> PositionalAttention:
        super().attention(q_len, k_len, offset, device, position_ids)  # refuses position_ids
        distance = _relative(q_len, k_len, device).abs().float()
        return PositionalAttention(offset=offset, bias=(-self.slopes.to(device)[:, None, None] * distance)[None])

    @property
    def has_score_bias(self) -> bool:
        return True


def build_position(name: str, *, hidden_size: int, num_heads: int, head_dim: int, causal: bool,
                   max_positions: int = 1024, rope_theta: float = 10000.0, rotary_dim: int | None = None,
                   shaw_max_distance: int = 16, rope_parameters: dict | None = None,
                   num_layers: int = 1) -> PositionEncoding:
    """The position encoding ``name`` of a model. For RoPE, ``rope_theta`` is the base (the config's, reconciled
    with its ``rope_parameters`` by :func:`roformer.rope_scaling.model_rope_base`)."""
    if rope_parameters and name != "rope":
        raise InvalidArgument(f"rope_parameters (RoPE scaling) apply to position='rope' only, not {name!r}")
    if name == "none":
        return PositionEncoding()
    if name == "learned":
        return LearnedAbsolute(hidden_size, max_positions)
    if name == "sinusoidal":
        return SinusoidalAbsolute(hidden_size)
    if name == "rope":
        scaling = {k: v for k, v in (rope_parameters or {}).items() if k != "rope_theta"}
        return Rotary(rotary_dim or head_dim, rope_theta, scaling=scaling, max_positions=max_positions)
    if name == "shaw":
        return ShawRelative(head_dim, shaw_max_distance, num_layers)
    if name == "t5":
        return T5RelativeBias(num_heads, bidirectional=not causal)
    if name == "alibi":
        return ALiBi(num_heads)
    raise InvalidArgument(f"unknown position encoding {name!r}; use one of {', '.join(POSITIONS)}")
