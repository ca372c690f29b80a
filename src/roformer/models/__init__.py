"""Assembled networks. The RoFormer encoder classes are ``transformers`` models (this package is the only part
of roformer that needs transformers); importing it registers them with the Auto classes."""

from .outputs import ModelOutput
from .roformer import (
    VARIANT_MODEL_TYPE,
    RoFormerConfig,
    RoFormerForCausalLM,
    RoFormerForMaskedLM,
    RoFormerForMultipleChoice,
    RoFormerForQuestionAnswering,
    RoFormerForSequenceClassification,
    RoFormerForTokenClassification,
    RoFormerModel,
    RoFormerPreTrainedModel,
)

__all__ = [
    "ModelOutput",
    "VARIANT_MODEL_TYPE",
    "RoFormerConfig",
    "RoFormerPreTrainedModel",
    "RoFormerModel",
    "RoFormerForMaskedLM",
    "RoFormerForCausalLM",
    "RoFormerForSequenceClassification",
    "RoFormerForTokenClassification",
    "RoFormerForQuestionAnswering",
    "RoFormerForMultipleChoice",
]
