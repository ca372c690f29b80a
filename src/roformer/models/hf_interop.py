"""Checkpoints interchangeable with HuggingFace ``transformers``' RoFormer.

A saved model directory holds ``config.json`` and ``model.safetensors`` with HuggingFace's parameter
names. The names differ from ours in three ways, all in ``_RENAMES`` / the q-k-v split below:
- shorter module names here (``layers.3.attn_norm`` for ``encoder.layer.3.attention.output.LayerNorm``);
- one fused q/k/v projection here, three (``query``, ``key``, ``value``) there;
- HuggingFace stores a sinusoid table ``encoder.embed_positions`` from which it reads RoPE's cos/sin; we
  compute those on the fly (no maximum length) and write the table only so that it loads without warnings.
Tied weights (the MLM decoder and the word embeddings) are stored once, as HuggingFace 5 does.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..errors import InvalidArgument, MissingFile
from ..io import atomic_write, read_safetensors
from .roformer import RoFormerConfig, RoFormerModel

log = logging.getLogger(__name__)

__all__ = ["to_hf_state_dict", "from_hf_state_dict", "save_pretrained", "from_pretrained"]

# (our name prefix, HuggingFace name prefix); "{i}" is a layer index. Names not listed are the same.
_RENAMES = [
    ("roformer.word_embeddings.", "roformer.embeddings.word_embeddings."),
    ("roformer.token_type_embeddings.", "roformer.embeddings.token_type_embeddings."),
    ("roformer.embedding_norm.", "roformer.embeddings.LayerNorm."),
    ("roformer.embedding_project.", "roformer.embeddings_project."),
    ("roformer.layers.{i}.attn.out.", "roformer.encoder.layer.{i}.attention.output.dense."),
    ("roformer.layers.{i}.attn_norm.", "roformer.encoder.layer.{i}.attention.output.LayerNorm."),
    ("roformer.layers.{i}.ffn.up.", "roformer.encoder.layer.{i}.intermediate.dense."),
    ("roformer.layers.{i}.ffn.down.", "roformer.encoder.layer.{i}.output.dense."),
    ("roformer.layers.{i}.ffn_norm.", "roformer.encoder.layer.{i}.output.LayerNorm."),
    ("lm_head.transform.", "cls.predictions.transform.dense."),
    ("lm_head.norm.", "cls.predictions.transform.LayerNorm."),
    ("lm_head.decoder.", "cls.predictions.decoder."),
    ("lm_head.bias", "cls.predictions.bias"),
]
_QKV_OURS = re.compile(r"^roformer\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_QKV_HF = re.compile(r"^roformer\.encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_HF_POSITIONS = "roformer.encoder.embed_positions.weight"
_HF_DECODER_BIAS = "cls.predictions.decoder.bias"


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)"))


_TO_HF = [(_pattern(ours), hf) for ours, hf in _RENAMES]
_FROM_HF = [(_pattern(hf), ours) for ours, hf in _RENAMES]


def _rename(name: str, to_hf: bool) -> str:
    for pattern, target in _TO_HF if to_hf else _FROM_HF:
        m = pattern.match(name)
        if m:
            if m.groups():
                target = target.replace("{i}", m.group(1))
            return target + name[m.end():]
    return name


def _hf_sinusoid_table(config: RoFormerConfig) -> Tensor:
    """The table HuggingFace keeps in ``embed_positions``: sin(m theta) in the first half of each row,
    cos(m theta) in the second."""
    from ..rope import rotary_cos_sin

    cos, sin = rotary_cos_sin(torch.arange(config.max_position_embeddings), config.head_dim)
    return torch.cat((sin, cos), dim=-1)


def to_hf_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """Our state dict under HuggingFace's names (a headless ``RoFormerModel`` gets no ``roformer.``
    prefix, as in HuggingFace)."""
    config: RoFormerConfig = model.config
    bare = isinstance(model, RoFormerModel)
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        name = "roformer." + name if bare else name
        if name == "lm_head.decoder.weight" and config.tie_word_embeddings:
            continue  # stored once, as the word embeddings
        m = _QKV_OURS.match(name)
        if m:
            layer, kind = m.groups()
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0), strict=True):
                out[f"roformer.encoder.layer.{layer}.attention.self.{part}.{kind}"] = chunk.clone()
        else:
            out[_rename(name, to_hf=True)] = tensor.detach().clone()
    out[_HF_POSITIONS] = _hf_sinusoid_table(config)
    if bare:
        out = {k.removeprefix("roformer."): v for k, v in out.items()}
    return out


def from_hf_state_dict(state: dict[str, Tensor], bare: bool) -> dict[str, Tensor]:
    """HuggingFace names to ours. Accepts checkpoints with or without the ``roformer.`` prefix and the
    older layout that stores the tied decoder weight and bias too."""
    if not any(k.startswith("roformer.") for k in state):
        state = {"roformer." + k: v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, tensor in state.items():
        if name == _HF_POSITIONS:
            continue  # recomputed by RotaryEmbedding, for any length
        if name == _HF_DECODER_BIAS:
            out.setdefault("lm_head.bias", tensor)
            continue
        m = _QKV_HF.match(name)
        if m:
            layer, part, kind = m.groups()
            qkv.setdefault((layer, kind), {})[part] = tensor
            continue
        out[_rename(name, to_hf=False)] = tensor
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise InvalidArgument(f"layer {layer} {kind}: checkpoint has only {sorted(parts)} of query/key/value")
        for part, tensor in parts.items():  # checked here: torch.cat below would promote an int tensor silently
            if not tensor.is_floating_point():
                raise InvalidArgument(f"layer {layer} attention.self.{part}.{kind} is stored as {tensor.dtype} in the "
                                      "checkpoint; a weight must be a floating-point tensor")
        out[f"roformer.layers.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in ("query", "key", "value")])
    if bare:
        out = {k.removeprefix("roformer."): v for k, v in out.items() if k.startswith("roformer.")}
    return out


def save_pretrained(model: torch.nn.Module, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in to_hf_state_dict(model).items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    model.config.save(directory, architecture=type(model).__name__)


def _read_weights(directory: Path) -> dict[str, Tensor]:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.is_file():
        return read_safetensors(st)
    if pt.is_file():
        try:
            weights = torch.load(pt, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise InvalidArgument(f"{pt}: refused, the pickle holds objects other than tensors, and loading it could "
                                  "run code; convert the checkpoint to model.safetensors where it was made") from None
        except Exception as e:  # truncated or not a torch file
            raise InvalidArgument(f"{pt} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
        if not (isinstance(weights, dict) and all(isinstance(v, Tensor) for v in weights.values())):
            raise InvalidArgument(f"{pt} does not hold a state dict (names to tensors)")
        return weights
    raise MissingFile(f"no model.safetensors (or pytorch_model.bin) in {directory}")


HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                      local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """A local directory as it is; anything else is a HuggingFace hub id, fetched (or found in the hub cache)
    by ``huggingface_hub.snapshot_download`` with its own revision, cache and offline rules (``HF_HUB_OFFLINE=1``
    or ``local_files_only``: the cache only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise MissingFile(f"{name}: not a model directory (and not a hub id of the form 'org/name')")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        raise MissingFile(f"{name} is not a local directory; to load it from the HuggingFace hub, install "
                                "huggingface_hub (pip install huggingface_hub)") from None
    # the hub client reads its environment once, at import; read HF_HUB_OFFLINE and HF_HUB_CACHE at each call
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE"),
                                      local_files_only=offline, token=token, allow_patterns=HUB_FILES))
    except HFValidationError as e:
        raise MissingFile(f"{name}: not a local directory nor a valid hub id ({e})") from None
    except Exception as e:  # offline and not cached, unknown repo or revision, no network: the hub client says which
        mode = " (offline: the cache only)" if offline else ""
        raise MissingFile(f"{name}: not a local directory, and the hub gave no copy{mode} "
                                f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                    local_files_only: bool = False, token: str | bool | None = None, **config_overrides):
    directory = resolve_model_dir(name_or_path, revision, cache_dir, local_files_only, token)
    config = RoFormerConfig.load(directory)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise InvalidArgument(f"RoFormerConfig has no field {key!r}")
        setattr(config, key, value)
    config.__post_init__()
    model = cls(config)
    state = from_hf_state_dict(_read_weights(directory), bare=cls is RoFormerModel)
    expected = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.decoder.weight", None)
    for name, tensor in state.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise InvalidArgument(
                     f"{directory}: {name} has shape {tuple(tensor.shape)} in the checkpoint but "
                     f"{tuple(expected[name].shape)} in a model built from its config.json"
                 )
        if name in expected and expected[name].is_floating_point() and not tensor.is_floating_point():
            raise InvalidArgument(f"{directory}: {name} is stored as {tensor.dtype} in the checkpoint; a weight must "
                                  "be a floating-point tensor (float32, float16, bfloat16 or float64)")
    # encoder weights the config has no place for (a layer dropped by num_hidden_layers, say) are an error: the
    # model would run without them; a head the class does not have (an MLM head under a classifier) is dropped,
    # with a warning, as in transformers
    unused = sorted(k for k in state if k not in expected)
    encoder = [k for k in unused if cls is RoFormerModel or k.startswith("roformer.")]
    if encoder:
        shown = ", ".join(encoder[:6]) + (f" and {len(encoder) - 6} more" if len(encoder) > 6 else "")
        raise InvalidArgument(f"{directory}: the checkpoint has encoder weights its config.json has no place for "
                              f"({shown}): the config does not describe this checkpoint (check num_hidden_layers and "
                              "the sizes)")
    if unused:
        log.warning("%s: checkpoint weights not used by this head: %s", cls.__name__, ", ".join(unused))
    state = {k: v for k, v in state.items() if k in expected}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.decoder.weight" and config.tie_word_embeddings)]
    if any(k.startswith("roformer.") or cls is RoFormerModel for k in missing):
        raise InvalidArgument(f"{directory}: the checkpoint lacks encoder weights: {missing}")
    if missing:
        log.warning("%s: newly initialised (not in the checkpoint): %s", cls.__name__, ", ".join(missing))
    return model
