"""The RoFormer encoder (paper §3.4, §4.2) and its task heads.

RoFormer is BERT with the absolute position embeddings removed and RoPE applied to the queries and keys of
every self-attention layer: word + token-type embeddings, LayerNorm, then post-LayerNorm Transformer blocks
with GELU. The module tree differs from HuggingFace's (a fused q/k/v projection, shorter names) but the
parameters are the same ones; ``hf_interop`` maps the names, so checkpoints are interchangeable with
``transformers.RoFormer*`` (``from_pretrained`` / ``save_pretrained``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..attention import KVCache, attention_bias
from ..errors import InvalidArgument, MissingFile, UnknownName
from ..io import read_json
from ..layers import TransformerBlock, activation
from ..position import POSITIONS, build_position
from ..rope_scaling import NO_CACHE, model_rope_base
from .fields import NON_NEGATIVE, POSITIVE, POSITIVE_FLOAT, PROBABILITY, check_fields
from .inputs import check_attention_mask, check_token_ids

__all__ = [
    "RoFormerConfig",
    "ModelOutput",
    "RoFormerModel",
    "RoFormerForMaskedLM",
    "RoFormerForCausalLM",
    "RoFormerForSequenceClassification",
    "RoFormerForTokenClassification",
    "RoFormerForQuestionAnswering",
    "RoFormerForMultipleChoice",
]


@dataclass
class RoFormerConfig:
    """Hyper-parameters; field names and defaults follow ``transformers.RoFormerConfig`` (whose defaults are
    the Chinese base model's) so a HuggingFace config.json reads and writes unchanged."""

    vocab_size: int = 50000
    embedding_size: int | None = None  # None: equal to hidden_size (then no embeddings projection)
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 1536  # kept for HuggingFace; RoPE itself has no maximum length
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    rotary_value: bool = False
    is_decoder: bool = False
    tie_word_embeddings: bool = True
    num_labels: int = 2
    problem_type: str | None = None  # regression | single_label_classification | multi_label_classification
    rope_theta: float = 10000.0  # not in HuggingFace's config, which always uses 10000
    rope_parameters: dict | None = None  # RoPE scaling, HuggingFace's field: {"rope_type": "yarn", "factor": ...}
    position: str = "rope"  # or a baseline: none, learned (BERT), sinusoidal, shaw, t5, alibi (not HF-loadable)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other config.json keys, kept as read

    def __post_init__(self):
        check_fields(self, {"vocab_size": POSITIVE, "embedding_size": POSITIVE, "hidden_size": POSITIVE,
                            "num_hidden_layers": POSITIVE, "num_attention_heads": POSITIVE,
                            "intermediate_size": POSITIVE, "hidden_dropout_prob": PROBABILITY,
                            "attention_probs_dropout_prob": PROBABILITY, "max_position_embeddings": POSITIVE,
                            "type_vocab_size": POSITIVE, "initializer_range": NON_NEGATIVE,
                            "layer_norm_eps": POSITIVE_FLOAT, "pad_token_id": (0, self.vocab_size, False, True),
                            "num_labels": POSITIVE, "rope_theta": POSITIVE_FLOAT})
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise InvalidArgument(
                     f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                     f"{self.num_attention_heads}"
                 )
        if self.head_dim % 2:
            raise InvalidArgument(f"RoPE needs an even head dim; hidden_size / num_attention_heads = {self.head_dim}")
        activation(self.hidden_act)
        if self.position not in POSITIONS:
            raise InvalidArgument(f"unknown position encoding {self.position!r}; use one of {', '.join(POSITIONS)}")
        self.rope_theta = model_rope_base(self.rope_theta, self.rope_parameters, self.position, self.head_dim,
                                          self.max_position_embeddings)
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            raise InvalidArgument(f"unknown problem_type {self.problem_type!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # -- config.json ----------------------------------------------------------------------------------
    def to_dict(self, architecture: str | None = None) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        # HuggingFace's RoFormer knows RoPE only: another position encoding gets its own model_type, so that
        # transformers warns instead of silently dropping the position weights
        model_type = "roformer" if self.position == "rope" else f"roformer-{self.position}-positions"
        d = {**self.extra, **d, "model_type": model_type}
        d["id2label"] = {str(i): self._label(i) for i in range(self.num_labels)}
        d["label2id"] = {label: int(i) for i, label in d["id2label"].items()}
        if architecture:
            d["architectures"] = [architecture]
        return dict(sorted(d.items()))

    def _label(self, i: int) -> str:
        return self.extra.get("id2label", {}).get(str(i), f"LABEL_{i}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoFormerConfig:
        found = d.get("model_type", "roformer")
        if found != "roformer" and not (found.startswith("roformer-") and found.endswith("-positions")):
            raise InvalidArgument(f"not a RoFormer config: model_type is {d['model_type']!r}")
        if d.get("add_cross_attention"):
            raise InvalidArgument("RoFormer with cross-attention (add_cross_attention=True) is not supported here")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        if "id2label" in d and "num_labels" not in d:
            known["num_labels"] = len(d["id2label"])
        skip = {"model_type", "architectures", "label2id", "transformers_version"}
        extra = {k: v for k, v in d.items() if k not in names and k not in skip}
        return cls(**known, extra=extra)

    def save(self, directory: str | Path, architecture: str | None = None) -> None:
        from ..io import atomic_write_text

        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_dict(architecture), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> RoFormerConfig:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise MissingFile(f"no config.json in {directory}: not a saved model directory")
        config = read_json(path, expect=dict)
        found = config.get("model_type", "roformer")
        if found in ("roformer-decoder", "roformer-seq2seq"):
            kind = "DecoderLM" if found == "roformer-decoder" else "Seq2SeqTransformer"
            raise InvalidArgument(f"{directory} holds a {found!r} model: load it with {kind}.from_pretrained (the "
                                  "RoFormer encoder classes read HuggingFace RoFormer checkpoints)")
        return cls.from_dict(config)


@dataclass
class ModelOutput:
    """What a forward pass returns, with HuggingFace's field names; fields a head does not produce stay None.
    As in ``transformers``, ``out[0]`` is the first field that is set (the loss when there is one) and
    ``out["logits"]`` a field by name; ``past_key_values`` is the KV cache."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    start_logits: Tensor | None = None
    end_logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    kv_cache: KVCache | None = None

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | str):
        if isinstance(key, str):
            if key not in self.keys():
                raise UnknownName(f"{key!r} is not set in this output; set: {', '.join(self.keys())}")
            return getattr(self, key)
        return self.to_tuple()[key]

    @property
    def past_key_values(self) -> KVCache | None:
        return self.kv_cache


# a pytree node, so that torch.export and torch.compile can return it from a traced forward
torch.export.register_dataclass(ModelOutput, serialized_type_name="roformer.ModelOutput")


class RoFormerPreTrainedModel(nn.Module):
    """Weight initialisation and HuggingFace-compatible ``from_pretrained`` / ``save_pretrained``."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MaskedLMHead):
                nn.init.zeros_(module.bias)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors with HuggingFace's parameter names."""
        from .hf_interop import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, **config_overrides):
        """Load a directory written by ``save_pretrained`` here or by ``transformers``, or a HuggingFace hub id
        (``"junnyu/roformer_chinese_base"``; a local directory of that name wins) through ``huggingface_hub``
        with its ``revision``, ``cache_dir`` and offline mode. Head weights the checkpoint lacks (a classifier
        on a pre-trained encoder) are freshly initialised and listed in a warning; ``config_overrides`` set
        config fields (e.g. ``num_labels=3``)."""
        from .hf_interop import from_pretrained

        return from_pretrained(cls, name_or_path, revision, cache_dir, local_files_only, token, **config_overrides)

    # -- the usual model methods (as transformers' PreTrainedModel) ------------------------------------
    @property
    def base_model(self) -> RoFormerModel:
        return self if isinstance(self, RoFormerModel) else self.roformer

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them (training only):
        activation memory per layer drops to its input, for about one more forward pass of compute."""
        self.base_model.gradient_checkpointing = True
        self.base_model.checkpoint_kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.base_model.gradient_checkpointing

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.word_embeddings

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.base_model.word_embeddings = embeddings
        self.config.vocab_size = embeddings.num_embeddings
        self._tie_output()

    def get_output_embeddings(self) -> nn.Linear | None:
        head = getattr(self, "lm_head", None)
        return head.decoder if head is not None else None

    def _tie_output(self) -> None:
        head = getattr(self, "lm_head", None)
        if head is not None and self.config.tie_word_embeddings:
            head.decoder.weight = self.base_model.word_embeddings.weight

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Grow or shrink the vocabulary: existing rows are kept, new ones initialised as at construction; the
        output layer (tied or not) and its bias follow."""
        if new_num_tokens < 1:
            raise InvalidArgument(f"new_num_tokens must be at least 1, got {new_num_tokens}")
        old = self.get_input_embeddings()
        keep = min(old.num_embeddings, new_num_tokens)
        padding = old.padding_idx if old.padding_idx is not None and old.padding_idx < new_num_tokens else None
        new = nn.Embedding(new_num_tokens, old.embedding_dim, padding_idx=padding, device=old.weight.device,
                           dtype=old.weight.dtype)
        nn.init.normal_(new.weight, std=self.config.initializer_range)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
        head = getattr(self, "lm_head", None)
        if head is not None:
            decoder = nn.Linear(head.decoder.in_features, new_num_tokens, bias=False, device=old.weight.device,
                                dtype=head.decoder.weight.dtype)
            bias = torch.zeros(new_num_tokens, dtype=head.bias.dtype, device=head.bias.device)
            with torch.no_grad():
                nn.init.normal_(decoder.weight, std=self.config.initializer_range)
                decoder.weight[:keep] = head.decoder.weight[:keep]
                bias[:keep] = head.bias[:keep]
            head.decoder, head.bias = decoder, nn.Parameter(bias)
        self.set_input_embeddings(new)
        return new

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied matrix counts once)."""
        seen, total = set(), 0
        skip = {id(self.get_input_embeddings().weight)} if exclude_embeddings else set()
        for p in self.parameters():
            if id(p) in seen or id(p) in skip or (only_trainable and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class RoFormerModel(RoFormerPreTrainedModel):
    """The encoder: embeddings (no absolute positions) and a stack of post-LayerNorm blocks with RoPE (or, for
    the paper's baselines, another ``position`` encoding)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        c = config
        self.word_embeddings = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_token_id)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.embedding_size)
        self.embedding_norm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.embedding_project = (
            nn.Linear(c.embedding_size, c.hidden_size) if c.embedding_size != c.hidden_size else None
        )
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.position = build_position(
            c.position, hidden_size=c.embedding_size, num_heads=c.num_attention_heads, head_dim=c.head_dim,
            causal=c.is_decoder, max_positions=c.max_position_embeddings, rope_theta=c.rope_theta,
            rope_parameters=c.rope_parameters, num_layers=c.num_hidden_layers,
        )
        self.layers = nn.ModuleList(
            TransformerBlock(
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                act=c.hidden_act,
                dropout=c.hidden_dropout_prob,
                attention_dropout=c.attention_probs_dropout_prob,
                layer_norm_eps=c.layer_norm_eps,
                rotary_value=c.rotary_value,
            )
            for _ in range(c.num_hidden_layers)
        )
        self.gradient_checkpointing, self.checkpoint_kwargs = False, {}
        if type(self) is RoFormerModel:
            self.init_weights()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """Returns a :class:`ModelOutput` with ``last_hidden_state`` (batch, seq, hidden) (and the cache).

        ``attention_mask`` (batch, seq [+ cached]) is 1 for real tokens and 0 for padding. ``position_ids``
        ((seq,) or (batch, seq), RoPE only) defaults to 0..seq-1 after any cached tokens.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidArgument("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            check_token_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.word_embeddings(input_ids)
        elif inputs_embeds.ndim != 3 or inputs_embeds.shape[1] == 0:
            raise InvalidArgument(f"inputs_embeds must be (batch, seq, hidden) with seq >= 1, got "
                                  f"{tuple(inputs_embeds.shape)}")
        batch, seq = inputs_embeds.shape[:2]
        if token_type_ids is None:
            x = inputs_embeds + self.token_type_embeddings.weight[0]
        else:
            check_token_ids(token_type_ids, self.config.type_vocab_size, "token_type_ids")
            if token_type_ids.shape != (batch, seq):
                raise InvalidArgument(f"token_type_ids must be (batch, seq) = ({batch}, {seq}) like the input, got "
                                      f"{tuple(token_type_ids.shape)}")
            x = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if kv_cache is not None and not self.position.allows_kv_cache:
            raise InvalidArgument(NO_CACHE.format(self.config.rope_parameters["rope_type"]))
        offset = kv_cache.seq_len if kv_cache is not None else 0
        check_attention_mask(attention_mask, batch, offset + seq)
        if position_ids is not None and self.config.position != "rope":
            raise InvalidArgument(f"position_ids need position='rope'; {self.config.position!r} takes none")
        x = self.position.embed(x, offset)  # absolute schemes, as in BERT
        x = self.dropout(self.embedding_norm(x))
        if self.embedding_project is not None:
            x = self.embedding_project(x)

        pos = self.position.attention(seq, offset + seq, offset, x.device, position_ids)
        causal = self.config.is_decoder
        if attention_mask is None and offset == 0:
            bias = None  # no mask at all, or SDPA's own causal mask
        else:
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            bias = attention_bias(attention_mask, seq, offset + seq, causal, dtype, x.device)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if checkpointing:
                x = checkpoint(layer, x, pos, bias, causal, kv_cache, i, **self.checkpoint_kwargs)
            else:
                x = layer(x, pos, bias, is_causal=causal, kv_cache=kv_cache, layer=i)
        return ModelOutput(last_hidden_state=x, kv_cache=kv_cache)


# ------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------


class MaskedLMHead(nn.Module):
    """transform (dense, act, LayerNorm) then a projection onto the vocabulary tied to the word embeddings."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.embedding_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.transform(h)))) + self.bias


