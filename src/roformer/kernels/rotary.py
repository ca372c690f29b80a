"""The rotation of Eq. 34 as one ``torch.library`` op, so that eager, ``torch.compile`` and ``torch.export`` run
the same math:

    roformer::rotary(x, cos, sin, interleaved, conjugate) -> R_m x   (R_m^T x, the rotation by -theta, if conjugate)
    roformer::rotary_(x, cos, sin, interleaved, conjugate)           the same, written into x
    roformer::rotary_into(x, cos, sin, out, interleaved, conjugate)  the same, written into out (another tensor)

``cos`` and ``sin`` have last dim rotary_dim/2 and broadcast against ``x[..., :rotary_dim/2]`` without
enlarging it; features past rotary_dim pass through. The out-of-place op returns a contiguous tensor of x's
dtype; float64 is rotated in float64, every other dtype in float32 and rounded once.

Implementations (:func:`implementation` says which a tensor gets): on CPU for float32/float64 the one-pass C
loop of :mod:`roformer.kernels.cpu`; on CUDA, where Triton imports, the one-pass Triton kernel of
:mod:`roformer.kernels.triton_rotary` (every float dtype, computed in float32); everywhere else (half precision
on CPU, no compiler, no Triton) :func:`rotary_reference`, the formula written out in PyTorch. The
fake (meta) implementation gives compile and export the output's shape; the autograd formula is the
rotation by -theta (R_m is orthogonal, so the gradient of R_m x is R_m^T g) and saves cos and sin only, not
the activation, unless cos or sin themselves need a gradient (learnt frequencies).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import cpu, triton_rotary

__all__ = ["rotary", "rotary_", "rotary_into", "rotary_reference", "compute_dtype", "implementation",
           "InplaceRotary", "PackedRotary"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is rotated in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pairs(x: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    """The two features of every pair: (x_2j, x_2j+1) interleaved, (x_j, x_j+d/2) half split."""
    return (x[..., 0::2], x[..., 1::2]) if interleaved else x.chunk(2, dim=-1)


def _unpairs(a: Tensor, b: Tensor, interleaved: bool) -> Tensor:
    return torch.stack((a, b), dim=-1).flatten(-2) if interleaved else torch.cat((a, b), dim=-1)


def rotary_reference(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, conjugate: bool) -> Tensor:
    """Eq. 34 in PyTorch: pair (a, b) -> (a cos - b sin, b cos + a sin), with -sin if ``conjugate``."""
    rot, compute = 2 * cos.shape[-1], compute_dtype(x.dtype)
    cos, sin = cos.to(compute), sin.to(compute)
    if conjugate:
        sin = -sin
    a, b = _pairs(x[..., :rot].to(compute), interleaved)
    rotated = _unpairs(a * cos - b * sin, b * cos + a * sin, interleaved).to(x.dtype)
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


def implementation(device_type: str, dtype: torch.dtype) -> str:
    """Which implementation the op runs for a tensor on ``device_type`` of ``dtype``: ``"cpu"`` (the C loop),
    ``"triton"`` or ``"reference"`` (a kernel may still decline a layout it does not take; the reference runs then).
    ``ROFORMER_KERNEL=cpu|triton|reference`` forces one (``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``:
    how the tests run the Triton kernel through the whole RoPE API without a GPU)."""
    forced = os.environ.get("ROFORMER_KERNEL", "auto")
    if forced in ("cpu", "triton", "reference"):
        return forced
    if device_type == "cpu" and dtype in (torch.float32, torch.float64) and cpu.available():
        return "cpu"
    if device_type == "cuda" and dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) \
            and triton_rotary.available():
        return "triton"
    return "reference"


def _rotate_into(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, interleaved: bool, conjugate: bool) -> bool:
    """R_m x into ``out`` (which may be x) by the kernel of x's device; False where none took it."""
    kind, compute = implementation(x.device.type, x.dtype), compute_dtype(x.dtype)
    if kind == "reference":
        return False
    kernel = cpu.rotate if kind == "cpu" else triton_rotary.rotate
    return kernel(x, cos.to(compute), sin.to(compute), out, interleaved, -1.0 if conjugate else 1.0)


