"""Rotary position embedding (RoPE), paper §3.2 and §3.4.

RoPE encodes the absolute position m of a query or key by rotating it (Eq. 13-16): the vector's features
are taken in d/2 pairs and pair i is rotated by the angle m * theta_i, with

    theta_i = base^(-2(i-1)/d),   i = 1 .. d/2                                  (Eq. 15)

so that the inner product of a rotated query at m and a rotated key at n depends on m - n only
(Eq. 11 and 16): <R_m q, R_n k> = q^T R_(n-m) k. The dense block-diagonal matrix R is never built; the
rotation is applied in the element-wise form of Eq. 34,

    R_m x = x * cos(m theta) + rotate_pairs(x) * sin(m theta),

one pass over x in the op ``roformer::rotary`` (:mod:`roformer.kernels.rotary`), the same in eager,
``torch.compile`` and ``torch.export``.

Two feature pairings exist in the wild:
- ``interleaved=True`` (the paper's Eq. 34, every RoFormer checkpoint): pairs (x1, x2), (x3, x4), ...
- ``interleaved=False`` (GPT-NeoX / LLaMA "rotate half"): pairs (x_i, x_(i + d/2)).
``permute_rotary_layout`` converts a q/k projection from one pairing to the other without changing any
attention score.

Positions come in three forms that cannot be confused (:func:`rotary_positions`): ``offset``, the start of every
sequence (an int, or a ``(batch,)`` tensor of one start per sequence); ``position_ids``, every token's position
(``(seq,)`` or ``(batch, seq)``); and ``cu_seqlens``, the ``(n + 1,)`` boundaries of n sequences packed along one
axis (flash-attention's varlen form), positions restarting at 0 in each (plus ``offset[i]`` if given).

xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer") is ``RotaryEmbedding(..., xpos_scale_base=512)``:
queries are scaled by zeta_i^(m / gamma) and keys by zeta_i^(-n / gamma) with zeta_i = (2i/d + 0.4) / 1.4, so a
score gains the factor zeta^((m - n) / gamma): a decay with distance for keys before the query (m > n). For
keys after the query (n > m) the factor grows instead, which is why xPos is for causal attention only; and
since the scales grow like zeta^(-n / gamma), keys stay finite in float32 up to about n = 36 gamma (18k tokens
with gamma = 512) for the smallest zeta. Positions are not centred (unlike the reference code's
``t - seq_len // 2``), so that cached decoding equals a full pass.

The long-term decay of §3.4.3 (Fig. 2) is :func:`relative_upper_bound`. Beyond the training length, the
frequency scalings (position interpolation, NTK, YaRN, Llama-3, LongRoPE, proportional) are in
:mod:`roformer.rope_scaling`. Multimodal (M-RoPE) and 2-D image RoPE are in :mod:`roformer.rope_nd`.

Precision: angles are formed in float64 (float32 on MPS) with autocast off; a float64 input is rotated with
float64 cos/sin (exact to ~1e-16), float32 and half-precision inputs with float32 cos/sin (half precision is
rotated in float32 and rounded once).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import InvalidArgument, InvalidType
from .kernels.rotary import InplaceRotary, PackedRotary, compute_dtype, rotary, rotary_
from .rope_scaling import (
    check_base,
    check_rotary_dim,
    default_frequencies,
    frequencies,
    is_length_dependent,
    normalize_rope_parameters,
)
from .rope_scaling import rotary_dim as scaled_rotary_dim

__all__ = [
    "RotaryEmbedding",
    "apply_rotary",
    "rotary_positions",
    "rotary_frequencies",
    "rotary_cos_sin",
    "permute_rotary_layout",
    "relative_upper_bound",
]


def angle_dtype(device: torch.device | str) -> torch.dtype:
    """Angles are formed in float64 where the device has it (positions * theta loses ~1e-4 rad in float32
    at position 1500), in float32 elsewhere (MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def rotary_frequencies(dim: int, base: float = 10000.0, device=None, dtype=torch.float64) -> Tensor:
    """theta_i = base^(-2(i-1)/d) for i = 1 .. d/2 (Eq. 15). Returns a tensor of shape (d/2,)."""
    return default_frequencies(check_rotary_dim(dim), check_base(base), device, dtype)


def rotary_cos_sin(positions: Tensor, dim: int | None = None, base: float = 10000.0, theta: Tensor | None = None,
                   attention_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos(m theta_i) and sin(m theta_i) (times ``attention_factor``) for every position m in ``positions``:
    shape ``(*positions.shape, len(theta))``, in float64 (float32 on MPS), formed with autocast off. ``theta``:
    the frequencies (default: Eq. 15 for ``dim`` and ``base``)."""
    if torch.is_autocast_enabled(positions.device.type):  # autocast would run pow (and more) in float32
        with torch.autocast(positions.device.type, enabled=False):
            return rotary_cos_sin(positions, dim, base, theta, attention_factor)
    dtype = angle_dtype(positions.device)
    if theta is None:
        theta = rotary_frequencies(dim, base, device=positions.device, dtype=dtype)
    angles = positions.to(dtype)[..., None] * theta.to(device=positions.device, dtype=dtype)
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


# --------------------------------------------------------------------------------------------------------
# Positions: offset | position_ids | cu_seqlens
# --------------------------------------------------------------------------------------------------------


def _integer_tensor(t, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise InvalidType(f"{name} must be an integer tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InvalidType(f"{name} must be an integer tensor, got {t.dtype}")
    return t


def rotary_positions(seq_len: int, *, offset: int | Tensor = 0, position_ids: Tensor | None = None,
                     cu_seqlens: Tensor | None = None, device=None) -> Tensor:
    """Every token's position, from exactly one of the three forms (``offset`` may go with ``cu_seqlens``):

    - ``offset`` (default 0): an int, positions offset .. offset + seq_len - 1, shape ``(seq,)``; or a ``(batch,)``
      tensor, one start per sequence, shape ``(batch, seq)``.
    - ``position_ids``: ``(seq,)`` or ``(batch, seq)``, returned as given.
    - ``cu_seqlens``: int32/int64 ``(n + 1,)``, the boundaries 0 = c_0 <= c_1 <= ... <= c_n = seq_len of n sequences
      packed along one axis of ``seq_len`` tokens; token t of sequence i is at t - c_i (+ ``offset[i]`` for a
      ``(n,)`` offset tensor, flash-attention's ``seqlen_offsets``). Shape ``(seq,)``.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | torch.SymInt) or seq_len < 0:
        raise InvalidArgument(f"seq_len must be an int >= 0, got {seq_len!r}")
    offset_given = not (isinstance(offset, int) and not isinstance(offset, bool) and offset == 0)  # a SymInt counts
    if position_ids is not None and (cu_seqlens is not None or offset_given):
        raise InvalidArgument("give position_ids alone: they are every token's position (add an offset to them "
                              "yourself), while offset and cu_seqlens describe positions by sequence")
    if position_ids is not None:
        position_ids = _integer_tensor(position_ids, "position_ids")
        if position_ids.ndim not in (1, 2) or position_ids.shape[-1] != seq_len:
            raise InvalidArgument(f"position_ids must be (seq,) or (batch, seq) with seq = {seq_len}, got "
                                  f"{tuple(position_ids.shape)}; for one start per sequence give offset=(batch,) "
                                  "tensor")
        return position_ids.to(device) if device is not None else position_ids
    if isinstance(offset, Tensor):
        offset = _integer_tensor(offset, "offset")
        if offset.ndim != 1:
            raise InvalidArgument(f"a tensor offset holds one start per sequence, shape (batch,), got "
                                  f"{tuple(offset.shape)}; every token's position goes in position_ids")
        device = offset.device if device is None else device
        offset = offset.to(device)
    elif isinstance(offset, bool) or not isinstance(offset, int | torch.SymInt) or offset < 0:
        raise InvalidArgument(f"offset must be an int >= 0 or a (batch,) integer tensor, got {offset!r}")
    if cu_seqlens is not None:
        cu_seqlens = _integer_tensor(cu_seqlens, "cu_seqlens")
        device = cu_seqlens.device if device is None else device
        if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 2:
            raise InvalidArgument(f"cu_seqlens must be (n + 1,) sequence boundaries, got {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():  # a free check, no device sync
            if cu_seqlens[0] != 0 or cu_seqlens[-1] != seq_len or (cu_seqlens.diff() < 0).any():
                raise InvalidArgument(f"cu_seqlens must rise from 0 to the {seq_len} packed tokens, got "
                                      f"{cu_seqlens.tolist()}")
        if isinstance(offset, Tensor) and offset.shape[0] != cu_seqlens.shape[0] - 1:
            raise InvalidArgument(f"offset must hold one start per packed sequence ({cu_seqlens.shape[0] - 1}), got "
                                  f"{offset.shape[0]}")
        cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int64)
        tokens = torch.arange(seq_len, device=device)
        sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True).clamp(max=cu_seqlens.shape[0] - 2)
        positions = tokens - cu_seqlens[sequence]
        return positions + (offset[sequence] if isinstance(offset, Tensor) else offset)
    if isinstance(offset, Tensor):
        return offset[:, None] + torch.arange(seq_len, device=device)
    return torch.arange(offset, offset + seq_len, device=device)


def _for_layout(t: Tensor, seq_dim: int) -> Tensor:
    """Per-token ``(*positions.shape, r/2)`` -> broadcastable against x: ``(batch, seq, r/2)`` to
    ``(batch, 1, seq, r/2)`` for (batch, heads, seq, d) and ``(batch, seq, 1, r/2)`` for (batch, seq, heads, d);
    ``(seq, r/2)`` stays for the first and becomes ``(seq, 1, r/2)`` for the second (and varlen's (total, heads, d))."""
    if seq_dim == -3:
        return t.unsqueeze(-2)
    return t.unsqueeze(-3) if t.ndim == 3 else t


# --------------------------------------------------------------------------------------------------------
# The rotation itself (Eq. 34)
# --------------------------------------------------------------------------------------------------------


def _check_rotation(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    if cos.shape != sin.shape:
        raise InvalidArgument(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if not x.is_floating_point():
        raise InvalidType(f"RoPE rotates floating-point tensors, got {x.dtype}")
    if 2 * cos.shape[-1] > x.shape[-1]:
        raise InvalidArgument(f"rotary dim {2 * cos.shape[-1]} is larger than the head dim {x.shape[-1]} of the input "
                              f"{tuple(x.shape)}")
    rows = x.shape[:-1]
    table = cos.shape[:-1]
    if cos.ndim > x.ndim or any(c not in (1, r) for c, r in zip(table, rows[len(rows) - len(table):], strict=True)):
        raise InvalidArgument(f"cos/sin of shape {tuple(cos.shape)} do not broadcast against the input "
                              f"{tuple(x.shape)} without enlarging it (check the batch size of the positions and the "
                              "layout)")


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, inverse: bool = False,
            inplace: bool = False) -> Tensor:
    """R_m x (R_m^T x with ``inverse``) for the first 2 * cos.shape[-1] features; the one entry to the op."""
    _check_rotation(x, cos, sin)
    if not inplace:
        return rotary(x, cos, sin, interleaved, inverse)
    if x.requires_grad and torch.is_grad_enabled():
        if x.is_leaf:
            raise InvalidArgument("inplace=True cannot rotate a leaf tensor that requires grad (autograd needs it "
                                  "unchanged): rotate a copy, or use inplace=False")
        return InplaceRotary.apply(x, cos, sin, interleaved, inverse)
    rotary_(x, cos, sin, interleaved, inverse)
    return x


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = True, *, offset: int | Tensor | None = None,
                 position_ids: Tensor | None = None, cu_seqlens: Tensor | None = None, seq_dim: int = -2,
                 inverse: bool = False, inplace: bool = False) -> Tensor:
    """Rotate ``x`` (``(..., seq, head_dim)``, or ``(batch, seq, heads, head_dim)`` with ``seq_dim=-3``) by the
    angles whose cosines and sines are given (Eq. 34); ``inverse=True`` rotates by -theta (R_m^T).

    Without a position argument, ``cos`` and ``sin`` (last dim rotary_dim/2) are the per-token values and
    broadcast against ``x[..., :rotary_dim/2]``, e.g. ``(seq, rotary_dim/2)`` or ``(batch, 1, seq, rotary_dim/2)``
    (what ``RotaryEmbedding.cos_sin`` returns). With ``offset``, ``position_ids`` or ``cu_seqlens`` (the forms of
    :func:`rotary_positions`; with ``cu_seqlens`` x is ``(total, heads, head_dim)``), they are tables
    ``(max_position, rotary_dim/2)`` indexed by position, as in flash-attention. Features past rotary_dim are
    returned unchanged (partial rotary). Differentiable in x (the backward is the rotation by -theta) and, where
    they require grad, in cos and sin. ``inplace=True`` writes into x and returns it."""
    if seq_dim not in (-2, -3):
        raise InvalidArgument(f"seq_dim must be -2 (batch, heads, seq, dim) or -3 (batch, seq, heads, dim), "
                              f"got {seq_dim}")
    if offset is not None or position_ids is not None or cu_seqlens is not None:
        if cos.ndim != 2:
            raise InvalidArgument(f"with a position argument cos and sin are tables (max_position, rotary_dim/2), got "
                                  f"{tuple(cos.shape)}")
        if cu_seqlens is not None:
            seq_dim = -3
        positions = rotary_positions(x.shape[seq_dim], offset=0 if offset is None else offset,
                                     position_ids=position_ids, cu_seqlens=cu_seqlens, device=cos.device)
        cos, sin = _for_layout(cos[positions], seq_dim), _for_layout(sin[positions], seq_dim)
    return _rotate(x, cos, sin, interleaved, inverse, inplace)


# --------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """RoPE for queries and keys shaped ``(batch, heads, seq, head_dim)`` (``seq_dim=-2``, the default) or
    ``(batch, seq, heads, head_dim)`` (``seq_dim=-3``, the layout of flash-attention and most HF code); with
    ``cu_seqlens``, ``(total_tokens, heads, head_dim)``.

    >>> rope = RotaryEmbedding(64)
    >>> q, k = rope(q, k)                                   # positions 0 .. seq-1
    >>> q, k = rope(q, k, offset=past_len)                  # decoding after past_len cached tokens
    >>> q, k = rope(q, k, offset=starts)                    # (batch,) tensor: one start per sequence
    >>> q, k = rope(q, k, position_ids=pos)                 # (seq,) or (batch, seq): every token's position
    >>> q, k = rope(q, k, cu_seqlens=cu)                    # varlen: (total, heads, dim), positions restart
    >>> qkv = rope.rotate_qkv(qkv)                          # packed (batch, seq, 3, heads, dim); GQA: num_heads_q
    >>> RotaryEmbedding(64, scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048})

    ``dim`` is the number of features the embedding covers (a head's dim, or fewer: the rest pass through); a
    ``partial_rotary_factor`` in ``scaling`` rotates the first int(factor * dim) of them, as in ``transformers``.
    ``scaling``: HuggingFace's ``rope_parameters`` (see :mod:`roformer.rope_scaling`; its ``rope_theta``, if given,
    is the base); ``max_position_embeddings``: the model's length, from which yarn, llama3 and longrope take an
    absent original length and factor. ``xpos_scale_base``: gamma of xPos (see the module docstring).

    There is no maximum length and no table: the angles of the positions asked for are formed on every call
    (once per forward pass with :meth:`cos_sin`, shared by the layers), the same code eager, compiled and exported.
    """

    def __init__(self, dim: int, base: float | None = None, interleaved: bool = True, scaling: dict | None = None,
                 seq_dim: int = -2, max_position_embeddings: int | None = None, xpos_scale_base: float | None = None):
        super().__init__()
        check_rotary_dim(dim)
        if seq_dim not in (-2, -3):
            raise InvalidArgument(f"seq_dim must be -2 (batch, heads, seq, dim) or -3 (batch, seq, heads, dim), "
                                  f"got {seq_dim}")
        self.scaling = normalize_rope_parameters(scaling, dim, max_position_embeddings)
        theta = self.scaling.get("rope_theta")
        if base is not None and theta is not None and float(base) != float(theta):
            raise InvalidArgument(f"base {base} and rope_parameters' rope_theta {theta} disagree; give one")
        self.base = check_base(base if base is not None else theta if theta is not None else 10000.0)
        self.dim, self.interleaved, self.seq_dim = dim, interleaved, seq_dim
        self.rotary_dim = scaled_rotary_dim(self.scaling, dim)
        self.length_dependent = is_length_dependent(self.scaling)
        # the frequencies of a length-independent type, formed once (float64 on CPU; not a buffer, so that
        # .to(bfloat16) on a model never rounds them)
        self._fixed = None if self.length_dependent else frequencies(self.scaling, dim, self.base, device="cpu")
        if xpos_scale_base is not None and not (isinstance(xpos_scale_base, int | float) and xpos_scale_base > 0
                                                and math.isfinite(xpos_scale_base)):
            raise InvalidArgument(f"xpos_scale_base must be a finite number > 0, got {xpos_scale_base!r}")
        self.xpos_scale_base = xpos_scale_base

    def extra_repr(self) -> str:
        scaling = "" if self.scaling["rope_type"] == "default" else f", rope_type={self.scaling['rope_type']}"
        xpos = "" if self.xpos_scale_base is None else f", xpos_scale_base={self.xpos_scale_base:g}"
        return f"dim={self.dim}, rotary_dim={self.rotary_dim}, base={self.base:g}, interleaved={self.interleaved}" \
               f"{scaling}{xpos}"

    def frequencies(self, seq_len: int | None = None, device=None) -> tuple[Tensor, float]:
        """(theta_i, attention factor) for a sequence of total length ``seq_len`` (float64 where available)."""
        device = torch.device(device or "cpu")
        if self._fixed is not None:
            return self._fixed[0].to(device=device, dtype=angle_dtype(device)), self._fixed[1]
        return frequencies(self.scaling, self.dim, self.base, seq_len, device, angle_dtype(device))

    def _angles(self, seq_len: int, offset=0, position_ids=None, cu_seqlens=None, device=None, total_len=None,
                dtype=None) -> tuple[Tensor, Tensor, Tensor]:
        """The positions of the tokens and the cos/sin at them, ``(*positions.shape, rotary_dim/2)``, in the compute
        dtype of ``dtype`` (default float64)."""
        positions = rotary_positions(seq_len, offset=offset, position_ids=position_ids, cu_seqlens=cu_seqlens,
                                     device=device)
        if self.length_dependent and total_len is None:
            if isinstance(offset, Tensor) or position_ids is not None or cu_seqlens is not None:
                raise InvalidArgument(f"rope_type {self.scaling['rope_type']!r} depends on the sequence length: give "
                                      "total_len with tensor positions")
            total_len = offset + seq_len
        theta, factor = self.frequencies(total_len, positions.device)
        cos, sin = rotary_cos_sin(positions, theta=theta, attention_factor=factor)
        if dtype is not None:
            cos, sin = cos.to(compute_dtype(dtype)), sin.to(compute_dtype(dtype))
        return positions, cos, sin

    def cos_sin(self, seq_len: int, *, offset: int | Tensor = 0, position_ids: Tensor | None = None,
                cu_seqlens: Tensor | None = None, device=None, total_len: int | None = None,
                dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """cos and sin of the rotation angles for a block of ``seq_len`` tokens at the positions given (see
        :func:`rotary_positions`), shaped to broadcast against the rotated features: ``(seq, r/2)`` for shared
        positions, ``(batch, 1, seq, r/2)`` for per-sequence ones (``(seq, 1, r/2)`` and ``(batch, seq, 1, r/2)``
        with ``seq_dim=-3`` or ``cu_seqlens``). Compute them once per forward pass and hand them to every layer's
        :func:`apply_rotary`. ``total_len``: the length of the whole sequence these tokens belong to (default:
        offset + seq_len), which length-dependent scalings use. With xPos these are the queries' values; the keys'
        are :meth:`xpos_cos_sin`. ``dtype``: that of the tensors they will rotate, to have them in its compute
        dtype once (float64 for float64, float32 otherwise) rather than at every rotation; default float64."""
        if self.xpos_scale_base is not None:
            raise InvalidArgument("with xPos, queries and keys are scaled differently: use xpos_cos_sin")
        _, cos, sin = self._angles(seq_len, offset, position_ids, cu_seqlens, device, total_len, dtype)
        seq_dim = -3 if cu_seqlens is not None else self.seq_dim
        return _for_layout(cos, seq_dim), _for_layout(sin, seq_dim)

    def xpos_cos_sin(self, seq_len: int, *, offset: int | Tensor = 0, position_ids: Tensor | None = None,
                     cu_seqlens: Tensor | None = None, device=None, total_len: int | None = None,
                     dtype: torch.dtype | None = None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """xPos: ((cos, sin) for queries, scaled by zeta^(m/gamma); (cos, sin) for keys, scaled by zeta^(-m/gamma)),
        shaped as :meth:`cos_sin`'s."""
        if self.xpos_scale_base is None:
            raise InvalidArgument("this RotaryEmbedding has no xPos scaling (give xpos_scale_base)")
        m, cos, sin = self._angles(seq_len, offset, position_ids, cu_seqlens, device, total_len)  # float64
        zeta = (torch.arange(0, self.rotary_dim, 2, device=m.device, dtype=cos.dtype) + 0.4 * self.rotary_dim) / (
            1.4 * self.rotary_dim)
        scale = zeta ** (m.to(cos.dtype)[..., None] / self.xpos_scale_base)
        seq_dim = -3 if cu_seqlens is not None else self.seq_dim
        compute = torch.float64 if dtype is None else compute_dtype(dtype)
        q = (_for_layout((cos * scale).to(compute), seq_dim), _for_layout((sin * scale).to(compute), seq_dim))
        k = (_for_layout((cos / scale).to(compute), seq_dim), _for_layout((sin / scale).to(compute), seq_dim))
        return q, k

    def rotate(self, x: Tensor, *, offset: int | Tensor = 0, position_ids: Tensor | None = None,
               cu_seqlens: Tensor | None = None, total_len: int | None = None, inverse: bool = False,
               inplace: bool = False) -> Tensor:
        """R_m x for one tensor (values with ``rotary_value``, or q and k of different lengths); ``inverse``:
        R_m^T x, which undoes it. (With xPos, this is the query's scaled rotation.)"""
        seq = self._check(x, "x", cu_seqlens)
        (cos, sin), _ = self._tables(seq, offset, position_ids, cu_seqlens, x.device, total_len, x.dtype)
        return _rotate(x, cos, sin, self.interleaved, inverse, inplace)

    def forward(self, q: Tensor, k: Tensor, *, offset: int | Tensor = 0, position_ids: Tensor | None = None,
                cu_seqlens: Tensor | None = None, total_len: int | None = None, inplace: bool = False
                ) -> tuple[Tensor, Tensor]:
        """(R_m q, R_m k). k may have fewer heads than q (grouped-query attention)."""
        seq = self._check(q, "q", cu_seqlens)
        if self._check(k, "k", cu_seqlens) != seq or q.shape[-1] != k.shape[-1]:
            raise InvalidArgument(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in sequence length or head dim; "
                                  "rotate them one at a time with rope.rotate(x, ...)")
        (qc, qs), (kc, ks) = self._tables(seq, offset, position_ids, cu_seqlens, q.device, total_len, q.dtype)
        return (_rotate(q, qc, qs, self.interleaved, inplace=inplace),
                _rotate(k, kc, ks, self.interleaved, inplace=inplace))

    def rotate_qkv(self, qkv: Tensor, *, num_heads_q: int | None = None, offset: int | Tensor = 0,
                   position_ids: Tensor | None = None, cu_seqlens: Tensor | None = None, total_len: int | None = None,
                   inplace: bool = False) -> Tensor:
        """q and k of a packed projection rotated, v passed through: ``qkv`` is ``(batch, seq, 3, heads, dim)``,
        or ``(batch, seq, heads_q + 2 * heads_kv, dim)`` with ``num_heads_q`` (grouped-query attention); with
        ``cu_seqlens``, without the batch axis. The layout is always sequence before heads."""
        return self._rotate_packed(qkv, 3, num_heads_q, inplace, offset=offset, position_ids=position_ids,
                                   cu_seqlens=cu_seqlens, total_len=total_len)

    def rotate_kv(self, kv: Tensor, *, offset: int | Tensor = 0, position_ids: Tensor | None = None,
                  cu_seqlens: Tensor | None = None, total_len: int | None = None, inplace: bool = False) -> Tensor:
        """k of a packed ``(batch, seq, 2, heads, dim)`` key-value tensor rotated, v passed through."""
        return self._rotate_packed(kv, 2, None, inplace, offset=offset, position_ids=position_ids,
                                   cu_seqlens=cu_seqlens, total_len=total_len)

    def _rotate_packed(self, packed: Tensor, parts: int, num_heads_q: int | None, inplace: bool, **positions) -> Tensor:
        lead = 1 if positions["cu_seqlens"] is not None else 2  # (total,) or (batch, seq) before the packed axes
        name, shape = ("qkv" if parts == 3 else "kv"), ("total" if lead == 1 else "batch, seq")
        if self.xpos_scale_base is not None:
            raise InvalidArgument("xPos scales q and k differently: rotate them with rope(q, k), not packed")
        if num_heads_q is None:
            if packed.ndim != lead + 3 or packed.shape[lead] != parts:
                raise InvalidArgument(f"{name} must be shaped ({shape}, {parts}, heads, dim), got {tuple(packed.shape)}"
                                      f"{'; for grouped-query attention give num_heads_q' if parts == 3 else ''}")
            rotated = (parts - 1) * packed.shape[lead + 1]  # the q and k heads (k alone for kv)
            merged = (*packed.shape[:lead], -1, packed.shape[-1])
            try:
                flat = packed.view(merged)  # (..., parts * heads, dim)
            except RuntimeError:
                if inplace:
                    raise InvalidArgument(f"inplace=True needs a {name} whose ({parts}, heads) axes are contiguous, "
                                          f"got strides {packed.stride()}") from None
                flat = packed.reshape(merged)
        else:
            heads_kv, rest = divmod(packed.shape[-2] - num_heads_q, 2)
            if packed.ndim != lead + 2 or rest or heads_kv <= 0 or num_heads_q <= 0:
                raise InvalidArgument(f"qkv with num_heads_q={num_heads_q} must be shaped ({shape}, heads_q + 2 * "
                                      f"heads_kv, dim), got {tuple(packed.shape)}")
            flat, rotated = packed, num_heads_q + heads_kv
        self._check_dim(flat, name)
        _, cos, sin = self._angles(flat.shape[lead - 1], device=flat.device, dtype=flat.dtype, **positions)
        cos, sin = _for_layout(cos, -3), _for_layout(sin, -3)
        if inplace:
            _rotate(flat[..., :rotated, :], cos, sin, self.interleaved, inplace=True)
            return packed
        _check_rotation(flat, cos, sin)
        return PackedRotary.apply(flat, cos, sin, rotated, self.interleaved).view(packed.shape)

    def _tables(self, seq, offset, position_ids, cu_seqlens, device, total_len, dtype):
        """((cos, sin) for queries, (cos, sin) for keys), broadcastable against them."""
        if self.xpos_scale_base is not None:
            return self.xpos_cos_sin(seq, offset=offset, position_ids=position_ids, cu_seqlens=cu_seqlens,
                                     device=device, total_len=total_len, dtype=dtype)
        cos_sin = self.cos_sin(seq, offset=offset, position_ids=position_ids, cu_seqlens=cu_seqlens, device=device,
                               total_len=total_len, dtype=dtype)
        return cos_sin, cos_sin

    def _check_dim(self, x: Tensor, name: str) -> None:
        if x.shape[-1] < self.dim:
            raise InvalidArgument(f"rotary dim {self.dim} is larger than the head dim {x.shape[-1]} of {name} "
                                  f"{tuple(x.shape)}")

    def _check(self, x: Tensor, name: str, cu_seqlens) -> int:
        """The sequence length of x, after checking its layout."""
        if cu_seqlens is not None:
            if x.ndim != 3:
                raise InvalidArgument(f"with cu_seqlens, {name} must be (total_tokens, heads, head_dim), got "
                                      f"{tuple(x.shape)}")
            seq = x.shape[0]
        else:
            layout = "(batch, heads, seq, head_dim)" if self.seq_dim == -2 else "(batch, seq, heads, head_dim)"
            if x.ndim < -self.seq_dim:
                raise InvalidArgument(f"{name} must be shaped {layout}, got {tuple(x.shape)}")
            seq = x.shape[self.seq_dim]
        self._check_dim(x, name)
        return seq


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
        raise InvalidArgument(f"to must be 'half' or 'interleaved', got {to!r}")
    if weight.shape[0] % num_heads:
        raise InvalidArgument(f"{weight.shape[0]} output features do not split into {num_heads} heads")
    head_dim = weight.shape[0] // num_heads
    rot = head_dim if rotary_dim is None else rotary_dim
    if rot % 2 or rot > head_dim:
        raise InvalidArgument(f"rotary dim {rot} must be even and at most the head dim {head_dim}")
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
