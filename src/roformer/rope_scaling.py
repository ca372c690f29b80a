"""RoPE's frequencies, in the paper's form and beyond the training length, in HuggingFace's ``rope_parameters`` form.

RoPE's angle for pair i at position m is m * theta_i with theta_i = base^(-2i/d) (Eq. 15, i = 0 .. d/2 - 1).
Every context-extension method changes the theta_i (and some scale cos and sin by an "attention factor"); each
is one function below, behind the table ``ROPE_TYPES``:

- ``default``: theta_i as in the paper.
- ``linear``, position interpolation (Chen et al. 2023): theta_i / factor, i.e. positions squeezed into the
  trained range.
- ``dynamic``, dynamic NTK scaling: the base grows with the sequence length L beyond the training length L0,
  base' = base * (factor * L / L0 - (factor - 1))^(d / (d - 2)); below L0 nothing changes.
- ``yarn`` (Peng et al. 2023): interpolate (theta_i / factor) the low frequencies, keep the high ones, and ramp
  linearly in between, by the number of rotations a pair makes over L0 (beta_fast = 32 and beta_slow = 1
  rotations); cos and sin are scaled by 0.1 ln(factor) + 1 (or as given by ``attention_factor``, ``mscale``,
  ``mscale_all_dim``).
- ``llama3``: wavelengths 2 pi / theta_i longer than L0 / low_freq_factor are interpolated by ``factor``, those
  shorter than L0 / high_freq_factor kept, and a smooth blend in between (no blend when the two factors are
  equal, as in Llama 4).
- ``longrope`` (Ding et al. 2024): theta_i divided by a per-frequency ``short_factor`` up to L0 and
  ``long_factor`` beyond it; cos and sin scaled by sqrt(1 + ln(factor) / ln(L0)).
- ``proportional`` (p-RoPE, as in Gemma): theta_i = base^(-2i/d) / factor for the first
  ``partial_rotary_factor * d/2`` pairs and 0 (no rotation) for the rest, the exponent's denominator staying
  the full head dim d.

``partial_rotary_factor`` f (every type): only the first int(f * d) features are rotated, with the frequencies of
a rotary dim of int(f * d) (for ``proportional``: the frequencies above over the whole head). A model's
``max_position_embeddings`` stands in for an absent ``original_max_position_embeddings`` (dynamic, yarn, llama3,
longrope) and, with it, for an absent ``factor`` (yarn, longrope), as in ``transformers``.

``dynamic`` and ``longrope`` depend on the sequence length: all positions of a sequence of total length L use
the frequencies for L (as in ``transformers``). So a KV cache cannot serve them: keys cached at a shorter length
were rotated with other angles, and in every layer past the first they were computed from hidden states that
other angles produced (re-rotating the cache fixes the first layer only). ``transformers`` caches anyway, and
its cached decoding then differs from a full forward pass. Here a model with a length-dependent scaling
refuses a KV cache and ``generate`` recomputes the prefix at every step: slower (O(N^2) per sequence), exactly
the logits of a full forward pass. Every other type caches as usual.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InvalidArgument

__all__ = ["ROPE_TYPES", "NO_CACHE", "default_frequencies", "normalize_rope_parameters", "rotary_dim",
           "check_base", "check_rotary_dim", "model_rope_base", "frequencies", "is_length_dependent"]

NO_CACHE = ("rope_type {!r} changes the angles of every position as the sequence grows, so a KV cache would "
            "hold stale keys: run without kv_cache (generate() does)")


def default_frequencies(dim: int, base: float, device=None, dtype=torch.float64) -> Tensor:
    """theta_i = base^(-2i/d), i = 0 .. d/2 - 1 (Eq. 15 with i counted from 0): shape (d/2,)."""
    return base ** (-(torch.arange(0, dim, 2, device=device, dtype=dtype) / dim))


# -- one function per rope type: (parameters, rotary dim, base, sequence length, device, dtype) -> (theta, factor)


def _default(p: dict, dim: int, base: float, seq_len, device, dtype) -> tuple[Tensor, float]:
    return default_frequencies(dim, base, device, dtype), 1.0


def _linear(p, dim, base, seq_len, device, dtype):
    return default_frequencies(dim, base, device, dtype) / p["factor"], 1.0


def _dynamic(p, dim, base, seq_len, device, dtype):
    original = p["original_max_position_embeddings"]
    length = max(seq_len or original, original)
    grown = base * (p["factor"] * length / original - (p["factor"] - 1)) ** (dim / (dim - 2))
    return default_frequencies(dim, grown, device, dtype), 1.0


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(p, dim, base, seq_len, device, dtype):
    theta = default_frequencies(dim, base, device, dtype)
    factor, original = p["factor"], p["original_max_position_embeddings"]
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = _mscale(factor, p["mscale"]) / _mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = _mscale(factor)

    def pair_index(rotations: float) -> float:  # the pair i that turns ``rotations`` times over the length
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_index(p.get("beta_fast") or 32), pair_index(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=dtype, device=device) - low) / (high - low)).clamp(0, 1)
    return theta / factor * ramp + theta * (1 - ramp), float(attention_factor)


def _llama3(p, dim, base, seq_len, device, dtype):
    theta = default_frequencies(dim, base, device, dtype)
    factor, original = p["factor"], p["original_max_position_embeddings"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    wavelength = 2 * math.pi / theta
    out = torch.where(wavelength > original / low, theta / factor, theta)
    if high == low:  # Llama 4: a hard switch at L0 / factor, no band to blend in
        return out, 1.0
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * theta / factor + smooth * theta
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, blended, out), 1.0


def _longrope(p, dim, base, seq_len, device, dtype):
    original, factor = p["original_max_position_embeddings"], p["factor"]
    long = seq_len is not None and seq_len > original
    ext = torch.tensor(p["long_factor"] if long else p["short_factor"], dtype=dtype, device=device)
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return default_frequencies(dim, base, device, dtype) / ext, float(attention_factor)


def _proportional(p, dim, base, seq_len, device, dtype):
    rotated = int(p.get("partial_rotary_factor", 1.0) * dim // 2)
    theta = torch.zeros(dim // 2, dtype=dtype, device=device)
    theta[:rotated] = default_frequencies(dim, base, device, dtype)[:rotated]
    return theta / p.get("factor", 1.0), 1.0


@dataclass(frozen=True)
class RopeType:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    frequencies: Callable[..., tuple[Tensor, float]]
    length_dependent: bool = False  # the frequencies change with the sequence length: no KV cache


ROPE_TYPES: dict[str, RopeType] = {
    "default": RopeType((), (), _default),
    "linear": RopeType(("factor",), (), _linear),
    "dynamic": RopeType(("factor", "original_max_position_embeddings"), (), _dynamic, length_dependent=True),
    "yarn": RopeType(("factor", "original_max_position_embeddings"),
                     ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"), _yarn),
    "llama3": RopeType(("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), (),
                       _llama3),
    "longrope": RopeType(("short_factor", "long_factor", "factor", "original_max_position_embeddings"),
                         ("attention_factor",), _longrope, length_dependent=True),
    "proportional": RopeType((), ("factor",), _proportional),
}
_COMMON = ("rope_type", "rope_theta", "partial_rotary_factor")
_POSITIVE = ("rope_theta", "factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
             "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_base(base) -> float:
    """The RoPE base as a float, or a ValueError: it must be a finite number > 0 (0, -1 or NaN give NaN angles)."""
    if not (_number(base) and base > 0):
        raise InvalidArgument(f"the RoPE base (rope_theta) must be a finite number > 0, got {base!r}")
    return float(base)


def check_rotary_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise InvalidArgument(f"rotary dim must be a positive even integer, got {dim!r}")
    return dim


def normalize_rope_parameters(parameters: dict | None, dim: int, max_position_embeddings: int | None = None) -> dict:
    """HuggingFace's ``rope_parameters`` for a head (or rotary) dim ``dim``, checked and completed: ``rope_type``
    set (the old key ``type`` accepted), ``original_max_position_embeddings`` and ``factor`` derived from a model's
    ``max_position_embeddings`` where absent (as ``transformers`` does, warning like it when an explicit yarn
    factor disagrees with the lengths). Anything else is a ValueError naming the rope type and the key."""
    p = dict(parameters or {})
    rope_type = p.pop("rope_type", p.pop("type", "default"))
    p.pop("type", None)
    if rope_type not in ROPE_TYPES:
        raise InvalidArgument(f"unknown rope_type {rope_type!r}; use one of {', '.join(ROPE_TYPES)}")
    spec = ROPE_TYPES[rope_type]
    unknown = set(p) - set(spec.required) - set(spec.optional) - set(_COMMON)
    if unknown:
        raise InvalidArgument(f"rope_type {rope_type!r} takes no {', '.join(sorted(unknown))}; its keys: "
                              f"{', '.join(spec.required + spec.optional + _COMMON[1:])}")
    if "original_max_position_embeddings" in spec.required and "original_max_position_embeddings" not in p:
        if max_position_embeddings is not None:
            p["original_max_position_embeddings"] = max_position_embeddings
    if rope_type in ("yarn", "longrope") and p.get("factor") is None and "original_max_position_embeddings" in p:
        if max_position_embeddings is not None:
            p["factor"] = max_position_embeddings / p["original_max_position_embeddings"]
    for key in spec.required:
        if p.get(key) is None:
            hint = " (or the model's max_position_embeddings to derive it)" if "max_position" in key or (
                key == "factor" and rope_type in ("yarn", "longrope")) else ""
            raise InvalidArgument(f"rope_type {rope_type!r} needs {key!r} in its parameters{hint}")
    for key in _POSITIVE:
        if p.get(key) is not None and not (_number(p[key]) and p[key] > 0):
            raise InvalidArgument(f"rope_type {rope_type!r}: {key} must be a finite number > 0, got {p[key]!r}")
    fraction = p.get("partial_rotary_factor", 1.0)
    if not (_number(fraction) and 0 < fraction <= 1):
        raise InvalidArgument(f"partial_rotary_factor must be a number in (0, 1], got {fraction!r}")
    rotated = rotary_dim({**p, "rope_type": rope_type}, dim)
    if rotated < 2 or rotated % 2:
        raise InvalidArgument(f"partial_rotary_factor {fraction} of head dim {dim} rotates {rotated} features: the "
                              "rotary dim must be even and at least 2")
    if rope_type == "llama3" and p["high_freq_factor"] < p["low_freq_factor"]:
        raise InvalidArgument(f"rope_type 'llama3': high_freq_factor ({p['high_freq_factor']}) must be at least "
                              f"low_freq_factor ({p['low_freq_factor']})")
    if rope_type == "yarn" and max_position_embeddings is not None:
        implicit = max_position_embeddings / p["original_max_position_embeddings"]
        if implicit not in (1, p["factor"]):
            warnings.warn(f"rope_type 'yarn': factor {p['factor']} differs from max_position_embeddings / "
                          f"original_max_position_embeddings = {implicit}; using the explicit factor", stacklevel=2)
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            values = p[key]
            if not (isinstance(values, list | tuple) and len(values) == rotated // 2
                    and all(_number(v) and v > 0 for v in values)):
                raise InvalidArgument(f"rope_type 'longrope': {key} must hold {rotated // 2} finite numbers > 0 (one "
                                      f"per frequency of rotary dim {rotated}), got {values!r}")
    return {"rope_type": rope_type, **p}


def rotary_dim(parameters: dict, dim: int) -> int:
    """How many of a head's ``dim`` features the normalized ``parameters`` rotate."""
    if parameters["rope_type"] == "proportional":
        return dim
    return int(dim * parameters.get("partial_rotary_factor", 1.0))


