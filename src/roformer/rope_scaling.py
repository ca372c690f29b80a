"""RoPE beyond the training length: the frequency scalings users expect, in HuggingFace's ``rope_parameters`` form.

RoPE's angle for pair i at position m is m * theta_i with theta_i = base^(-2i/d) (Eq. 15, i = 0 .. d/2 - 1).
Every context-extension method changes the theta_i (and some scale cos and sin by an "attention factor"):

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
  shorter than L0 / high_freq_factor kept, and a smooth blend in between.
- ``longrope`` (Ding et al. 2024): theta_i divided by a per-frequency ``short_factor`` up to L0 and
  ``long_factor`` beyond it; cos and sin scaled by sqrt(1 + ln(factor) / ln(L0)).

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

import torch
from torch import Tensor

__all__ = ["ROPE_TYPES", "check_rope_parameters", "check_scaling", "scaled_frequencies", "is_length_dependent"]

# rope type -> (required keys, optional keys)
ROPE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ("original_max_position_embeddings",)),
    "yarn": (("original_max_position_embeddings",),
             ("factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "longrope": (("short_factor", "long_factor", "original_max_position_embeddings"), ("factor", "attention_factor")),
}
NO_CACHE = ("rope_type {!r} changes the angles of every position as the sequence grows, so a KV cache would "
            "hold stale keys: run without kv_cache (generate() does)")
_COMMON = ("rope_type", "type", "rope_theta", "partial_rotary_factor", "max_position_embeddings")


def check_rope_parameters(parameters: dict | None, dim: int) -> dict:
    """The parameters with ``rope_type`` set, or a ValueError naming the rope type and the missing or bad key.
    ``max_position_embeddings`` (the length the model is configured for) stands in for an absent ``factor``
    (yarn, longrope: factor = max_position_embeddings / original_max_position_embeddings) and for an absent
    ``original_max_position_embeddings`` (dynamic)."""
    p = dict(parameters or {})
    rope_type = p.get("rope_type", p.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {rope_type!r}; use one of {', '.join(ROPE_TYPES)}")
    p["rope_type"] = rope_type
    p.pop("type", None)
    required, optional = ROPE_TYPES[rope_type]
    if rope_type == "dynamic" and "original_max_position_embeddings" not in p and "max_position_embeddings" in p:
        p["original_max_position_embeddings"] = p["max_position_embeddings"]
    for key in required + (("original_max_position_embeddings",) if rope_type == "dynamic" else ()):
        if key not in p:
            raise ValueError(f"rope_type {rope_type!r} needs {key!r} in its parameters")
    unknown = set(p) - set(required) - set(optional) - set(_COMMON)
    if unknown:
        raise ValueError(f"rope_type {rope_type!r} takes no {', '.join(sorted(unknown))}; its keys: "
                         f"{', '.join(required + optional) or 'none'}")
    if rope_type in ("yarn", "longrope") and p.get("factor") is None:
        if "max_position_embeddings" not in p:
            raise ValueError(f"rope_type {rope_type!r} needs 'factor' (or max_position_embeddings to derive it)")
        p["factor"] = p["max_position_embeddings"] / p["original_max_position_embeddings"]
    for key in ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
        if key in p and not (isinstance(p[key], int | float) and p[key] > 0 and math.isfinite(p[key])):
            raise ValueError(f"rope_type {rope_type!r}: {key} must be a number > 0, got {p[key]!r}")
    if rope_type == "llama3" and p["high_freq_factor"] <= p["low_freq_factor"]:
        raise ValueError(f"rope_type 'llama3': high_freq_factor ({p['high_freq_factor']}) must exceed "
                         f"low_freq_factor ({p['low_freq_factor']})")
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            if len(p[key]) != dim // 2 or not all(v > 0 for v in p[key]):
                raise ValueError(f"rope_type 'longrope': {key} must hold {dim // 2} numbers > 0 (one per "
                                 f"frequency of rotary dim {dim}), got {len(p[key])}")
    return p


def check_scaling(rope_parameters: dict, position: str, head_dim: int, max_positions: int) -> None:
    """A model config's ``rope_parameters``: only with position='rope', and valid for its head dim and length."""
    if position != "rope":
        raise ValueError(f"rope_parameters (RoPE scaling) apply to position='rope' only, not {position!r}")
    check_rope_parameters({**rope_parameters, "max_position_embeddings": max_positions}, head_dim)


def is_length_dependent(parameters: dict) -> bool:
    """Whether the frequencies depend on the sequence length (dynamic, longrope)."""
    return parameters["rope_type"] in ("dynamic", "longrope")


def rotary_frequencies(dim: int, base: float, device=None, dtype=torch.float64) -> Tensor:
    """theta_i = base^(-2i/d), i = 0 .. d/2 - 1 (Eq. 15)."""
    return base ** (-(torch.arange(0, dim, 2, device=device, dtype=dtype) / dim))


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(theta: Tensor, dim: int, base: float, p: dict) -> tuple[Tensor, float]:
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
    ramp = ((torch.arange(dim // 2, dtype=theta.dtype, device=theta.device) - low) / (high - low)).clamp(0, 1)
    return theta / factor * ramp + theta * (1 - ramp), float(attention_factor)


def _llama3(theta: Tensor, p: dict) -> Tensor:
    factor, original = p["factor"], p["original_max_position_embeddings"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    wavelength = 2 * math.pi / theta
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * theta / factor + smooth * theta
    out = torch.where(wavelength > original / low, theta / factor, theta)
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, blended, out)


def scaled_frequencies(dim: int, base: float, parameters: dict, seq_len: int | None = None, device=None,
                       dtype: torch.dtype = torch.float64) -> tuple[Tensor, float]:
    """(theta_i for i = 0 .. dim/2 - 1, attention factor) of the checked ``parameters`` for a sequence of total
    length ``seq_len`` (None: the training length; only dynamic and longrope look at it)."""
    p, rope_type = parameters, parameters["rope_type"]
    theta = rotary_frequencies(dim, base, device=device, dtype=dtype)
    if rope_type == "default":
        return theta, 1.0
    if rope_type == "linear":
        return theta / p["factor"], 1.0
    if rope_type == "dynamic":
        original = p["original_max_position_embeddings"]
        length = max(seq_len or original, original)
        grown = base * (p["factor"] * length / original - (p["factor"] - 1)) ** (dim / (dim - 2))
        return rotary_frequencies(dim, grown, device=device, dtype=dtype), 1.0
    if rope_type == "yarn":
        return _yarn(theta, dim, base, p)
    if rope_type == "llama3":
        return _llama3(theta, p), 1.0
    # longrope
    original, factor = p["original_max_position_embeddings"], p["factor"]
    long = seq_len is not None and seq_len > original
    ext = torch.tensor(p["long_factor"] if long else p["short_factor"], dtype=dtype, device=device)
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return theta / ext, float(attention_factor)
