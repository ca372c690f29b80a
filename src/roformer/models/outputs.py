"""What the project's own networks (the decoder-only LM of §4.6-4.7 and the encoder-decoder of §4.1) return.

The RoFormer encoder classes are ``transformers`` models and return its output classes; these two networks are
plain modules and return :class:`ModelOutput`, with the same field names, so code that reads ``out.logits`` or
``out.loss`` reads either."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention import KVCache
from ..errors import UnknownName

__all__ = ["ModelOutput"]


@dataclass
class ModelOutput:
    """Fields a network does not produce stay None. As in ``transformers``, ``out[0]`` is the first field that is
    set (the loss when there is one) and ``out["logits"]`` a field by name; ``past_key_values`` is the KV cache."""

    loss: Tensor | None = None
    logits: Tensor | None = None
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
