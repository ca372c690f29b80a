"""Saving and loading the models that are not HuggingFace RoFormer checkpoints (the decoder LM, the
encoder-decoder): ``config.json`` (the config dataclass plus a ``model_type``) and ``model.safetensors``, both
written atomically."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import InvalidArgument, MissingFile
from ..io import atomic_write, atomic_write_text, read_json

__all__ = ["save_model_dir", "load_model_dir", "read_model_config", "check_weight_dtypes"]

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def save_model_dir(model: nn.Module, directory: str | Path, model_type: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda tmp: save_model(model, tmp))
    config = {"model_type": model_type, **dataclasses.asdict(model.config)}
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")


def read_model_config(directory: Path) -> dict:
    """The ``config.json`` of a saved model directory, as a dict; its absence, or a file that is not a JSON object,
    is one line naming it."""
    path = directory / "config.json"
    if not path.is_file():
        raise MissingFile(f"no config.json in {directory}: not a saved model directory")
    return read_json(path, expect=dict)


def check_weight_dtypes(path: Path, should_float: Callable[[str], bool] = lambda name: True) -> None:
    """Every weight of the safetensors file ``path`` that ``should_float`` names is stored as a floating-point
    tensor, read from the file's header (loading would cast an integer tensor silently); a file that is not a
    readable safetensors file is one line naming it."""
    try:
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if should_float(name) and dtype not in _FLOAT_DTYPES:
                    raise InvalidArgument(f"{path}: {name} is stored as {dtype}; a weight must be a floating-point "
                                          "tensor (float32, float16, bfloat16 or float64)")
    except (SafetensorError, OSError) as e:
        raise InvalidArgument(f"{path} is not a readable safetensors file ({e}); it may be truncated: save or "
                              "download it again") from None


def load_model_dir(cls, config_cls, directory: str | Path, model_type: str):
    directory = Path(directory)
    config = read_model_config(directory)
    found = config.pop("model_type", None)
    if found != model_type:
        raise InvalidArgument(f"{directory} holds a {found!r} model, not a {cls.__name__} ({model_type!r})")
    model = cls(config_cls(**config))
    path = directory / "model.safetensors"
    floating = {k: v.is_floating_point() for k, v in model.state_dict().items()}
    check_weight_dtypes(path, lambda name: floating.get(name, False))
    try:  # safetensors' loader, which knows the tied weights save_model left out
        load_model(model, str(path))
    except (SafetensorError, OSError) as e:
        raise InvalidArgument(f"{path} is not a readable safetensors file ({e}); it may be truncated: save it "
                              "again") from None
    except RuntimeError as e:
        raise InvalidArgument(f"{path} does not fit its config.json ({e})") from None
    return model
