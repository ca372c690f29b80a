"""A GPT-style causal language model (pre-LayerNorm) with the position encoding and the attention as
switches: the model of the paper's language-model comparisons (§4.4 Performer with/without RoPE on enwik8;
§4.6-4.7 RoPE against learned absolute and T5 relative positions).

``position``: none | learned | sinusoidal | shaw | t5 | alibi | rope (``roformer.position``).
``attention``: softmax (SDPA, KV cache) | linear (Eq. 18-19, feature map elu or favor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..attention import KVCache, attention_bias
from ..errors import InvalidArgument
from ..layers import TransformerBlock
from ..linear_attention import LinearAttention
from ..position import POSITIONS, build_position
from ..rope_scaling import NO_CACHE, model_rope_base
from ..train.losses import token_cross_entropy
from .fields import NON_NEGATIVE, POSITIVE, POSITIVE_FLOAT, PROBABILITY, check_fields
from .inputs import check_token_ids
from .outputs import ModelOutput
from .saving import load_model_dir, save_model_dir

__all__ = ["DecoderConfig", "DecoderLM", "DecoderForSequenceClassification"]


@dataclass
class DecoderConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None  # None: 4 x hidden_size
    dropout: float = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    position: str = "rope"
    max_positions: int = 1024  # only the learned absolute table has a maximum
    rope_theta: float = 10000.0
    rope_parameters: dict | None = None  # RoPE scaling in HuggingFace's form (roformer.rope_scaling)
    attention: str = "softmax"
    feature_map: str = "favor"  # linear attention: favor (Performer) or elu
    num_features: int | None = None  # random features per head (favor); None: head_dim
    redraw_interval: int = 1000
    rope_mode: str = "eq19"  # linear attention: eq19 (the paper) or before_feature_map
    tie_word_embeddings: bool = True

    def __post_init__(self):
        check_fields(self, {"vocab_size": POSITIVE, "hidden_size": POSITIVE, "num_layers": POSITIVE,
                            "num_heads": POSITIVE, "intermediate_size": POSITIVE, "dropout": PROBABILITY,
                            "layer_norm_eps": POSITIVE_FLOAT, "max_positions": POSITIVE, "rope_theta": POSITIVE_FLOAT,
                            "num_features": POSITIVE, "redraw_interval": NON_NEGATIVE})
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.position not in POSITIONS:
            raise InvalidArgument(f"unknown position encoding {self.position!r}; use one of {', '.join(POSITIONS)}")
        if self.attention not in ("softmax", "linear"):
            raise InvalidArgument(f"attention must be 'softmax' or 'linear', got {self.attention!r}")
        if self.attention == "linear" and self.position in ("shaw", "t5", "alibi"):
            raise InvalidArgument(f"{self.position!r} adds to a score matrix that linear attention never forms")
        if self.hidden_size % self.num_heads:
            raise InvalidArgument(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.rope_parameters and self.attention == "linear":
            raise InvalidArgument("rope_parameters (RoPE scaling) are not supported with linear attention")
        self.rope_theta = model_rope_base(self.rope_theta, self.rope_parameters, self.position,
                                          self.hidden_size // self.num_heads, self.max_positions)


class DecoderLM(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = self.config = config
        head_dim = c.hidden_size // c.num_heads
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = build_position(c.position, hidden_size=c.hidden_size, num_heads=c.num_heads,
                                       head_dim=head_dim, causal=True, max_positions=c.max_positions,
                                       rope_theta=c.rope_theta, rope_parameters=c.rope_parameters,
                                       num_layers=c.num_layers)
        self.dropout = nn.Dropout(c.dropout)

        def attention():
            if c.attention == "softmax":
                return None  # the block's default SDPA attention
            return LinearAttention(c.hidden_size, c.num_heads, c.feature_map, c.num_features, c.redraw_interval,
                                   c.rope_mode, c.rope_theta)

        self.layers = nn.ModuleList(
            TransformerBlock(c.hidden_size, c.num_heads, c.intermediate_size, c.hidden_act, c.dropout, c.dropout,
                             c.layer_norm_eps, norm_first=True, attention=attention())
            for _ in range(c.num_layers)
        )
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.apply(self._init)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, kv_cache: KVCache | None = None) -> ModelOutput:
        """``labels`` are the input ids (shifted inside): position t is scored on token t+1."""
        logits = self.lm_head(self.hidden_states(input_ids, kv_cache))
        loss = None if labels is None else token_cross_entropy(logits[:, :-1], labels[:, 1:])[0]
        return ModelOutput(logits=logits, loss=loss, kv_cache=kv_cache)

    def hidden_states(self, input_ids: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        """(batch, seq, hidden): the last layer's output after the final LayerNorm, what the LM head reads."""
        check_token_ids(input_ids, self.config.vocab_size)
        if kv_cache is not None and self.config.attention != "softmax":
            raise InvalidArgument("linear attention keeps no KV cache; call without kv_cache")
        if kv_cache is not None and not self.position.allows_kv_cache:
            raise InvalidArgument(NO_CACHE.format(self.config.rope_parameters["rope_type"]))
        seq = input_ids.shape[1]
        offset = kv_cache.get_seq_length() if kv_cache is not None else 0
        x = self.dropout(self.position.embed(self.embed(input_ids), offset))
        pos = self.position.attention(seq, offset + seq, offset, x.device)
        bias = None
        if offset:  # new tokens after cached ones: a causal mask aligned to the end
            bias = attention_bias(None, seq, offset + seq, True, x.dtype, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, bias, is_causal=True, kv_cache=kv_cache, layer=i)
        return self.norm(x)

    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        from .generation import sample

        return sample(self, input_ids, max_new_tokens, self.config.num_layers, temperature, top_k, generator,
                      use_cache=self.config.attention == "softmax" and self.position.allows_kv_cache)

    def save_pretrained(self, directory: str | Path) -> None:
        save_model_dir(self, directory, "roformer-decoder")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DecoderLM:
        return load_model_dir(cls, DecoderConfig, directory, "roformer-decoder")


class DecoderForSequenceClassification(nn.Module):
    """A :class:`DecoderLM` fine-tuned for classification as GPT is (Radford et al. 2018): a linear head on the
    final hidden state of each sequence's last token, which under causal attention is the one that has read the
    whole input. Inputs are right-padded; ``attention_mask`` marks the real tokens and so the last one (the
    padding after it is never attended to, being later). ``decoder`` is the pre-trained :class:`DecoderLM`.
    """

    def __init__(self, config: DecoderConfig, num_labels: int):
        super().__init__()
        self.config, self.num_labels = config, num_labels
        self.decoder = DecoderLM(config)
        self.score = nn.Linear(config.hidden_size, num_labels)
        DecoderLM._init(self.score)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> ModelOutput:
        if attention_mask.shape != input_ids.shape:
            raise InvalidArgument(f"attention_mask has shape {tuple(attention_mask.shape)}, the input ids "
                                  f"{tuple(input_ids.shape)}")
        hidden = self.decoder.hidden_states(input_ids)  # (batch, seq, hidden)
        last = attention_mask.sum(-1) - 1  # (batch,): the last real token
        logits = self.score(hidden[torch.arange(len(last), device=hidden.device), last])  # (batch, num_labels)
        wide = torch.promote_types(logits.dtype, torch.float32)  # at least float32 for the loss
        loss = None if labels is None else nn.functional.cross_entropy(logits.to(wide), labels)
        return ModelOutput(logits=logits, loss=loss)
