"""The encoder-decoder Transformer of the paper's translation experiment (§4.1; Vaswani et al.'s base model:
6 + 6 layers, 512 wide, 8 heads, FFN 2048, post-LayerNorm, ReLU) with the position encoding as a switch.

``position``: rope (RoFormer: rotation in the self-attention of encoder and decoder, none in the
cross-attention) | sinusoidal (Vaswani et al.) | learned | shaw (Shaw et al. relative keys and values, per
layer, the journal version's "RPE" row) | any other of ``roformer.position``.

One BPE vocabulary is shared by source and target, and one embedding matrix serves the encoder input, the
decoder input and the output projection (tied). Token embeddings are scaled by sqrt(d) for every variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import KVCache, attention_bias
from ..errors import InvalidArgument
from ..layers import DecoderBlock, TransformerBlock
from ..position import POSITIONS, SinusoidalAbsolute, build_position
from ..train.losses import token_cross_entropy
from .fields import POSITIVE, POSITIVE_FLOAT, PROBABILITY, check_fields
from .inputs import check_attention_mask, check_token_ids
from .outputs import ModelOutput
from .saving import load_model_dir, save_model_dir

__all__ = ["Seq2SeqConfig", "Seq2SeqTransformer"]


@dataclass
class Seq2SeqConfig:
    vocab_size: int
    hidden_size: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    intermediate_size: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5
    norm_first: bool = False
    position: str = "rope"
    max_positions: int = 1024  # only the learned absolute table has a maximum
    rope_theta: float = 10000.0
    shaw_max_distance: int = 16
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self):
        check_fields(self, {"vocab_size": POSITIVE, "hidden_size": POSITIVE, "encoder_layers": POSITIVE,
                            "decoder_layers": POSITIVE, "num_heads": POSITIVE, "intermediate_size": POSITIVE,
                            "dropout": PROBABILITY, "attention_dropout": PROBABILITY, "layer_norm_eps": POSITIVE_FLOAT,
                            "max_positions": POSITIVE, "rope_theta": POSITIVE_FLOAT, "shaw_max_distance": POSITIVE})
        if self.position not in POSITIONS:
            raise InvalidArgument(f"unknown position encoding {self.position!r}; use one of {', '.join(POSITIONS)}")
        if self.hidden_size % self.num_heads:
            raise InvalidArgument(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise InvalidArgument(f"{name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")


class Seq2SeqTransformer(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        c = self.config = config
        d = c.hidden_size
        self.embed = nn.Embedding(c.vocab_size, d, padding_idx=c.pad_token_id)

        def position(causal: bool, num_layers: int):
            p = build_position(c.position, hidden_size=d, num_heads=c.num_heads, head_dim=d // c.num_heads,
                               causal=causal, max_positions=c.max_positions, rope_theta=c.rope_theta,
                               shaw_max_distance=c.shaw_max_distance, num_layers=num_layers)
            if isinstance(p, SinusoidalAbsolute):
                p.scale_embeddings = False  # scaled below for every variant
            return p

        self.encoder_position = position(False, c.encoder_layers)
        self.decoder_position = position(True, c.decoder_layers)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(
            TransformerBlock(d, c.num_heads, c.intermediate_size, c.hidden_act, c.dropout, c.attention_dropout,
                             c.layer_norm_eps, norm_first=c.norm_first)
            for _ in range(c.encoder_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderBlock(d, c.num_heads, c.intermediate_size, c.hidden_act, c.dropout, c.attention_dropout,
                         c.layer_norm_eps, c.norm_first)
            for _ in range(c.decoder_layers)
        )
        # pre-LN stacks end with a LayerNorm; post-LN outputs are normalised already
        self.encoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, std=d**-0.5)  # with the sqrt(d) scale: unit-variance inputs
        with torch.no_grad():
            self.embed.weight[c.pad_token_id].zero_()

    def _embed(self, ids: Tensor, position, offset: int) -> Tensor:
        x = self.embed(ids) * math.sqrt(self.config.hidden_size)
        return self.dropout(position.embed(x, offset))

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Encoder output (batch, src_len, hidden). ``src_mask``: 1 for real tokens, 0 for padding."""
        check_token_ids(src_ids, self.config.vocab_size, "src_ids")
        seq = src_ids.shape[1]
        check_attention_mask(src_mask, src_ids.shape[0], seq, "src_mask")
        x = self._embed(src_ids, self.encoder_position, 0)
        pos = self.encoder_position.attention(seq, seq, 0, x.device)
        bias = attention_bias(src_mask, seq, seq, False, x.dtype, x.device)
        for layer in self.encoder:
            x = layer(x, pos, bias)
        return self.encoder_norm(x)

    def decode(self, tgt_ids: Tensor, memory: Tensor, src_mask: Tensor | None = None,
               kv_cache: KVCache | None = None) -> Tensor:
        """Next-token logits (batch, tgt_len, vocab) for target prefixes ``tgt_ids`` (starting with BOS).
        Targets are right-padded, so the causal mask alone keeps padding out of every real position. With a
        ``kv_cache`` only the new tokens are fed and the cached ones are reused."""
        check_token_ids(tgt_ids, self.config.vocab_size, "tgt_ids")
        seq = tgt_ids.shape[1]
        offset = kv_cache.get_seq_length() if kv_cache is not None else 0
        x = self._embed(tgt_ids, self.decoder_position, offset)
        pos = self.decoder_position.attention(seq, offset + seq, offset, x.device)
        self_bias = attention_bias(None, seq, offset + seq, True, x.dtype, x.device) if offset else None
        memory_bias = attention_bias(src_mask, seq, memory.shape[1], False, x.dtype, x.device)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, memory_bias, pos, self_bias, kv_cache, i)
        return F.linear(self.decoder_norm(x), self.embed.weight)  # tied output projection

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None, labels: Tensor | None = None,
                label_smoothing: float = 0.0) -> ModelOutput:
        """``tgt_ids`` = BOS + target, ``labels`` = target + EOS (-100 where padded)."""
        logits = self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask)
        loss = None if labels is None else token_cross_entropy(logits, labels, label_smoothing)[0]
        return ModelOutput(logits=logits, loss=loss)

    @torch.no_grad()
    def translate(self, src_ids: Tensor, src_mask: Tensor | None = None, beam_size: int = 4,
                  length_penalty: float = 0.6, max_extra_tokens: int = 50) -> list[list[int]]:
        """Target token ids (without BOS/EOS) per source: beam search, or greedy with ``beam_size=1``."""
        from .generation import beam_search

        return beam_search(self, src_ids, src_mask, beam_size, length_penalty, max_extra_tokens)

    def save_pretrained(self, directory: str | Path) -> None:
        save_model_dir(self, directory, "roformer-seq2seq")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Seq2SeqTransformer:
        return load_model_dir(cls, Seq2SeqConfig, directory, "roformer-seq2seq")
