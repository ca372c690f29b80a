"""roformer: RoFormer and rotary position embedding (Su et al., "RoFormer: Enhanced Transformer with Rotary
Position Embedding", arXiv 2104.09864)."""

from .attention import KVCache, MultiHeadAttention
from .rope import RotaryEmbedding, apply_rotary, permute_rotary_layout, relative_upper_bound, rotary_positions
from .rope_nd import AxialRotaryEmbedding, MixedRotaryEmbedding, MultimodalRotaryEmbedding, mrope_position_ids

try:  # the models are transformers models; RoPE, attention and linear attention need torch alone
    import transformers  # noqa: F401
except ImportError:
    pass
else:  # importing them registers the "roformer-variant" model type with the Auto classes
    from .models import (
        ModelOutput,
        RoFormerConfig,
        RoFormerForCausalLM,
        RoFormerForMaskedLM,
        RoFormerForMultipleChoice,
        RoFormerForQuestionAnswering,
        RoFormerForSequenceClassification,
        RoFormerForTokenClassification,
        RoFormerModel,
    )

__version__ = "0.1.0"

__all__ = [
    "RotaryEmbedding",
    "apply_rotary",
    "rotary_positions",
    "MultimodalRotaryEmbedding",
    "mrope_position_ids",
    "AxialRotaryEmbedding",
    "MixedRotaryEmbedding",
    "permute_rotary_layout",
    "relative_upper_bound",
    "KVCache",
    "MultiHeadAttention",
    "ModelOutput",
    "RoFormerConfig",
    "RoFormerModel",
    "RoFormerForMaskedLM",
    "RoFormerForCausalLM",
    "RoFormerForSequenceClassification",
    "RoFormerForTokenClassification",
    "RoFormerForQuestionAnswering",
    "RoFormerForMultipleChoice",
]