@torch.library.custom_op("roformer::rotary", mutates_args=())
def rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, conjugate: bool) -> Tensor:
    """R_m x (R_m^T x if ``conjugate``) as a new contiguous tensor."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if _rotate_into(x, cos, sin, out, interleaved, conjugate):
        return out
    return rotary_reference(x, cos, sin, interleaved, conjugate).contiguous()


@rotary.register_fake
def _(x, cos, sin, interleaved, conjugate):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("roformer::rotary_", mutates_args=("x",))
def rotary_(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, conjugate: bool) -> None:
    """R_m x written into x."""
    if not _rotate_into(x, cos, sin, x, interleaved, conjugate):
        x.copy_(rotary_reference(x, cos, sin, interleaved, conjugate))


@rotary_.register_fake
def _(x, cos, sin, interleaved, conjugate):
    return None


@torch.library.custom_op("roformer::rotary_into", mutates_args=("out",))
def rotary_into(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, interleaved: bool, conjugate: bool) -> None:
    """R_m x written into ``out`` (x's shape and dtype; e.g. a slice of a larger output)."""
    if not _rotate_into(x, cos, sin, out, interleaved, conjugate):
        out.copy_(rotary_reference(x, cos, sin, interleaved, conjugate))


@rotary_into.register_fake
def _(x, cos, sin, out, interleaved, conjugate):
    return None


def _setup_context(ctx, inputs, output):
    x, cos, sin, interleaved, conjugate = inputs
    ctx.interleaved, ctx.conjugate = interleaved, conjugate
    ctx.cos_shape, ctx.trig_grad = cos.shape, ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    ctx.save_for_backward(cos, sin, x if ctx.trig_grad else None)


def _backward(ctx, grad: Tensor):
    cos, sin, x = ctx.saved_tensors
    grad_x = rotary(grad.contiguous(), cos, sin, ctx.interleaved, not ctx.conjugate)
    grad_cos = grad_sin = None
    if ctx.trig_grad:  # learnt frequencies: d/dcos = a ga + b gb, d/dsin = a gb - b ga (times -1 if conjugate)
        rot = 2 * cos.shape[-1]
        a, b = _pairs(x[..., :rot].to(cos.dtype), ctx.interleaved)
        ga, gb = _pairs(grad[..., :rot].to(cos.dtype), ctx.interleaved)
        grad_cos = (a * ga + b * gb).sum_to_size(ctx.cos_shape)
        grad_sin = (a * gb - b * ga).sum_to_size(ctx.cos_shape)
        if ctx.conjugate:
            grad_sin = -grad_sin
    return grad_x, grad_cos, grad_sin, None, None


torch.library.register_autograd("roformer::rotary", _backward, setup_context=_setup_context)


class InplaceRotary(torch.autograd.Function):
    """``rotary_`` under autograd: x is rotated in place (marked dirty) and the gradient is rotated back by
    -theta. x must not be a leaf that requires grad, nor needed by the backward of whatever produced it
    (PyTorch's version counter reports the latter at backward time)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, conjugate: bool) -> Tensor:
        rotary_(x, cos, sin, interleaved, conjugate)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved, ctx.conjugate = interleaved, conjugate
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return rotary(grad.contiguous(), cos, sin, ctx.interleaved, not ctx.conjugate), None, None, None, None


class PackedRotary(torch.autograd.Function):
    """The first ``rotated`` heads of a packed ``(..., heads, dim)`` tensor (q and k of a qkv projection) rotated,
    the rest copied, in one pass into a new tensor; the backward does the same to the gradient with -theta."""

    @staticmethod
    def forward(ctx, packed: Tensor, cos: Tensor, sin: Tensor, rotated: int, interleaved: bool) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.rotated, ctx.interleaved = rotated, interleaved
        return _packed(packed, cos, sin, rotated, interleaved, False)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _packed(grad, cos, sin, ctx.rotated, ctx.interleaved, True), None, None, None, None


def _packed(packed: Tensor, cos: Tensor, sin: Tensor, rotated: int, interleaved: bool, conjugate: bool) -> Tensor:
    out = torch.empty(packed.shape, dtype=packed.dtype, device=packed.device)
    out[..., rotated:, :].copy_(packed[..., rotated:, :])
    rotary_into(packed[..., :rotated, :], cos, sin, out[..., :rotated, :], interleaved, conjugate)
    return out
