"""The RoFormer encoder (paper §3.4, §4.2) and its task heads, as ``transformers`` models.

RoFormer is BERT with the absolute position embeddings removed and RoPE applied to the queries and keys of
every self-attention layer (Eq. 16): word + token-type embeddings, LayerNorm, then post-LayerNorm Transformer
blocks with GELU. The classes subclass ``transformers.PreTrainedModel`` and the module tree is HuggingFace's
(``roformer.encoder.layer.3.attention.self.query``, ...), so loading, saving, sharding, the hub, resizing,
gradient checkpointing, ``generate``, ``Trainer``, ``peft`` and the pipelines are transformers' own, and a state
dict is a HuggingFace RoFormer state dict. What is ours is the attention: RoPE through :mod:`roformer.rope` (no
maximum length, every scaling of :mod:`roformer.rope_scaling`), SDPA, and the paper's baseline position
encodings (``position``).

Which ``model_type`` a checkpoint gets decides who may load it. A config that stock ``transformers.RoFormer*``
computes exactly (RoPE with base 10000, no scaling) is saved as ``"roformer"``, loadable by plain
transformers; any other (another ``rope_theta``, ``rope_parameters``, another position encoding) as
``"roformer-variant"``, registered with the Auto classes by ``import roformer``, so that plain transformers
refuses it ("does not recognize this architecture") instead of running it with the wrong positions.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.generation.stopping_criteria import MaxLengthCriteria
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import get_torch_context_manager_or_global_device

from ..attention import attend, attention_bias
from ..errors import InvalidArgument
from ..io import umask_mode
from ..layers import activation
from ..position import POSITIONS, ALiBi, alibi_slopes, build_position
from ..rope import rotary_cos_sin
from ..rope_scaling import NO_CACHE, model_rope_base
from .fields import NON_NEGATIVE, POSITIVE, POSITIVE_FLOAT, PROBABILITY, check_fields
from .inputs import check_attention_mask, check_token_ids
from .loading import check_directory, check_loading_info, hub_error, hub_options

__all__ = [
    "RoFormerConfig",
    "RoFormerPreTrainedModel",
    "RoFormerModel",
    "RoFormerForMaskedLM",
    "RoFormerForCausalLM",
    "RoFormerForSequenceClassification",
    "RoFormerForTokenClassification",
    "RoFormerForQuestionAnswering",
    "RoFormerForMultipleChoice",
    "VARIANT_MODEL_TYPE",
]

VARIANT_MODEL_TYPE = "roformer-variant"
# what earlier versions wrote for a baseline position encoding; still read
_LEGACY_TYPES = {f"roformer-{p}-positions" for p in POSITIONS}
# the fields a run directory records as the model's identity (as recorded before the port to transformers)
_RUN_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
               "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
               "rotary_value", "is_decoder", "tie_word_embeddings", "num_labels", "problem_type", "rope_theta",
               "rope_parameters", "position")


class RoFormerConfig(PreTrainedConfig):
    """Hyper-parameters; names and defaults follow ``transformers.RoFormerConfig`` (whose defaults are the Chinese
    base model's), plus three of ours: ``rope_theta``, ``rope_parameters`` (RoPE scaling in transformers' form,
    ``{"rope_type": "yarn", "factor": ...}``) and ``position`` (``rope``, or a baseline: none, learned (BERT),
    sinusoidal, shaw, t5, alibi). Every field is checked for type and range when the config is made."""

    model_type = VARIANT_MODEL_TYPE

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
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    rotary_value: bool = False
    use_cache: bool = True
    is_decoder: bool = False
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0  # not in HuggingFace's RoFormer, which always uses 10000
    rope_parameters: dict | None = None
    position: str = "rope"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_fields(self, {"vocab_size": POSITIVE, "embedding_size": POSITIVE, "hidden_size": POSITIVE,
                            "num_hidden_layers": POSITIVE, "num_attention_heads": POSITIVE,
                            "intermediate_size": POSITIVE, "hidden_dropout_prob": PROBABILITY,
                            "attention_probs_dropout_prob": PROBABILITY, "max_position_embeddings": POSITIVE,
                            "type_vocab_size": POSITIVE, "initializer_range": NON_NEGATIVE,
                            "layer_norm_eps": POSITIVE_FLOAT, "pad_token_id": (0, self.vocab_size, False, True),
                            "rope_theta": POSITIVE_FLOAT})
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.num_labels is not None and not (isinstance(self.num_labels, int) and self.num_labels >= 1):
            raise InvalidArgument(f"num_labels must be an integer >= 1, got {self.num_labels!r}")
        if self.hidden_size % self.num_attention_heads:
            raise InvalidArgument(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                                  f"{self.num_attention_heads}")
        if self.head_dim % 2:
            raise InvalidArgument(f"RoPE needs an even head dim; hidden_size / num_attention_heads = {self.head_dim}")
        activation(self.hidden_act)
        if self.position not in POSITIONS:
            raise InvalidArgument(f"unknown position encoding {self.position!r}; use one of {', '.join(POSITIONS)}")
        if getattr(self, "add_cross_attention", False):
            raise InvalidArgument("RoFormer with cross-attention (add_cross_attention=True) is not supported here")
        self.rope_theta = model_rope_base(self.rope_theta, self.rope_parameters, self.position, self.head_dim,
                                          self.max_position_embeddings)

    def convert_rope_params_to_dict(self, **kwargs):
        """transformers' own standardisation would rewrite ``rope_parameters``; :mod:`roformer.rope_scaling` checks
        them instead (``model_rope_base``). Only the legacy name ``rope_scaling`` is taken here."""
        legacy = kwargs.pop("rope_scaling", None)
        if legacy is not None and self.rope_parameters is None:
            self.rope_parameters = legacy
        return kwargs

    def validate(self):
        """transformers' checks of a config (run on save), but for its ``validate_rope``, which wants its own keys
        (``rope_theta`` inside ``rope_parameters``): :func:`roformer.rope_scaling.normalize_rope_parameters` has
        checked those when the config was made."""
        for validator in PreTrainedConfig.__class_validators__:
            if validator.__name__ != "validate_rope":
                validator(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # -- who may load a checkpoint ------------------------------------------------------------------
    def variant_fields(self) -> dict:
        """The settings stock ``transformers.RoFormer*`` does not compute (empty: it reproduces this config)."""
        found = {}
        if self.position != "rope":
            found["position"] = self.position
        if self.rope_theta != 10000.0:
            found["rope_theta"] = self.rope_theta
        if self.rope_parameters and self.rope_parameters.get("rope_type", "default") != "default" or any(
                k not in ("rope_type", "rope_theta") for k in (self.rope_parameters or {})):
            found["rope_parameters"] = self.rope_parameters
        return found

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["model_type"] = VARIANT_MODEL_TYPE if self.variant_fields() else "roformer"
        return d

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config, kwargs = super().get_config_dict(*args, **kwargs)
        found = config.get("model_type", "roformer")
        if found in ("roformer-decoder", "roformer-seq2seq"):
            kind = "DecoderLM" if found == "roformer-decoder" else "Seq2SeqTransformer"
            raise InvalidArgument(f"{args[0] if args else 'this directory'} holds a {found!r} model: load it with "
                                  f"{kind}.from_pretrained (the RoFormer encoder classes read RoFormer checkpoints)")
        if found not in ("roformer", VARIANT_MODEL_TYPE, *_LEGACY_TYPES):
            raise InvalidArgument(f"not a RoFormer config: model_type is {found!r}")
        return {**config, "model_type": VARIANT_MODEL_TYPE}, kwargs

    def settings(self) -> dict:
        """The fields that define the network, as a run directory records them (its identity)."""
        d = {name: getattr(self, name) for name in _RUN_FIELDS}
        d["model_type"] = "roformer" if self.position == "rope" else f"roformer-{self.position}-positions"
        d["id2label"] = {str(i): self.id2label[i] for i in range(self.num_labels)}
        d["label2id"] = {label: int(i) for i, label in d["id2label"].items()}
        return dict(sorted(d.items()))


# ------------------------------------------------------------------------------------------------------
# The encoder, in HuggingFace's module tree
# ------------------------------------------------------------------------------------------------------


class RoFormerEmbeddings(nn.Module):
    """word + token-type embeddings (no absolute positions), then LayerNorm and dropout."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        c = config
        self.word_embeddings = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_token_id)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.embedding_size)
        self.LayerNorm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)


