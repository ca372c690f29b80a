"""The Triton kernel of roformer::rotary against a dense float64 evaluation of Eq. 34 (pairs as complex numbers
times e^(i m theta)), for both pairings, head dims 32 / 64 / 80 / 128 / 256, rotary fractions 1 and 0.5, odd
row counts, both signs, in place and into a slice, broadcast and per-token cos/sin, float32 / bfloat16 /
float16 / float64; then the whole RoPE API (offsets, position ids, cu_seqlens, packed qkv with GQA, in place,
the backward) run through the kernel, against the same API on the reference formula.

Without a GPU the kernel runs on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set here before the
kernel is built); with one, on CUDA. Which implementation a CUDA tensor gets is tested without a GPU."""

import pytest
import torch

from roformer import RotaryEmbedding
from roformer.kernels import rotary as op
from roformer.kernels import triton_rotary

triton = pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Triton's interpreter for these tests only (the kernel, built on first use, is built interpreted)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-6), torch.bfloat16: (1.6e-2, 1e-2),
             torch.float16: (2e-3, 2e-3)}


def dense(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, sign: float) -> torch.Tensor:
    """Eq. 34 in float64 by complex multiplication: pair (a, b) -> (a + ib) e^(i sign m theta)."""
    half = cos.shape[-1]
    x64 = x.double()
    rot = x64[..., : 2 * half]
    a, b = (rot[..., 0::2], rot[..., 1::2]) if interleaved else rot.chunk(2, dim=-1)
    z = torch.complex(a, b) * torch.complex(cos.double(), sign * sin.double())
    out = torch.stack((z.real, z.imag), -1).flatten(-2) if interleaved else torch.cat((z.real, z.imag), -1)
    return torch.cat((out, x64[..., 2 * half:]), -1)


def angles(positions: torch.Tensor, half: int):
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    m = positions.double()[..., None] * theta
    return m.cos(), m.sin()


def check(got, x, cos, sin, interleaved, sign):
    rtol, atol = TOLERANCE[x.dtype]
    expected = dense(x.cpu(), cos.cpu(), sin.cpu(), interleaved, sign)
    torch.testing.assert_close(got.cpu().double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 128, 256])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_kernel_equals_eq34_for_every_head_dim_and_fraction(interleaved, head_dim, fraction):
    g = torch.Generator().manual_seed(head_dim)
    half = int(head_dim * fraction) // 2
    x = torch.randn(2, 3, 7, head_dim, generator=g).to(DEVICE)  # 42 rows: not a multiple of any block
    cos, sin = angles(torch.arange(7), half)  # (seq, half): broadcast over batch and heads
    for sign in (1.0, -1.0):
        out = torch.empty_like(x)
        assert triton_rotary.rotate(x, cos.float().to(DEVICE), sin.float().to(DEVICE), out, interleaved, sign)
        check(out, x, cos, sin, interleaved, sign)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("interleaved", [True, False])
def test_dtypes_are_computed_in_float32_and_rounded_once(dtype, interleaved):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 13, 2, 64, generator=g) * 4).to(dtype).to(DEVICE)  # (batch, seq, heads, dim)
    positions = torch.randint(0, 5000, (3, 13), generator=g)  # per-token positions, as position_ids give
    cos, sin = angles(positions, 32)
    compute = op.compute_dtype(dtype)
    out = torch.empty_like(x)
    trig = (cos[:, :, None].to(compute).to(DEVICE), sin[:, :, None].to(compute).to(DEVICE))
    assert triton_rotary.rotate(x, *trig, out, interleaved, 1.0)
    assert out.dtype == dtype
    check(out, x, cos[:, :, None], sin[:, :, None], interleaved, 1.0)


@pytest.mark.parametrize("interleaved", [True, False])
def test_in_place_and_into_a_slice(interleaved):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 9, 64, generator=g).to(DEVICE)
    cos, sin = angles(torch.arange(9) + 100, 16)  # rotary fraction 0.5: features 32.. pass through
    trig = (cos.float().to(DEVICE), sin.float().to(DEVICE))
    y = x.clone()
    assert triton_rotary.rotate(y, *trig, y, interleaved, 1.0)
    check(y, x, cos, sin, interleaved, 1.0)
    packed = torch.zeros(2, 9, 6, 64, device=DEVICE)  # rotate into heads 1..4 of a larger buffer
    view = x.transpose(1, 2)  # (batch, seq, heads, dim), not contiguous
    assert triton_rotary.rotate(view, cos[:, None].float().to(DEVICE), sin[:, None].float().to(DEVICE),
                                packed[:, :, 1:5], interleaved, -1.0)
    check(packed[:, :, 1:5], view, cos[:, None], sin[:, None], interleaved, -1.0)
    assert packed[:, :, 0].abs().sum() == 0 and packed[:, :, 5].abs().sum() == 0