def frequencies(parameters: dict, dim: int, base: float, seq_len: int | None = None, device=None,
                dtype: torch.dtype = torch.float64) -> tuple[Tensor, float]:
    """(theta_i for the rotary dim of the normalized ``parameters`` on a head of ``dim`` features, attention factor)
    for a sequence of total length ``seq_len`` (None: the training length; only dynamic and longrope look at it)."""
    rope_type = parameters["rope_type"]
    return ROPE_TYPES[rope_type].frequencies(parameters, rotary_dim(parameters, dim), base, seq_len, device, dtype)


def is_length_dependent(parameters: dict) -> bool:
    """Whether the frequencies depend on the sequence length (dynamic, longrope)."""
    return ROPE_TYPES[parameters["rope_type"]].length_dependent


def model_rope_base(rope_theta, rope_parameters: dict | None, position: str, head_dim: int,
                    max_position_embeddings: int) -> float:
    """A model config's RoPE base, with its ``rope_parameters`` checked (:func:`normalize_rope_parameters`). The
    parameters' own ``rope_theta`` (transformers 5 keeps the base there) is the base when the config's is the default
    10000 or the same; two different explicit bases are an error, not a guess."""
    rope_theta = check_base(rope_theta)
    if not rope_parameters:
        return rope_theta
    if not isinstance(rope_parameters, dict):
        raise InvalidArgument(f"rope_parameters must be a dict like {{'rope_type': 'linear', 'factor': 2.0}}, got "
                              f"{rope_parameters!r}")
    if position != "rope":
        raise InvalidArgument(f"rope_parameters (RoPE scaling) apply to position='rope' only, not {position!r}")
    p = normalize_rope_parameters(rope_parameters, head_dim, max_position_embeddings)
    theta = p.get("rope_theta")
    if theta is not None and rope_theta not in (10000.0, theta):
        raise InvalidArgument(f"rope_theta {rope_theta} and rope_parameters' rope_theta {theta} disagree; give one")
    return float(theta if theta is not None else rope_theta)
