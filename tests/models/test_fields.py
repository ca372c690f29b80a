"""Every config field of every config class refuses a value of the wrong type or out of range with one error
naming the field (the classes of mistakes an outside review found: 0 heads, "64" as a size, 256.0 as a
vocabulary, NaN or negative rates), and accepts the defaults."""

import dataclasses
import math

import pytest

from roformer.errors import InvalidArgument, InvalidType
from roformer.models import RoFormerConfig
from roformer.models.decoder import DecoderConfig
from roformer.models.seq2seq import Seq2SeqConfig
from roformer.train import TrainConfig

BASE = {RoFormerConfig: dict(vocab_size=100, hidden_size=32, num_attention_heads=2),
        DecoderConfig: dict(vocab_size=100, hidden_size=32, num_heads=2),
        Seq2SeqConfig: dict(vocab_size=100, hidden_size=32, num_heads=2), TrainConfig: {}}


def own_fields(cls):
    """The fields a class declares (RoFormerConfig's, not those of transformers' PreTrainedConfig it inherits)."""
    return [f for f in dataclasses.fields(cls) if f.name in cls.__annotations__]


def cases():
    for cls in BASE:
        for f in own_fields(cls):
            kinds = str(f.type)
            if kinds.startswith("int"):
                yield pytest.param(cls, f.name, "7", InvalidType, id=f"{cls.__name__}.{f.name}=str")
                yield pytest.param(cls, f.name, 7.0, InvalidType, id=f"{cls.__name__}.{f.name}=float")
                yield pytest.param(cls, f.name, True, InvalidType, id=f"{cls.__name__}.{f.name}=bool")
            elif kinds.startswith("float"):
                yield pytest.param(cls, f.name, "0.1", InvalidType, id=f"{cls.__name__}.{f.name}=str")
                yield pytest.param(cls, f.name, math.nan, InvalidArgument, id=f"{cls.__name__}.{f.name}=nan")
            elif kinds.startswith("bool"):
                yield pytest.param(cls, f.name, 1, InvalidType, id=f"{cls.__name__}.{f.name}=int")
            elif kinds.startswith("str"):
                yield pytest.param(cls, f.name, 3, InvalidType, id=f"{cls.__name__}.{f.name}=int")


@pytest.mark.parametrize("cls, name, value, error", list(cases()))
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(cls, name, value, error):
    with pytest.raises(error, match=rf"{cls.__name__}\.{name} must be|{name}"):
        cls(**{**BASE[cls], name: value})


OUT_OF_RANGE = [
    (RoFormerConfig, "num_attention_heads", 0), (RoFormerConfig, "hidden_size", -32), (RoFormerConfig, "vocab_size", 0),
    (RoFormerConfig, "num_hidden_layers", 0), (RoFormerConfig, "hidden_dropout_prob", 1.0),
    (RoFormerConfig, "attention_probs_dropout_prob", -0.1), (RoFormerConfig, "layer_norm_eps", 0.0),
    (RoFormerConfig, "pad_token_id", 100), (RoFormerConfig, "pad_token_id", -1), (RoFormerConfig, "num_labels", 0),
    (RoFormerConfig, "rope_theta", 0.0), (RoFormerConfig, "type_vocab_size", 0),
    (RoFormerConfig, "max_position_embeddings", 0), (RoFormerConfig, "intermediate_size", 0),
    (DecoderConfig, "num_heads", 0), (DecoderConfig, "num_layers", 0), (DecoderConfig, "dropout", 1.5),
    (DecoderConfig, "num_features", 0), (DecoderConfig, "max_positions", 0), (DecoderConfig, "rope_theta", -1.0),
    (Seq2SeqConfig, "encoder_layers", 0), (Seq2SeqConfig, "decoder_layers", 0), (Seq2SeqConfig, "num_heads", 0),
    (Seq2SeqConfig, "attention_dropout", 1.0), (Seq2SeqConfig, "shaw_max_distance", 0),
    (TrainConfig, "lr", 0.0), (TrainConfig, "lr", -1e-3), (TrainConfig, "max_steps", 0), (TrainConfig, "grad_accum", 0),
    (TrainConfig, "min_lr_ratio", 1.5), (TrainConfig, "clip_grad_norm", 0.0), (TrainConfig, "log_every", 0),
    (TrainConfig, "weight_decay", -0.01), (TrainConfig, "warmup_steps", -1), (TrainConfig, "keep_last", -1),
]


@pytest.mark.parametrize("cls, name, value", OUT_OF_RANGE, ids=[f"{c.__name__}.{n}={v}" for c, n, v in OUT_OF_RANGE])
def test_a_value_out_of_range_is_refused_naming_the_field(cls, name, value):
    with pytest.raises(InvalidArgument, match=name):
        cls(**{**BASE[cls], name: value})


def test_the_defaults_and_optional_fields_are_accepted():
    for cls, values in BASE.items():
        cls(**values)
    RoFormerConfig(vocab_size=100, hidden_size=32, num_attention_heads=2, pad_token_id=None, embedding_size=None)
    TrainConfig(clip_grad_norm=None, lr=1)  # an int for a float field is a number