def test_what_the_kernel_declines():
    cos, sin = angles(torch.arange(5), 4)
    strided = torch.randn(2, 5, 16, device=DEVICE)[..., ::2]  # a feature axis with a stride
    assert not triton_rotary.rotate(strided, cos.float().to(DEVICE), sin.float().to(DEVICE),
                                    torch.empty(2, 5, 8, device=DEVICE), True, 1.0)
    overlapping = torch.randn(2, 5, 9, device=DEVICE)  # out shifted by one feature over x: would race
    assert not triton_rotary.rotate(overlapping[..., :8], cos.float().to(DEVICE), sin.float().to(DEVICE),
                                    overlapping[..., 1:], True, 1.0)
    integers = torch.randint(0, 5, (2, 5, 8), device=DEVICE)
    assert not triton_rotary.rotate(integers, cos, sin, integers.clone(), True, 1.0)


def test_which_implementation_a_tensor_gets(monkeypatch):
    monkeypatch.delenv("ROFORMER_KERNEL", raising=False)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        assert op.implementation("cuda", dtype) == "triton"  # triton imports here
    assert op.implementation("cuda", torch.int64) == "reference"
    assert op.implementation("cpu", torch.bfloat16) == "reference"
    monkeypatch.setenv("ROFORMER_TRITON", "0")
    triton_rotary.available.cache_clear()
    try:
        assert op.implementation("cuda", torch.float32) == "reference"
    finally:
        monkeypatch.delenv("ROFORMER_TRITON")
        triton_rotary.available.cache_clear()
    monkeypatch.setenv("ROFORMER_KERNEL", "reference")
    assert op.implementation("cpu", torch.float32) == "reference"


@pytest.fixture
def through_triton(monkeypatch):
    """The RoPE API with the op's kernel forced to Triton (interpreted on CPU), and the same on the reference;
    every rotation of the first run must have been the kernel's (none declined to the reference)."""
    calls = []
    kernel = triton_rotary.rotate
    monkeypatch.setattr(triton_rotary, "rotate", lambda *a: calls.append(kernel(*a)) or calls[-1])

    def run(fn):
        calls.clear()
        monkeypatch.setenv("ROFORMER_KERNEL", "triton")
        got = fn()
        assert calls and all(calls), f"the kernel ran {sum(calls)} of {len(calls)} rotations"
        monkeypatch.setenv("ROFORMER_KERNEL", "reference")
        return got, fn()
    return run


@pytest.mark.parametrize("interleaved", [True, False])
def test_every_position_form_of_the_api_through_the_kernel(through_triton, interleaved):
    g = torch.Generator().manual_seed(3)
    rope = RotaryEmbedding(64, interleaved=interleaved)
    q, k = torch.randn(3, 4, 11, 64, generator=g), torch.randn(3, 2, 11, 64, generator=g)  # GQA
    starts = torch.tensor([0, 7, 300])
    positions = torch.randint(0, 2000, (3, 11), generator=g)
    cu = torch.tensor([0, 5, 12, 20], dtype=torch.int32)
    tq, tk = torch.randn(20, 4, 64, generator=g), torch.randn(20, 2, 64, generator=g)
    qkv = torch.randn(2, 9, 3, 4, 64, generator=g)
    cases = {
        "default": lambda: rope(q, k),
        "int offset": lambda: rope(q, k, offset=17),
        "(batch,) offsets": lambda: rope(q, k, offset=starts),
        "position_ids": lambda: rope(q, k, position_ids=positions),
        "cu_seqlens": lambda: rope(tq, tk, cu_seqlens=cu),
        "packed qkv": lambda: (rope.rotate_qkv(qkv),),
        "in place": lambda: rope(q.clone(), k.clone(), offset=starts, inplace=True),
        "inverse": lambda: (rope.rotate(q, offset=3, inverse=True),),
    }
    for name, fn in cases.items():
        got, expected = through_triton(fn)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("interleaved", [True, False])
def test_the_backward_through_the_kernel(through_triton, interleaved):
    g = torch.Generator().manual_seed(4)
    rope = RotaryEmbedding(32, interleaved=interleaved, scaling={"rope_type": "default", "partial_rotary_factor": .5})
    q0, k0, w = torch.randn(2, 2, 6, 32, generator=g), torch.randn(2, 2, 6, 32, generator=g), torch.randn(2, 2, 6, 32)

    def grads():
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        rq, rk = rope(q, k, offset=torch.tensor([3, 40]))
        ((rq * w).sum() + (rk * w * w).sum()).backward()
        return q.grad, k.grad

    got, expected = through_triton(grads)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
