"""Saving and loading the models that are not HuggingFace RoFormer checkpoints (the decoder LM, the
encoder-decoder): ``config.json`` (the config dataclass plus a ``model_type``) and ``model.safetensors``, both
written atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import InvalidArgument, MissingFile
from ..io import atomic_write, atomic_write_text, read_json

__all__ = ["save_model_dir", "load_model_dir"]

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def save_model_dir(model: nn.Module, directory: str | Path, model_type: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda tmp: save_model(model, tmp))
    config = {"model_type": model_type, **dataclasses.asdict(model.config)}
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")


def load_model_dir(cls, config_cls, directory: str | Path, model_type: str):
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise MissingFile(f"no config.json in {directory}: not a saved model directory")
    config = read_json(path, expect=dict)
    found = config.pop("model_type", None)
    if found != model_type:
        raise InvalidArgument(f"{directory} holds a {found!r} model, not a {cls.__name__} ({model_type!r})")
    model = cls(config_cls(**config))
    path = directory / "model.safetensors"
    try:  # safetensors' loader, which knows the tied weights save_model left out
        floating = {k: v.is_floating_point() for k, v in model.state_dict().items()}
        with safe_open(str(path), "pt") as f:  # dtypes from the header: load_state_dict would cast ints silently
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if floating.get(name) and dtype not in _FLOAT_DTYPES:
                    raise InvalidArgument(f"{path}: {name} is stored as {dtype}; a weight must be a floating-point "
                                          "tensor")
        load_model(model, str(path))
    except (SafetensorError, OSError) as e:
        raise InvalidArgument(f"{path} is not a readable safetensors file ({e}); it may be truncated: save it "
                              "again") from None
    except RuntimeError as e:
        raise InvalidArgument(f"{path} does not fit its config.json ({e})") from None
    return model