class _WithEncoder(RoFormerPreTrainedModel):
    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.roformer = RoFormerModel(config)

    def _finish_init(self) -> None:
        self.init_weights()
        self._tie_output()


class RoFormerForMaskedLM(_WithEncoder):
    """Masked language modelling (the pre-training objective of §4.2)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.lm_head = MaskedLMHead(config)
        self._finish_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kw) -> ModelOutput:
        """``labels``: (batch, seq) token ids to predict, -100 where no prediction is scored."""
        h = self.roformer(input_ids, attention_mask, token_type_ids, **kw).last_hidden_state
        logits = self.lm_head(h)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=h)


class RoFormerForCausalLM(_WithEncoder):
    """Left-to-right language model: the encoder with a causal mask (``is_decoder=True`` is forced)."""

    def __init__(self, config: RoFormerConfig):
        if not config.is_decoder:
            config = dataclasses.replace(config, is_decoder=True)
        super().__init__(config)
        self.lm_head = MaskedLMHead(config)
        self._finish_init()

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, kv_cache=None, **kw
    ) -> ModelOutput:
        """``labels`` are the input ids themselves (shifted inside): position t is scored on token t+1."""
        h = self.roformer(input_ids, attention_mask, token_type_ids, kv_cache=kv_cache, **kw).last_hidden_state
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=h, kv_cache=kv_cache)

    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, on_token=None) -> Tensor:
        """Sample ``max_new_tokens`` continuations with a KV cache (greedy when ``temperature == 0``);
        ``on_token(next_ids)`` is called at each step (streaming)."""
        from .generation import sample

        return sample(self, input_ids, max_new_tokens, self.config.num_hidden_layers, temperature, top_k, generator,
                      use_cache=self.roformer.position.allows_kv_cache, on_token=on_token)


class ClassificationHead(nn.Module):
    """dense, act, dropout, out_proj on the first token's hidden state ([CLS])."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, h: Tensor) -> Tensor:
        x = self.dropout(h[:, 0])
        return self.out_proj(self.dropout(self.act(self.dense(x))))


