"""Multi-head self-attention with RoPE on queries and keys (paper Eq. 16), through PyTorch's fused
``scaled_dot_product_attention``.

    Attention(Q, K, V)_m = sum_n softmax_n( (R_m W_q x_m)^T (R_n W_k x_n) / sqrt(d) ) W_v x_n        (Eq. 16)

The rotation goes on q and k after the projection and before the product, so the scores carry the relative
position n - m only. Keys are cached already rotated, so decoding with a KV cache rotates each new token
once, at its own position.

Masks are additive float biases (0 to attend, the dtype's lowest value not to), as HuggingFace uses:
a row with nothing to attend to (a padded query under a causal mask) then gets a finite uniform average
instead of NaN, and NaN can never leak into real tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InvalidArgument
from .rope import apply_rotary

if TYPE_CHECKING:
    from .position import PositionalAttention

__all__ = ["KVCache", "MultiHeadAttention", "CrossAttention", "attend", "attention_bias"]


class KVCache:
    """Rotated keys and values of the positions seen so far, one entry per layer.

    ``seq_len`` is a plain Python int (the number of cached positions), read by the model once per forward
    pass to place the new tokens after the cached ones. ``cross`` holds an encoder-decoder's cross-attention
    keys and values of the encoder output, projected once per decoding and reused at every step.
    """

    def __init__(self, num_layers: int):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self.seq_len = 0

    def get_seq_length(self, layer: int = 0) -> int:
        """Cached positions (as ``transformers.Cache.get_seq_length``)."""
        return self.seq_len

    def update(self, k: Tensor, v: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Append this step's keys and values (batch, heads, new, head_dim) of ``layer``; all of them so far back.
        The argument order is that of ``transformers``' caches, which the models accept in its place."""
        if self.keys[layer] is not None:
            k = torch.cat((self.keys[layer], k), dim=-2)
            v = torch.cat((self.values[layer], v), dim=-2)
        self.keys[layer], self.values[layer] = k, v
        if layer == len(self.keys) - 1:
            self.seq_len = k.shape[-2]
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        self.cross = [None if c is None else (c[0].index_select(0, index), c[1].index_select(0, index))
                      for c in self.cross]


