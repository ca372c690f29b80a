"""Rotary position embedding (RoPE), paper §3.2 and §3.4.

RoPE encodes the absolute position m of a query or key by rotating it (Eq. 13-16): the vector's features
are taken in d/2 pairs and pair i is rotated by the angle m * theta_i, with

    theta_i = base^(-2(i-1)/d),   i = 1 .. d/2                                  (Eq. 15)

so that the inner product of a rotated query at m and a rotated key at n depends on m - n only
(Eq. 11 and 16): <R_m q, R_n k> = q^T R_(n-m) k. The dense block-diagonal matrix R is never built; the
rotation is applied in the element-wise form of Eq. 34,

    R_m x = x * cos(m theta) + rotate_pairs(x) * sin(m theta),

which, with each pair read as a complex number x_(2i-1) + j x_(2i), is one complex multiplication by
exp(j m theta_i). That is how it is computed here; the half split below is computed on CPU by the one-pass
C loop of :mod:`roformer.rope_kernel`.

Two feature pairings exist in the wild:
- ``interleaved=True`` (the paper's Eq. 34, every RoFormer checkpoint): pairs (x1, x2), (x3, x4), ...
- ``interleaved=False`` (GPT-NeoX / LLaMA "rotate half"): pairs (x_i, x_(i + d/2)).
``permute_rotary_layout`` converts a q/k projection from one pairing to the other without changing any
attention score.

The long-term decay of §3.4.3 (Fig. 2) is :func:`relative_upper_bound`. Beyond the training length, the
frequency scalings (position interpolation, NTK, YaRN, Llama-3, LongRoPE) are in :mod:`roformer.rope_scaling`.

Precision: angles are formed in float64 (float32 on MPS) and the cos/sin tables are kept in that dtype; a
float64 input is rotated with float64 cos/sin (exact to ~1e-16), float32 and half-precision inputs with
float32 cos/sin (half precision is rotated in float32 and rounded once).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .rope_kernel import rotate_half_split
from .rope_scaling import check_rope_parameters, is_length_dependent, scaled_frequencies
from .rope_scaling import rotary_frequencies as _frequencies

__all__ = [
    "RotaryEmbedding",
    "apply_rotary",
    "rotary_frequencies",
    "rotary_cos_sin",
    "permute_rotary_layout",
    "relative_upper_bound",
]


def _angle_dtype(device: torch.device) -> torch.dtype:
    """Angles are formed in float64 where the device has it (positions * theta loses ~1e-4 rad in float32
    at position 1500), in float32 elsewhere (MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def rotary_frequencies(dim: int, base: float = 10000.0, device=None, dtype=torch.float64) -> Tensor:
    """theta_i = base^(-2(i-1)/d) for i = 1 .. d/2 (Eq. 15). Returns a tensor of shape (d/2,)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"rotary dim must be a positive even number, got {dim}")
    return _frequencies(dim, base, device, dtype)


def rotary_cos_sin(positions: Tensor, dim: int, base: float = 10000.0, theta: Tensor | None = None,
                   attention_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos(m theta_i) and sin(m theta_i) (times ``attention_factor``) for every position m in ``positions``:
    shape ``(*positions.shape, dim/2)``, in float64 (float32 on MPS), formed with autocast off. ``theta``: the
    frequencies (default: Eq. 15 with ``base``)."""
    dtype = _angle_dtype(positions.device)
    with torch.autocast(positions.device.type, enabled=False):
        if theta is None:
            theta = rotary_frequencies(dim, base, device=positions.device, dtype=dtype)
        angles = positions.to(dtype)[..., None] * theta.to(device=positions.device, dtype=dtype)
        cos, sin = angles.cos(), angles.sin()
        if attention_factor != 1.0:
            cos, sin = cos * attention_factor, sin * attention_factor
        return cos, sin


# --------------------------------------------------------------------------------------------------------
# The rotation itself (Eq. 34)
# --------------------------------------------------------------------------------------------------------


def _pairs_viewable_as_complex(x: Tensor) -> bool:
    """Whether the last dim of x can be viewed as complex pairs in place (no copy)."""
    return x.stride(-1) == 1 and x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in x.stride()[:-1])


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """R_m x for the first 2 * cos.shape[-1] features of x; the remaining features pass through.

    Half-precision inputs are rotated in float32 and returned in their own dtype.
    """
    rot = 2 * cos.shape[-1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = cos.to(compute), sin.to(compute)
    if not interleaved and x.dtype == compute:
        fused = rotate_half_split(x, cos, sin)  # one pass, on CPU (roformer.rope_kernel); None elsewhere
        if fused is not None:
            return fused
    if interleaved:
        cis = torch.complex(cos, sin)  # e^(j m theta_i)
        if (not torch.compiler.is_compiling() and rot == x.shape[-1] and x.dtype == compute
                and _pairs_viewable_as_complex(x)):
            # Eq. 34 as one fused complex multiply, read from x and written into the output in place
            out = torch.empty_like(x)
            torch.mul(torch.view_as_complex(x.unflatten(-1, (-1, 2))), cis,
                      out=torch.view_as_complex(out.unflatten(-1, (-1, 2))))
            return out
        pairs = torch.view_as_complex(x[..., :rot].to(compute).contiguous().unflatten(-1, (-1, 2)))
        rotated = torch.view_as_real(pairs * cis).flatten(-2)
    elif not torch.compiler.is_compiling() and x.dtype == compute and rot == x.shape[-1]:
        # half split without the CPU kernel (e.g. on CUDA): one swap of the halves and two full-width passes
        # over contiguous memory, (x1, x2) -> (x2, x1) * (-sin, sin) + (x1, x2) * (cos, cos)
        pairs = x.unflatten(-1, (2, rot // 2))
        out = pairs.flip(-2)
        out.mul_(torch.stack((-sin, sin), -2)).addcmul_(pairs, torch.stack((cos, cos), -2))
        return out.flatten(-2)
    elif not torch.compiler.is_compiling() and x.dtype == compute:
        # partial half split: each half of the output written in place by one multiply and one multiply-add
        half = rot // 2
        out = torch.empty_like(x)
        x1, x2, o1, o2 = x[..., :half], x[..., half:rot], out[..., :half], out[..., half:rot]
        torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
        if rot < x.shape[-1]:
            out[..., rot:] = x[..., rot:]
        return out
    else:
        x1, x2 = x[..., :rot].to(compute).chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    rotated = rotated.to(x.dtype)
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


class _RotaryFunction(torch.autograd.Function):
    """R_m x with the backward pass R_m^T g = R_(-m) g: the rotation by -theta. Only cos and sin (functions
    of the positions) are saved, never the activation x."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return _rotate(x, cos, sin, interleaved)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        # the rotation is linear, so its backward is itself a rotation (and twice differentiable)
        return _RotaryFunction.apply(grad, cos, -sin, ctx.interleaved), None, None, None


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = True) -> Tensor:
    """Rotate ``x`` of shape ``(..., seq, head_dim)`` by the angles whose cosines and sines are given.

    ``cos`` and ``sin`` have last dim ``rotary_dim / 2`` and broadcast against ``x[..., :rotary_dim/2]``
    (e.g. ``(seq, rotary_dim/2)`` or ``(batch, 1, seq, rotary_dim/2)``); features past ``rotary_dim`` are
    returned unchanged (partial rotary). Differentiable in ``x`` through a custom backward (rotation by
    -theta); gradients do not flow into ``cos``/``sin``.
    """
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if 2 * cos.shape[-1] > x.shape[-1]:
        raise ValueError(
            f"rotary dim {2 * cos.shape[-1]} is larger than the head dim {x.shape[-1]} of the input "
            f"{tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"apply_rotary needs a floating-point input, got {x.dtype}")
    return _RotaryFunction.apply(x, cos, sin, interleaved)


# --------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------


Positions = int | Tensor | None


class RotaryEmbedding(nn.Module):
    """RoPE for queries and keys shaped ``(batch, heads, seq, head_dim)`` (``seq_dim=-2``, the default) or
    ``(batch, seq, heads, head_dim)`` (``seq_dim=-3``, the layout of flash-attention and most HF code).

    >>> rope = RotaryEmbedding(64)
    >>> q, k = rope(q, k)                          # positions 0 .. seq-1
    >>> q, k = rope(q, k, positions=past_len)      # decoding with a KV cache: positions past_len ..
    >>> q, k = rope(q, k, positions=offsets)       # (batch,) LongTensor: one start per sequence
    >>> q, k = rope(q, k, positions=pos)           # (batch, seq) or (seq,) LongTensor: packed sequences
    >>> RotaryEmbedding(64, scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048})

    ``dim`` is the number of rotated features; when it is smaller than the head dim the remaining features
    pass through (partial rotary). ``scaling``: HuggingFace's ``rope_parameters`` (see
    :mod:`roformer.rope_scaling`; its ``rope_theta``, if given, is the base). There is no maximum length: the
    cos/sin table for contiguous positions grows on demand (its length is a plain Python int, so no ``.item()``
    and no graph break under ``torch.compile``); explicit position tensors are turned into angles directly.
    """

    def __init__(self, dim: int, base: float | None = None, interleaved: bool = True, scaling: dict | None = None,
                 seq_dim: int = -2):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"rotary dim must be a positive even number, got {dim}")
        if seq_dim not in (-2, -3):
            raise ValueError(f"seq_dim must be -2 (batch, heads, seq, dim) or -3 (batch, seq, heads, dim), "
                             f"got {seq_dim}")
        self.scaling = check_rope_parameters(scaling, dim)
        theta = self.scaling.get("rope_theta")
        if base is not None and theta is not None and float(base) != float(theta):
            raise ValueError(f"base {base} and rope_parameters' rope_theta {theta} disagree; give one")
        self.dim, self.interleaved, self.seq_dim = dim, interleaved, seq_dim
        self.base = float(base if base is not None else theta if theta is not None else 10000.0)
        self.length_dependent = is_length_dependent(self.scaling)
        # The table is deliberately not a buffer: .to(bfloat16) on the model must not round the angles.
        self._cos = self._sin = torch.empty(0, dim // 2)
        self._cached_len = 0

    def extra_repr(self) -> str:
        scaling = "" if self.scaling["rope_type"] == "default" else f", rope_type={self.scaling['rope_type']}"
        return f"dim={self.dim}, base={self.base:g}, interleaved={self.interleaved}{scaling}"

    def frequencies(self, seq_len: int | None = None, device=None) -> tuple[Tensor, float]:
        """(theta_i, attention factor) for a sequence of total length ``seq_len`` (float64 where available)."""
        device = torch.device(device or "cpu")
        return scaled_frequencies(self.dim, self.base, self.scaling, seq_len, device, _angle_dtype(device))

    def _table(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if length > self._cached_len or self._cos.device != device:
            new_len = max(length, 2 * self._cached_len, 256)
            # built as ordinary tensors even under inference_mode, so a later training step can use them
            with torch.inference_mode(False):
                positions = torch.arange(new_len, device=device)
                theta, factor = self.frequencies(None, device)
                self._cos, self._sin = rotary_cos_sin(positions, self.dim, theta=theta, attention_factor=factor)
            self._cached_len = new_len
        return self._cos, self._sin

    def cos_sin(self, seq_len: int, positions: Positions = None, device=None, total_len: int | None = None
                ) -> tuple[Tensor, Tensor]:
        """cos and sin of the rotation angles for a block of ``seq_len`` tokens, shaped to broadcast against
        the rotated features: ``(seq, dim/2)`` for shared positions, ``(batch, 1, seq, dim/2)`` for
        per-sequence ones (``(seq, 1, dim/2)`` and ``(batch, seq, 1, dim/2)`` with ``seq_dim=-3``). Compute them
        once per forward pass and hand them to every layer. ``total_len``: the length of the whole sequence
        these tokens belong to (default: the last position + 1), which length-dependent scalings use."""
        cos, sin = self._cos_sin(seq_len, positions, device, total_len)
        if self.seq_dim == -3:
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
            if cos.ndim == 5:  # (batch, 1, seq, 1, dim/2) -> (batch, seq, 1, dim/2)
                cos, sin = cos[:, 0], sin[:, 0]
        return cos, sin

    def _cos_sin(self, seq_len: int, positions: Positions, device, total_len: int | None) -> tuple[Tensor, Tensor]:
        if device is None:
            device = positions.device if isinstance(positions, Tensor) else self._cos.device
        device = torch.device(device)
        if positions is None or isinstance(positions, int):
            start = positions or 0
            if start < 0:
                raise ValueError(f"position offset must be >= 0, got {start}")
            if self.length_dependent or torch.compiler.is_compiling():
                # traced (torch.compile / torch.export): angles from the positions directly, so no guard on the
                # table's length caps a dynamic sequence length or recompiles as it grows
                theta, factor = self.frequencies(total_len or start + seq_len, device)
                return rotary_cos_sin(torch.arange(start, start + seq_len, device=device), self.dim, theta=theta,
                                      attention_factor=factor)
            cos, sin = self._table(start + seq_len, device)
            return cos[start : start + seq_len], sin[start : start + seq_len]
        if not isinstance(positions, Tensor):
            raise TypeError(f"positions must be None, an int or a LongTensor, got {type(positions).__name__}")
        if positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
        positions = positions.to(device)
        if positions.ndim == 1 and positions.shape[0] != seq_len:  # (batch,) offsets
            positions = positions[:, None] + torch.arange(seq_len, device=device)
        if positions.shape[-1] != seq_len or positions.ndim > 2:
            raise ValueError(
                f"positions of shape {tuple(positions.shape)} do not fit a sequence of length {seq_len}: "
                "give (seq,), (batch, seq) or (batch,) offsets"
            )
        if self.length_dependent and total_len is None:
            raise ValueError(f"rope_type {self.scaling['rope_type']!r} depends on the sequence length: give "
                             "total_len with explicit positions")
        theta, factor = self.frequencies(total_len, device)
        cos, sin = rotary_cos_sin(positions, self.dim, theta=theta, attention_factor=factor)
        if positions.ndim == 2:
            cos, sin = cos[:, None], sin[:, None]  # (batch, 1, seq, dim/2): broadcast over heads
        return cos, sin

    def rotate(self, x: Tensor, positions: Positions = None) -> Tensor:
        """R_m x for one tensor (used for values with ``rotary_value``, or q and k of different lengths)."""
        self._check(x, "x")
        cos, sin = self.cos_sin(x.shape[self.seq_dim], positions, x.device)
        return apply_rotary(x, cos, sin, self.interleaved)

    def forward(self, q: Tensor, k: Tensor, positions: Positions = None) -> tuple[Tensor, Tensor]:
        self._check(q, "q")
        self._check(k, "k")
        if q.shape[self.seq_dim] != k.shape[self.seq_dim] or q.shape[-1] != k.shape[-1]:
            raise ValueError(
                f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in sequence length or head dim; "
                "rotate them one at a time with rope.rotate(x, positions)"
            )
        cos, sin = self.cos_sin(q.shape[self.seq_dim], positions, q.device)
        return apply_rotary(q, cos, sin, self.interleaved), apply_rotary(k, cos, sin, self.interleaved)

    def _check(self, x: Tensor, name: str) -> None:
        layout = "(batch, heads, seq, head_dim)" if self.seq_dim == -2 else "(batch, seq, heads, head_dim)"
        if x.ndim < -self.seq_dim:
            raise ValueError(f"{name} must be shaped {layout}, got {tuple(x.shape)}")
        if x.shape[-1] < self.dim:
            raise ValueError(
                f"rotary dim {self.dim} is larger than the head dim {x.shape[-1]} of {name} {tuple(x.shape)}"
            )


# --------------------------------------------------------------------------------------------------------
# Converting between the two pairings
# --------------------------------------------------------------------------------------------------------


def permute_rotary_layout(
    weight: Tensor, num_heads: int, rotary_dim: int | None = None, to: str = "half"
) -> Tensor:
    """Permute the output features of a q or k projection (weight ``(heads*head_dim, in)`` or bias
    ``(heads*head_dim,)``) between the interleaved pairing (``to="interleaved"``) and the half-split pairing
    (``to="half"``), head by head. Apply it to both W_q and W_k: the rotated pairs then line up and every
    attention score q . k is unchanged (a dot product does not see a common permutation)."""
    if to not in ("half", "interleaved"):
        raise ValueError(f"to must be 'half' or 'interleaved', got {to!r}")
    if weight.shape[0] % num_heads:
        raise ValueError(f"{weight.shape[0]} output features do not split into {num_heads} heads")
    head_dim = weight.shape[0] // num_heads
    rot = head_dim if rotary_dim is None else rotary_dim
    if rot % 2 or rot > head_dim:
        raise ValueError(f"rotary dim {rot} must be even and at most the head dim {head_dim}")
    interleaved_to_half = torch.cat((torch.arange(0, rot, 2), torch.arange(1, rot, 2)))
    perm = interleaved_to_half if to == "half" else torch.argsort(interleaved_to_half)
    perm = torch.cat((perm, torch.arange(rot, head_dim))).to(weight.device)
    per_head = weight.reshape(num_heads, head_dim, *weight.shape[1:])
    return per_head[:, perm].reshape(weight.shape)


# --------------------------------------------------------------------------------------------------------
# Long-term decay (§3.4.3, Fig. 2)
# --------------------------------------------------------------------------------------------------------


def relative_upper_bound(dim: int = 128, max_distance: int = 256, base: float = 10000.0) -> Tensor:
    """The relative upper bound of §3.4.3 for every relative distance r = 0 .. max_distance.

    With the Abel transformation, |sum_i q_[2i:2i+1] k*_[2i:2i+1] e^(j r theta_i)| is bounded by
    (max_i |h_(i+1) - h_i|) * sum_(j=1)^(d/2) |S_j|, where S_j = sum_(k=0)^(j-1) e^(j r theta_k).
    This returns (1 / (d/2)) * sum_j |S_j|, the curve of Fig. 2, in float64; shape (max_distance + 1,).
    """
    theta = rotary_frequencies(dim, base, dtype=torch.float64)
    r = torch.arange(max_distance + 1, dtype=torch.float64)
    angles = r[:, None] * theta
    partial_sums = torch.polar(torch.ones_like(angles), angles).cumsum(dim=-1)  # S_1 .. S_(d/2)
    return partial_sums.abs().mean(dim=-1)