class RoFormerForSequenceClassification(_WithEncoder):
    """Sentence (pair) classification, or regression with ``num_labels=1`` (GLUE, §4.3)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.classifier = ClassificationHead(config)
        self._finish_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kw) -> ModelOutput:
        logits = self.classifier(self.roformer(input_ids, attention_mask, token_type_ids, **kw).last_hidden_state)
        loss = None
        if labels is not None:
            problem = self.config.problem_type
            if problem is None:
                if self.config.num_labels == 1:
                    problem = "regression"
                elif not labels.is_floating_point():
                    problem = "single_label_classification"
                else:
                    problem = "multi_label_classification"
            if problem == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
            elif problem == "single_label_classification":
                loss = F.cross_entropy(logits.float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return ModelOutput(logits=logits, loss=loss)


class RoFormerForTokenClassification(_WithEncoder):
    """A label per token (e.g. named entities)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._finish_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kw) -> ModelOutput:
        h = self.roformer(input_ids, attention_mask, token_type_ids, **kw).last_hidden_state
        logits = self.classifier(self.dropout(h))
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return ModelOutput(logits=logits, loss=loss)


class RoFormerForQuestionAnswering(_WithEncoder):
    """Extractive QA: start and end logits over the tokens."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(dataclasses.replace(config, num_labels=2))
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._finish_init()

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None,
        end_positions=None, **kw,
    ) -> ModelOutput:
        logits = self.qa_outputs(self.roformer(input_ids, attention_mask, token_type_ids, **kw).last_hidden_state)
        start, end = logits.unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            seq = start.shape[1]  # positions outside the sequence are ignored, as in HuggingFace
            s, e = start_positions.view(-1).clamp(0, seq), end_positions.view(-1).clamp(0, seq)
            loss = (F.cross_entropy(start.float(), s, ignore_index=seq)
                    + F.cross_entropy(end.float(), e, ignore_index=seq)) / 2
        return ModelOutput(loss=loss, start_logits=start, end_logits=end)


class RoFormerForMultipleChoice(_WithEncoder):
    """Scores each of C candidate sequences; inputs are (batch, C, seq). Like HuggingFace's RoFormer, the
    sequence is summarised by its *last* token's hidden state."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self._finish_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kw) -> ModelOutput:
        if input_ids is None or input_ids.ndim != 3:
            raise InvalidArgument("multiple choice takes input_ids of shape (batch, num_choices, seq)")
        batch, choices, seq = input_ids.shape
        flat = [None if t is None else t.reshape(batch * choices, seq)
                for t in (input_ids, attention_mask, token_type_ids)]
        h = self.roformer(*flat, **kw).last_hidden_state
        logits = self.classifier(h[:, -1]).view(batch, choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ModelOutput(logits=logits, loss=loss)