def attention_bias(
    padding_mask: Tensor | None, q_len: int, k_len: int, causal: bool, dtype: torch.dtype, device=None
) -> Tensor | None:
    """Additive attention bias broadcastable to (batch, heads, q_len, k_len), or None when nothing is masked.

    ``padding_mask`` is (batch, k_len), nonzero/True where a key is a real token. With ``causal``, query i
    (at absolute position k_len - q_len + i, after any cached positions) sees keys up to its own position.
    """
    allowed = None
    if padding_mask is not None:
        if padding_mask.ndim != 2 or padding_mask.shape[-1] != k_len:
            raise InvalidArgument(
                     f"attention_mask must be (batch, {k_len}) covering cached and new tokens, "
                     f"got {tuple(padding_mask.shape)}"
                 )
        allowed = padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if causal:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        causal_allowed = q_pos >= torch.arange(k_len, device=device)
        allowed = causal_allowed if allowed is None else allowed & causal_allowed
    if allowed is None:
        return None
    return torch.zeros((), dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


class MultiHeadAttention(nn.Module):
    """Self-attention with a fused q/k/v projection, RoPE on q and k (and on v with ``rotary_value``), and
    an optional KV cache. Tensors are ``(batch, seq, hidden)`` outside and ``(batch, heads, seq, head_dim)``
    inside."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        rotary_value: bool = False,
        interleaved: bool = True,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise InvalidArgument(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.dropout, self.rotary_value, self.interleaved = dropout, rotary_value, interleaved
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(
        self,
        x: Tensor,
        pos: PositionalAttention | None = None,
        bias: Tensor | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(2)
        y = attend(q, k, v, pos, bias, is_causal, kv_cache, layer, self.dropout if self.training else 0.0,
                   self.rotary_value, self.interleaved)
        return self.out(y)


def attend(q: Tensor, k: Tensor, v: Tensor, pos: PositionalAttention | None = None, bias: Tensor | None = None,
           is_causal: bool = False, kv_cache=None, layer: int = 0, dropout: float = 0.0, rotary_value: bool = False,
           interleaved: bool = True) -> Tensor:
    """Eq. 16 from projected q, k, v (batch, heads, seq, head_dim) to the heads' outputs, concatenated
    (batch, seq, heads * head_dim), before the output projection.

    ``pos``: what the position encoding contributes (RoPE's cos/sin, a score bias, Shaw's relative keys), or
    None. ``bias``: the mask from :func:`attention_bias`. ``is_causal`` alone (no bias) is SDPA's causal fast
    path for an unpadded, uncached block. ``kv_cache``: a :class:`KVCache`, or anything with its
    ``update(k, v, layer)`` (a ``transformers`` cache has it); the rotated keys are cached. ``dropout``: on the
    attention probabilities (0 at evaluation)."""
    batch, heads, seq, head_dim = q.shape
    score_bias = shaw_values = None
    if pos is not None:
        if pos.rope is not None:
            cos, sin = pos.rope
            q = apply_rotary(q, cos, sin, interleaved)
            k = apply_rotary(k, cos, sin, interleaved)
            if rotary_value:
                v = apply_rotary(v, cos, sin, interleaved)
        score_bias = pos.bias
        if pos.shaw is not None:  # Shaw et al.'s key term q_m . a^K_(n-m), scaled like q . k
            shaw_values = pos.shaw.values[layer](pos.shaw_index).to(q.dtype)
            shaw = torch.einsum("bhqd,qkd->bhqk", q, pos.shaw.keys[layer](pos.shaw_index).to(q.dtype))
            shaw = shaw / math.sqrt(head_dim)
            score_bias = shaw if score_bias is None else score_bias + shaw
    if kv_cache is not None:
        k, v = kv_cache.update(k, v, layer)
    if score_bias is not None:
        if bias is None and is_causal:
            bias = attention_bias(None, seq, k.shape[-2], True, q.dtype, q.device)
        bias = score_bias.to(q.dtype) if bias is None else bias.to(q.dtype) + score_bias.to(q.dtype)
    elif bias is not None:
        bias = bias.to(q.dtype)
    if shaw_values is not None:
        # and its value term sum_n p_mn a^V_(n-m): the probabilities are needed, so no fused kernel here
        p = F.dropout(((q @ k.transpose(-1, -2)) / math.sqrt(head_dim) + bias).softmax(-1), dropout, dropout > 0)
        y = p @ v + torch.einsum("bhqk,qkd->bhqd", p, shaw_values)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout,
                                           is_causal=is_causal and bias is None)
    return y.transpose(1, 2).reshape(batch, seq, heads * head_dim)


class CrossAttention(nn.Module):
    """Encoder-decoder attention: queries from the decoder, keys and values from the encoder output
    (``memory``). No position encoding acts here: the query and key positions index two different sequences,
    so their difference means nothing, and RoPE is applied in the self-attention layers only (§4.1)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise InvalidArgument(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, hidden_size // num_heads, dropout
        self.q = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(self, x: Tensor, memory: Tensor, memory_bias: Tensor | None = None,
                kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """``memory_bias``: :func:`attention_bias` of the source padding (no causal mask)."""
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None and kv_cache.cross[layer] is not None:
            k, v = kv_cache.cross[layer]
        else:
            k, v = self.kv(memory).view(batch, -1, 2, self.num_heads, self.head_dim).transpose(1, 3).unbind(2)
            if kv_cache is not None:
                kv_cache.cross[layer] = (k, v)
        bias = None if memory_bias is None else memory_bias.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, seq, -1))
