"""Transformer building blocks: the position-wise feed-forward network and the residual block."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossAttention, KVCache, MultiHeadAttention
from .errors import InvalidArgument

__all__ = ["ACTIVATIONS", "FeedForward", "TransformerBlock", "DecoderBlock"]

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as BERT/RoFormer checkpoints use
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": F.tanh,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise InvalidArgument(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}") from None


class FeedForward(nn.Module):
    """FFN(x) = down(act(up(x)))."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu", bias: bool = True):
        super().__init__()
        self.up = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class TransformerBlock(nn.Module):
    """Self-attention and FFN sub-layers, each with a residual connection and LayerNorm.

    ``norm_first=False`` is the post-LayerNorm block of BERT and RoFormer: x = LN(x + sublayer(x)).
    ``norm_first=True`` is the pre-LayerNorm block of GPT-2 and later: x = x + sublayer(LN(x)).
    ``attention`` replaces the softmax self-attention (e.g. by ``LinearAttention``).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        act: str = "gelu",
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        norm_first: bool = False,
        rotary_value: bool = False,
        interleaved: bool = True,
        attention: nn.Module | None = None,
    ):
        super().__init__()
        self.attn = attention or MultiHeadAttention(
            hidden_size, num_heads, attention_dropout, rotary_value=rotary_value, interleaved=interleaved
        )
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = FeedForward(hidden_size, intermediate_size, act)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        x: Tensor,
        pos=None,
        bias: Tensor | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attn(self.attn_norm(x), pos, bias, is_causal, kv_cache, layer))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attn(x, pos, bias, is_causal, kv_cache, layer)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class DecoderBlock(nn.Module):
    """The decoder layer of an encoder-decoder Transformer (Vaswani et al.): causal self-attention (with the
    position encoding), cross-attention to the encoder output (without), then the FFN; each sub-layer with a
    residual connection and LayerNorm, post-LN (``norm_first=False``, as Vaswani et al.) or pre-LN."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, act: str = "relu",
                 dropout: float = 0.1, attention_dropout: float = 0.0, layer_norm_eps: float = 1e-5,
                 norm_first: bool = False):
        super().__init__()
        self.self_attn = MultiHeadAttention(hidden_size, num_heads, attention_dropout)
        self.cross_attn = CrossAttention(hidden_size, num_heads, attention_dropout)
        self.ffn = FeedForward(hidden_size, intermediate_size, act)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=layer_norm_eps) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, memory: Tensor, memory_bias: Tensor | None = None, pos=None,
                self_bias: Tensor | None = None, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        sublayers = (
            lambda h: self.self_attn(h, pos, self_bias, True, kv_cache, layer),
            lambda h: self.cross_attn(h, memory, memory_bias, kv_cache, layer),
            self.ffn,
        )
        for norm, sublayer in zip(self.norms, sublayers, strict=True):
            if self.norm_first:
                x = x + self.dropout(sublayer(norm(x)))
            else:
                x = norm(x + self.dropout(sublayer(x)))
        return x
