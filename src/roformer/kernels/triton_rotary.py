"""The rotation of Eq. 34 as one Triton kernel: the CUDA implementation of ``roformer::rotary`` and its in-place
and into-a-buffer forms (:mod:`roformer.kernels.rotary`), for both pairings.

One pass over x, as the CPU loop of :mod:`roformer.kernels.cpu`: every program takes a block of rows (the
leading dims of x, up to three, by their strides) and all pairs of a row,

    half split:   out_j  = x_j  cos(m theta_j) - x_(j+d/2) sin(m theta_j),  out_(j+d/2) = x_(j+d/2) cos + x_j sin
    interleaved:  out_2j = x_2j cos(m theta_j) - x_(2j+1)  sin(m theta_j),  out_(2j+1)  = x_(2j+1)  cos + x_2j sin

reading each pair before writing it (so out may be x: in place), loading x in its own dtype and computing in
float32 (float64 for float64), with ``sign = -1`` for the rotation by -theta (the inverse, and the backward).
Features past rotary_dim are copied unless out is x. cos and sin are read by their own strides: broadcasting
them over heads or batch costs no memory. Every position form of the RoPE API (offsets, position ids,
``cu_seqlens``) arrives here as cos/sin rows already gathered for each token, and the packed qkv/kv forms as a
view of the heads to rotate, so the kernel needs no position logic of its own.

Triton is optional (``pip install roformer[gpu]``): where it is missing, or the tensor is not on a device the
kernel serves, :func:`rotate` returns ``False`` and the op runs its reference formula. Its correctness is tested
on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``); its speed only on a GPU
(``benchmarks/bench_rope_gpu.py``).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

__all__ = ["available", "serves", "rotate"]


@functools.cache
def available() -> bool:
    """Triton imports (and ``ROFORMER_TRITON`` is not 0)."""
    if os.environ.get("ROFORMER_TRITON", "1") == "0":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def serves(x: Tensor) -> bool:
    """Whether :func:`rotate` takes this tensor: Triton is there, the tensor is on CUDA (or on the CPU under
    Triton's interpreter), of a floating dtype the kernel computes (float16, bfloat16, float32, float64)."""
    on_device = x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())
    return on_device and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and available()


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rotary_rows(X, C, S, O, rows, n1, n2, sx0, sx1, sx2, sc0, sc1, sc2, ss0, ss1, ss2, so0, so1, so2,
                    half, rest, sign, INTERLEAVED: tl.constexpr, COPY_REST: tl.constexpr, F64: tl.constexpr,
                    BLOCK_ROWS: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_REST: tl.constexpr):
        # (BLOCK_ROWS,) in int64: a row index times a stride can pass 2^31 elements on a large batch
        row = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
        live = row < rows
        i2 = row % n2
        i1 = (row // n2) % n1
        i0 = row // (n1 * n2)
        x_row = (i0 * sx0 + i1 * sx1 + i2 * sx2)[:, None]
        c_row = (i0 * sc0 + i1 * sc1 + i2 * sc2)[:, None]
        s_row = (i0 * ss0 + i1 * ss1 + i2 * ss2)[:, None]
        o_row = (i0 * so0 + i1 * so1 + i2 * so2)[:, None]
        j = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF): pair j
        mask = live[:, None] & (j < half)
        if INTERLEAVED:
            first, second = 2 * j, 2 * j + 1
        else:
            first, second = j, j + half
        compute = tl.float64 if F64 else tl.float32
        a = tl.load(X + x_row + first, mask=mask, other=0.0).to(compute)
        b = tl.load(X + x_row + second, mask=mask, other=0.0).to(compute)
        c = tl.load(C + c_row + j, mask=mask, other=0.0).to(compute)
        s = tl.load(S + s_row + j, mask=mask, other=0.0).to(compute) * sign
        tl.store(O + o_row + first, (a * c - b * s).to(O.dtype.element_ty), mask=mask)
        tl.store(O + o_row + second, (b * c + a * s).to(O.dtype.element_ty), mask=mask)
        if COPY_REST:  # features past rotary_dim pass through (partial rotary)
            k = 2 * half + tl.arange(0, BLOCK_REST)[None, :]
            keep = live[:, None] & (k < 2 * half + rest)
            tl.store(O + o_row + k, tl.load(X + x_row + k, mask=keep), mask=keep)

    return rotary_rows


def _rows(t: Tensor) -> tuple[int, int, int] | None:
    """The strides of t's leading dims, padded to three on the left (t has x's leading shape); None if the last
    dim is not unit-stride."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        return None
    strides = list(t.stride()[:-1])
    return tuple([0] * (3 - len(strides)) + strides)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, interleaved: bool, sign: float) -> bool:
    """Rotate x into out (which may be x itself) by the angles whose cos and sin are given (last dim
    rotary_dim/2, broadcasting against x's leading dims); False where the kernel does not serve this call (then
    nothing was written)."""
    if not serves(x) or out.dtype != x.dtype or x.ndim < 1 or x.ndim > 4 or x.shape != out.shape:
        return False
    half, d = cos.shape[-1], x.shape[-1]
    if half == 0 or 2 * half > d or sin.shape[-1] != half:
        return False
    lead = tuple(x.shape[:-1])
    cos = cos.to(x.device).broadcast_to(*lead, half) if lead else cos.reshape(half)
    sin = sin.to(x.device).broadcast_to(*lead, half) if lead else sin.reshape(half)
    strides = [_rows(t) for t in (x, cos, sin, out)]
    if any(s is None for s in strides) or (out.data_ptr() != x.data_ptr() and _overlap(x, out)):
        return False
    n = [1] * (3 - len(lead)) + list(lead)
    rows = n[0] * n[1] * n[2]
    if rows == 0:
        return True
    in_place = out.data_ptr() == x.data_ptr()
    block_half = max(16, 1 << (half - 1).bit_length())
    block_rows = max(1, min(64, 4096 // block_half))
    rest = d - 2 * half
    grid = (-(-rows // block_rows),)
    _kernel()[grid](
        x, cos, sin, out, rows, n[1], n[2], *strides[0], *strides[1], *strides[2], *strides[3], half, rest,
        float(sign), INTERLEAVED=interleaved, COPY_REST=rest > 0 and not in_place, F64=x.dtype == torch.float64,
        BLOCK_ROWS=block_rows, BLOCK_HALF=block_half, BLOCK_REST=max(16, 1 << max(rest - 1, 0).bit_length()))
    return True


def _overlap(x: Tensor, out: Tensor) -> bool:
    """Whether out shares memory with x without being x (a kernel reading x while writing out would race)."""
    return x.data_ptr() < out.data_ptr() + _extent(out) and out.data_ptr() < x.data_ptr() + _extent(x)


def _extent(t: Tensor) -> int:
    """Bytes from t's first element to just past its last."""
    if t.numel() == 0:
        return 0
    return (1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))) * t.element_size()
