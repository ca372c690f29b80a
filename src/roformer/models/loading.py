"""What ``from_pretrained`` of the RoFormer classes checks around ``transformers``' own loading.

transformers reads the directory or hub repository, the shards, the dtype and the device; these checks add what
it leaves to a warning or does silently, so that a checkpoint its config does not describe is never run:
- before loading (a local directory): a ``config.json`` is there; the weights are readable (a pickle
  ``pytorch_model.bin`` is loaded with weights only, and a refusal is one line); no weight is stored as an
  integer tensor (transformers would cast it);
- after loading: no encoder weight of the checkpoint went unused (``num_hidden_layers: 1`` for a 2-layer
  checkpoint would drop a layer) and none is missing; a head weight the class lacks (an MLM head under a
  classifier) is dropped, and a new head is initialised, with transformers' warning;
- a keyword that is neither a loading option nor a config field is refused (transformers would pass it to the
  model's constructor);
- a hub id honours ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` as set at the call, and one that cannot be had is one
  line naming it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from ..errors import InvalidArgument, MissingFile
from .saving import check_weight_dtypes, read_model_config

__all__ = ["check_directory", "check_loading_info", "hub_options", "hub_error"]

def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"{index} is not a safetensors index ({type(e).__name__}: {e})") from None
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def check_directory(directory: Path) -> None:
    """The checks made before transformers reads a local model directory (see the module's docstring)."""
    read_model_config(directory)
    files = _safetensors_files(directory)
    for path in files:
        check_weight_dtypes(path)
    if files:
        return
    pt = directory / "pytorch_model.bin"
    if not pt.is_file():
        raise MissingFile(f"no model.safetensors (or pytorch_model.bin) in {directory}")
    try:
        weights = torch.load(pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidArgument(f"{pt}: refused, the pickle holds objects other than tensors, and loading it could "
                              "run code; convert the checkpoint to model.safetensors where it was made") from None
    except Exception as e:  # truncated or not a torch file
        raise InvalidArgument(f"{pt} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())):
        raise InvalidArgument(f"{pt} does not hold a state dict (names to tensors)")
    for name, tensor in weights.items():
        if not tensor.is_floating_point():
            raise InvalidArgument(f"{directory}: {name} is stored as {tensor.dtype} in the checkpoint; a weight must "
                                  "be a floating-point tensor (float32, float16, bfloat16 or float64)")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def check_loading_info(source, info: dict, model, ignore_mismatched_sizes: bool) -> None:
    """Refuse a load that left encoder weights unused or missing, or (unless asked to ignore them, as for a new
    head of another size) loaded weights of another shape (``info`` is transformers' loading info)."""
    prefix = model.base_model_prefix + "."
    headless = model.base_model is model
    parts = tuple(name + "." for name, _ in model.base_model.named_children())

    def encoder(names):
        return sorted(k for k in names if k.startswith(prefix) or (headless and k.startswith(parts)))

    mismatched = sorted(info.get("mismatched_keys", ()))
    if mismatched and not ignore_mismatched_sizes:
        shapes = [f"{k} has shape {tuple(a)} in the checkpoint but {tuple(b)} in the model" for k, a, b in mismatched]
        raise InvalidArgument(f"{source}: {_shown(shapes)}: the config does not describe this checkpoint")
    unused = encoder(info.get("unexpected_keys", ()))
    if unused:
        raise InvalidArgument(f"{source}: the checkpoint has encoder weights its config.json has no place for "
                              f"({_shown(unused)}): the config does not describe this checkpoint (check "
                              "num_hidden_layers and the sizes)")
    missing = encoder(info.get("missing_keys", ()))
    if missing:
        raise InvalidArgument(f"{source}: the checkpoint lacks encoder weights ({_shown(missing)})")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_options(source, kwargs: dict) -> dict:
    """What transformers is given for ``source``: a local directory as it is; a string that reads as a path but
    names no directory is refused in one line; a hub id gets ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` as they are
    now (the hub client reads them once, at import)."""
    name = str(source)
    path = Path(name).expanduser()
    if path.is_dir():
        return kwargs
    if path.exists() or name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise MissingFile(f"{name}: not a model directory (and not a hub id of the form 'org/name')")
    kwargs = dict(kwargs)
    if _offline():
        kwargs.setdefault("local_files_only", True)
    if os.environ.get("HF_HUB_CACHE"):
        kwargs.setdefault("cache_dir", os.environ["HF_HUB_CACHE"])
    return kwargs


def hub_error(source, error: OSError, kwargs: dict) -> MissingFile:
    """transformers' many-line 'could not find' for a hub id, as one line naming the id."""
    mode = " (offline: the cache only)" if kwargs.get("local_files_only") else ""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return MissingFile(f"{source}: not a local directory, and the hub gave no copy{mode} ({first})")