class RoFormerSelfAttention(nn.Module):
    """q, k, v projections; RoPE (or the position encoding's term) and SDPA in :func:`roformer.attention.attend`."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.dropout, self.rotary_value = config.attention_probs_dropout_prob, config.rotary_value
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: Tensor, pos, bias, is_causal: bool, cache, layer: int) -> Tensor:
        batch, seq, _ = x.shape
        q, k, v = (proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, d)
                   for proj in (self.query, self.key, self.value))
        return attend(q, k, v, pos, bias, is_causal, cache, layer, self.dropout if self.training else 0.0,
                      self.rotary_value)  # (batch, seq, hidden)


class RoFormerResidualNorm(nn.Module):
    """LN(x + dropout(dense(h))): the output half of each post-LayerNorm sub-layer."""

    def __init__(self, in_features: int, config: RoFormerConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(x + self.dropout(self.dense(h)))


class RoFormerAttention(nn.Module):
    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.self = RoFormerSelfAttention(config)
        self.output = RoFormerResidualNorm(config.hidden_size, config)


class RoFormerIntermediate(nn.Module):
    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class RoFormerLayer(nn.Module):
    """x = LN(x + Attention(x)); x = LN(x + FFN(x)) (post-LayerNorm, as BERT)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.attention = RoFormerAttention(config)
        self.intermediate = RoFormerIntermediate(config)
        self.output = RoFormerResidualNorm(config.intermediate_size, config)

    def forward(self, x: Tensor, pos, bias, is_causal: bool, cache, layer: int) -> Tensor:
        x = self.attention.output(self.attention.self(x, pos, bias, is_causal, cache, layer), x)
        return self.output(self.intermediate(x), x)


def _hf_sinusoid_table(config: RoFormerConfig) -> Tensor:
    """The table HuggingFace's RoFormer keeps as ``encoder.embed_positions`` and reads RoPE's cos/sin from: sin(m
    theta) in the first half of each row, cos(m theta) in the second."""
    cos, sin = rotary_cos_sin(torch.arange(config.max_position_embeddings), config.head_dim)
    return torch.cat((sin, cos), dim=-1).float()


class RoFormerSinusoidTable(nn.Module):
    """HuggingFace's ``encoder.embed_positions`` (see :func:`_hf_sinusoid_table`), kept as a buffer so that a
    checkpoint saved here is one stock transformers loads whole. Never read: RoPE forms its cos/sin on the fly,
    for any length."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.register_buffer("weight", torch.empty(config.max_position_embeddings, config.head_dim))  # _init_weights


class RoFormerEncoder(nn.Module):
    def __init__(self, config: RoFormerConfig):
        super().__init__()
        if config.position == "rope":
            self.embed_positions = RoFormerSinusoidTable(config)
        self.layer = nn.ModuleList(RoFormerLayer(config) for _ in range(config.num_hidden_layers))


class RoFormerPreTrainedModel(PreTrainedModel):
    config_class = RoFormerConfig
    base_model_prefix = "roformer"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["RoFormerLayer"]
    # the decoder bias older checkpoints store twice
    _keys_to_ignore_on_load_unexpected = [r"decoder\.bias$"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained`` (a directory saved here or by transformers, or a hub id, with its
        revision, cache, dtype and device options; config fields as keywords, e.g. ``num_labels=3``), with the
        checks of :mod:`roformer.models.loading`: a checkpoint its config does not describe is refused."""
        source = pretrained_model_name_or_path
        local = source is not None and Path(source).expanduser().is_dir()
        if source is not None:
            kwargs = hub_options(source, kwargs)
        if local and not kwargs.get("subfolder"):
            check_directory(Path(source).expanduser())
        wanted = kwargs.pop("output_loading_info", False)
        ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            model, info = super().from_pretrained(source, *args, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, **kwargs)
        except TypeError as e:  # a keyword transformers passed on to the constructor: neither option nor field
            m = re.search(r"__init__\(\) got an unexpected keyword argument '(\w+)'", str(e))
            if m is None:
                raise
            raise InvalidArgument(f"{cls.__name__}.from_pretrained: {m.group(1)!r} is neither a loading option nor "
                                  "a RoFormerConfig field") from None
        except OSError as e:
            if source is None or local:
                raise
            raise hub_error(source, e, kwargs) from None
        check_loading_info(source, info, model, ignore_mismatched)
        return (model, info) if wanted else model

    @classmethod
    def from_pretrained_as_new(cls, pretrained_model_name_or_path, **config_overrides):
        """The recipes' start of a fine-tuning: a model built as a new one (every weight drawn, as
        :meth:`init_weights` draws them) and then given every weight the checkpoint has, with the checks of
        :meth:`from_pretrained`. A head the checkpoint lacks thus gets the values a new model of this seed has,
        and the global RNG ends where building a new model leaves it: what ``from_pretrained`` did here before the
        classes were transformers models, so that the committed fine-tuning runs retrain to their records.
        transformers' ``from_pretrained`` draws only the missing weights, which gives another head."""
        config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **config_overrides)
        model = cls(config)
        with torch.random.fork_rng(devices=[]):  # the loader's own draws (the missing head) leave no trace
            loaded, info = cls.from_pretrained(pretrained_model_name_or_path, output_loading_info=True,
                                               **config_overrides)
        missing = set(info["missing_keys"])
        model.load_state_dict({k: v for k, v in loaded.state_dict().items() if k not in missing}, strict=False)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, its files then given the mode of the process umask (safetensors
        writes through a private 0600 file)."""
        before = {p: p.stat().st_mtime_ns for p in Path(save_directory).glob("*")} if Path(save_directory).is_dir() \
            else {}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for path in Path(save_directory).glob("*"):
            if path.is_file() and not path.is_symlink() and before.get(path) != path.stat().st_mtime_ns:
                os.chmod(path, umask_mode())
        return result

    def init_weights(self) -> None:
        """Draw the weights of a new model (transformers calls this at the end of construction), then tie them.

        The draws are those this project made before its classes were transformers models: one pass over the
        modules in order, parents before children (the encoder of a head draws once when it is built, and again
        in the head's pass, as it did then). transformers' own pass goes children first and skips what it has
        drawn, and would give another model for the same seed; this one keeps a seed's model what it was, so
        that the committed runs retrain to their records. A model being loaded (built on the meta device) draws
        nothing."""
        if get_torch_context_manager_or_global_device() != torch.device("meta"):
            with torch.no_grad():
                for module in self.modules():
                    self._init_weights(module)
                    module._is_hf_initialized = True
        self.tie_weights(recompute_mapping=False)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RoFormerLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, RoFormerSinusoidTable):
            init.copy_(module.weight, _hf_sinusoid_table(self.config))
        elif isinstance(module, ALiBi):  # a fixed buffer, not in checkpoints: formed again on every load
            init.copy_(module.slopes, alibi_slopes(module.slopes.numel()))


class RoFormerModel(RoFormerPreTrainedModel):
    """The encoder: embeddings (no absolute positions) and a stack of post-LayerNorm blocks with RoPE (or, for
    the paper's baselines, another ``position`` encoding)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        c = config
        self.embeddings = RoFormerEmbeddings(c)
        self.embeddings_project = nn.Linear(c.embedding_size, c.hidden_size) if c.embedding_size != c.hidden_size \
            else None
        self.position = build_position(
            c.position, hidden_size=c.embedding_size, num_heads=c.num_attention_heads, head_dim=c.head_dim,
            causal=c.is_decoder, max_positions=c.max_position_embeddings, rope_theta=c.rope_theta,
            rope_parameters=c.rope_parameters, num_layers=c.num_hidden_layers,
        )
        self.encoder = RoFormerEncoder(c)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``last_hidden_state`` (batch, seq, hidden), and the ``cache`` when one is used.

        ``attention_mask`` (batch, seq [+ cached]) is 1 for real tokens and 0 for padding. ``position_ids``
        ((seq,) or (batch, seq), RoPE only) defaults to 0..seq-1 after any cached tokens. ``cache`` (transformers'
        name since 5.x, formerly ``past_key_values``): a ``transformers`` cache (``DynamicCache``, or
        :class:`roformer.attention.KVCache`) for decoding (``is_decoder``): the rotated keys and values of earlier
        tokens, which this call appends to."""
        c = self.config
        if output_attentions:
            raise InvalidArgument("output_attentions is not available: attention runs in SDPA, which does not return "
                                  "its probabilities")
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidArgument("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            check_token_ids(input_ids, c.vocab_size)
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        elif inputs_embeds.ndim != 3 or inputs_embeds.shape[1] == 0:
            raise InvalidArgument(f"inputs_embeds must be (batch, seq, hidden) with seq >= 1, got "
                                  f"{tuple(inputs_embeds.shape)}")
        batch, seq = inputs_embeds.shape[:2]
        if token_type_ids is None:
            x = inputs_embeds + self.embeddings.token_type_embeddings.weight[0]
        else:
            check_token_ids(token_type_ids, c.type_vocab_size, "token_type_ids")
            if token_type_ids.shape != (batch, seq):
                raise InvalidArgument(f"token_type_ids must be (batch, seq) = ({batch}, {seq}) like the input, got "
                                      f"{tuple(token_type_ids.shape)}")
            x = inputs_embeds + self.embeddings.token_type_embeddings(token_type_ids)
        cache = None if use_cache is False else cache
        if cache is not None and not self.position.allows_kv_cache:
            raise InvalidArgument(NO_CACHE.format(c.rope_parameters["rope_type"]))
        offset = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, batch, offset + seq)
        if position_ids is not None and c.position != "rope":
            raise InvalidArgument(f"position_ids need position='rope'; {c.position!r} takes none")
        x = self.position.embed(x, offset)  # absolute schemes, as in BERT
        x = self.embeddings.dropout(self.embeddings.LayerNorm(x))
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)

        pos = self.position.attention(seq, offset + seq, offset, x.device, position_ids)
        causal = c.is_decoder
        if attention_mask is None and offset == 0:
            bias = None  # no mask at all, or SDPA's own causal mask
        else:
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            bias = attention_bias(attention_mask, seq, offset + seq, causal, dtype, x.device)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        hidden_states = [x] if output_hidden_states else None
        for i, layer in enumerate(self.encoder.layer):
            if checkpointing:
                x = self._gradient_checkpointing_func(layer.__call__, x, pos, bias, causal, cache, i)
            else:
                x = layer(x, pos, bias, causal, cache, i)
            if hidden_states is not None:
                hidden_states.append(x)
        out = BaseModelOutputWithPast(last_hidden_state=x, cache=cache,
                                      hidden_states=tuple(hidden_states) if hidden_states else None)
        return out if return_dict is not False else out.to_tuple()



# ------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------


def _token_loss(logits: Tensor, labels: Tensor, num_items_in_batch=None) -> Tensor:
    """Cross-entropy over tokens, -100 ignored: the mean, or (``transformers.Trainer`` with gradient accumulation)
    the sum over ``num_items_in_batch`` scored tokens of the whole accumulated batch."""
    logits, labels = logits.flatten(0, -2).float(), labels.flatten().to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch


class RoFormerPredictionHeadTransform(nn.Module):
    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)

    def forward(self, h: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class RoFormerLMPredictionHead(nn.Module):
    """transform (dense, act, LayerNorm), then the projection onto the vocabulary, tied to the word embeddings;
    its bias is ``bias`` (HuggingFace's two names for one vector)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.transform = RoFormerPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size, bias=False)  # its bias is the one below
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.transform(h))


class RoFormerOnlyMLMHead(nn.Module):
    def __init__(self, config: RoFormerConfig):
        super().__init__()
        self.predictions = RoFormerLMPredictionHead(config)

    def forward(self, h: Tensor) -> Tensor:
        return self.predictions(h)


class _LMHeadModel(RoFormerPreTrainedModel):
    _tied_weights_keys = {"cls.predictions.decoder.weight": "roformer.embeddings.word_embeddings.weight",
                          "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.roformer = RoFormerModel(config)
        self.cls = RoFormerOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value
        self.cls.predictions.bias = value.bias


class RoFormerForMaskedLM(_LMHeadModel):
    """Masked language modelling (the pre-training objective of §4.2)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                num_items_in_batch=None, **kwargs) -> MaskedLMOutput:
        """``labels``: (batch, seq) token ids to predict, -100 where no prediction is scored."""
        out = self.roformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.cls(out.last_hidden_state)
        loss = None if labels is None else _token_loss(logits, labels, num_items_in_batch)
        result = MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class RoFormerForCausalLM(_LMHeadModel, GenerationMixin):
    """Left-to-right language model: the encoder with a causal mask (``is_decoder=True`` is forced), decoding
    through transformers' ``generate`` (greedy by default; sampling, beams, streamers, stopping criteria ...).
    A length-dependent RoPE scaling (dynamic NTK, LongRoPE) takes no cache: it then decodes by full passes."""

    def __init__(self, config: RoFormerConfig):
        if not config.is_decoder:  # a copy: the caller's config may serve an encoder too
            config = copy.deepcopy(config)
            config.is_decoder = True
        super().__init__(config)
        if not self.roformer.position.allows_kv_cache:
            self.generation_config.use_cache = False

    def _get_stopping_criteria(self, *args, **kwargs):
        """transformers' own, without its warning past ``max_position_embeddings``: RoPE has no maximum length."""
        criteria = super()._get_stopping_criteria(*args, **kwargs)
        for criterion in criteria:
            if isinstance(criterion, MaxLengthCriteria):
                criterion.max_position_embeddings = None
        return criteria

    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict:
        """transformers' own, but a length-dependent scaling gets no ``position_ids``: its angles depend on the
        length of the whole sequence, which it forms itself at each full pass (0..L-1, pads included; RoPE is
        relative, so a left-padded row still sees its own distances)."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if not self.roformer.position.allows_kv_cache:
            inputs.pop("position_ids", None)
        return inputs

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                cache=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, logits_to_keep: int = 0, num_items_in_batch=None, **kwargs) -> CausalLMOutputWithPast:
        """``labels`` are the input ids themselves (shifted inside): position t is scored on token t+1."""
        out = self.roformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            cache=cache, use_cache=use_cache, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states)
        h = out.last_hidden_state
        logits = self.cls(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:  # the labels shifted, not the logits: a copy of (batch, seq, vocab) saved
            loss = _token_loss(logits, F.pad(labels[:, 1:], (0, 1), value=-100), num_items_in_batch)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache,
                                        hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class RoFormerClassificationHead(nn.Module):
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


def _sequence_loss(config: RoFormerConfig, logits: Tensor, labels: Tensor) -> Tensor:
    """Regression (one label), single-label or multi-label classification, by ``problem_type`` or, as in
    transformers, by the labels' number and dtype."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif not labels.is_floating_point():
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.float(), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class _WithEncoder(RoFormerPreTrainedModel):
    # the loss is a mean over the batch, not a sum over tokens: transformers' Trainer must divide it by the
    # gradient accumulation steps itself, and pass no num_items_in_batch (the token heads below set True)
    accepts_loss_kwargs = False
    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.roformer = RoFormerModel(config)

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                output_hidden_states):
        return self.roformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states)


class RoFormerForSequenceClassification(_WithEncoder):
    """Sentence (pair) classification, or regression with ``num_labels=1`` (GLUE, §4.3)."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.classifier = RoFormerClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                **kwargs) -> SequenceClassifierOutput:
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                           output_hidden_states)
        logits = self.classifier(out.last_hidden_state)
        loss = None if labels is None else _sequence_loss(self.config, logits, labels)
        result = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class RoFormerForTokenClassification(_WithEncoder):
    """A label per token (e.g. named entities)."""

    accepts_loss_kwargs = True  # a sum over the scored tokens of the accumulated batch (``num_items_in_batch``)

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                num_items_in_batch=None, **kwargs) -> TokenClassifierOutput:
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                           output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None if labels is None else _token_loss(logits, labels, num_items_in_batch)
        result = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class RoFormerForQuestionAnswering(_WithEncoder):
    """Extractive QA: start and end logits over the tokens."""

    def __init__(self, config: RoFormerConfig):
        config.num_labels = 2
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> QuestionAnsweringModelOutput:
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                           output_hidden_states)
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            seq = start.shape[1]  # positions outside the sequence are ignored, as in HuggingFace
            s, e = start_positions.view(-1).clamp(0, seq), end_positions.view(-1).clamp(0, seq)
            loss = (F.cross_entropy(start.float(), s, ignore_index=seq)
                    + F.cross_entropy(end.float(), e, ignore_index=seq)) / 2
        result = QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                              hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class RoFormerForMultipleChoice(_WithEncoder):
    """Scores each of C candidate sequences; inputs are (batch, C, seq). Like HuggingFace's RoFormer, the
    sequence is summarised by its *last* token's hidden state."""

    def __init__(self, config: RoFormerConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                **kwargs) -> MultipleChoiceModelOutput:
        shaped = input_ids if input_ids is not None else inputs_embeds
        if shaped is None or shaped.ndim != (3 if input_ids is not None else 4):
            raise InvalidArgument("multiple choice takes input_ids of shape (batch, num_choices, seq)")
        batch, choices, seq = shaped.shape[:3]
        flat = [None if t is None else t.reshape(batch * choices, seq, *t.shape[3:])
                for t in (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)]
        out = self._encode(*flat, output_attentions, output_hidden_states)
        logits = self.classifier(out.last_hidden_state[:, -1]).view(batch, choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        result = MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


# the Auto classes: after ``import roformer``, ``AutoModel*.from_pretrained`` of a "roformer-variant" checkpoint
# builds these classes (a plain "roformer" one stays transformers' own, which computes it exactly)
AutoConfig.register(VARIANT_MODEL_TYPE, RoFormerConfig)
for _auto, _cls in ((AutoModel, RoFormerModel), (AutoModelForMaskedLM, RoFormerForMaskedLM),
                    (AutoModelForCausalLM, RoFormerForCausalLM),
                    (AutoModelForSequenceClassification, RoFormerForSequenceClassification),
                    (AutoModelForTokenClassification, RoFormerForTokenClassification),
                    (AutoModelForQuestionAnswering, RoFormerForQuestionAnswering),
                    (AutoModelForMultipleChoice, RoFormerForMultipleChoice)):
    # exist_ok: the Auto mappings compare config classes by name, and ours shares transformers' name; the entry is
    # keyed by this class object, so transformers' own RoFormerConfig still maps to its own models
    _auto.register(RoFormerConfig, _cls, exist_ok=True)
