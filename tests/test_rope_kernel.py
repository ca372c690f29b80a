"""The compiled half-split rotation (roformer.rope_kernel): every layout it accepts against a float64 complex
evaluation of Eq. 34, the eager fallback, autograd, the build cache, and the paths it must stay out of."""

import os
import shutil
import stat

import pytest
import torch

from roformer import RotaryEmbedding, apply_rotary, rope_kernel
from roformer.rope import rotary_cos_sin

HAS_COMPILER = shutil.which(os.environ.get("CC") or "cc") is not None


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Eq. 34 read as complex multiplication, in float64: pair j is x_j + i x_(j + h), times e^(i m theta_j)."""
    h = cos.shape[-1]
    x64 = x.double()
    pairs = torch.complex(x64[..., :h], x64[..., h:2 * h]) * torch.complex(cos.double(), sin.double())
    return torch.cat((pairs.real, pairs.imag, x64[..., 2 * h:]), -1)


def angles(positions: torch.Tensor, rotary_dim: int, dtype: torch.dtype):
    cos, sin = rotary_cos_sin(positions, rotary_dim)
    return cos.to(dtype), sin.to(dtype)


def layouts():
    """(name, x, positions for cos/sin, rotary_dim): every input form the attention layers and users pass."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return [
        ("(b, h, s, d) contiguous", rand(2, 3, 50, 64), torch.arange(50), 64),
        ("(b, h, s, d) from a (b, s, h, d) projection", rand(2, 50, 3, 64).transpose(1, 2), torch.arange(50), 64),
        ("seq_dim=-3: (b, s, h, d), cos (s, 1, d/2)", rand(2, 50, 3, 64), torch.arange(50)[:, None], 64),
        ("per-batch positions, cos (b, 1, s, d/2)", rand(2, 3, 50, 64), torch.randint(0, 4000, (2, 1, 50)), 64),
        ("3-D (b, s, d)", rand(4, 33, 16), torch.arange(5, 38), 16),
        ("2-D (s, d)", rand(33, 16), torch.arange(33) * 1000, 16),
        ("1-D (d,)", rand(16), torch.tensor(123456), 16),
        ("partial rotary, 16 of 64", rand(2, 3, 50, 64), torch.arange(50), 16),
        ("odd half, 6 of 10", rand(2, 3, 7, 10), torch.arange(7), 6),
        ("head dim sliced out of a wider tensor", rand(2, 3, 50, 96)[..., 16:80], torch.arange(50), 64),
        ("large (threaded)", rand(4, 8, 256, 64), torch.arange(256), 64),
    ]


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_kernel_is_built_where_a_compiler_exists():
    assert rope_kernel.available()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("name, x, positions, rotary_dim", layouts(), ids=lambda v: v if isinstance(v, str) else "")
def test_kernel_equals_the_complex_rotation(name, x, positions, rotary_dim, dtype, tol):
    x = x.to(dtype)
    cos, sin = angles(positions, rotary_dim, dtype)
    out = rope_kernel.rotate_half_split(x, cos, sin)
    assert out is not None, name
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference(x, cos, sin), rtol=tol, atol=tol)
    assert torch.equal(out[..., 2 * cos.shape[-1]:], x[..., 2 * cos.shape[-1]:])  # passed through bit for bit


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("name, x, positions, rotary_dim", layouts(), ids=lambda v: v if isinstance(v, str) else "")
def test_apply_rotary_uses_the_kernel_and_the_eager_fallback_agrees(name, x, positions, rotary_dim, monkeypatch):
    cos, sin = angles(positions, rotary_dim, torch.float64)
    calls = []
    real = rope_kernel.rotate_half_split
    monkeypatch.setattr("roformer.rope.rotate_half_split", lambda *a: calls.append(out := real(*a)) or out)
    fused = apply_rotary(x, cos, sin, interleaved=False)
    assert calls and calls[0] is fused, "the half split did not go through the kernel"
    monkeypatch.setattr(rope_kernel, "_library", lambda: None)  # as on a machine without a compiler
    eager = apply_rotary(x, cos, sin, interleaved=False)
    assert calls[-1] is None
    torch.testing.assert_close(eager, reference(x, cos, sin), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("rotary_dim", [8, 6])
def test_gradcheck_through_the_kernel(rotary_dim):
    x = torch.randn(2, 5, 2, 8, dtype=torch.float64).transpose(1, 2).requires_grad_()  # strided rows
    cos, sin = angles(torch.arange(3, 8), rotary_dim, torch.float64)
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, cos, sin, False), (x,))
    assert torch.autograd.gradgradcheck(lambda t: apply_rotary(t, cos, sin, False), (x,))


@pytest.mark.parametrize(
    "x, cos_shape",
    [
        (torch.randn(2, 8, dtype=torch.float16), (2, 4)),  # half precision: eager, rotated in float32
        (torch.randn(2, 8, dtype=torch.bfloat16), (2, 4)),
        (torch.randn(1, 2, 3, 4, 8), (2, 3, 4)),  # more than 4 dims
        (torch.randn(3, 8), (2, 3, 4)),  # cos would enlarge x: broadcasting is eager's
        (torch.randn(8, 3).t(), (8, 4)),  # features not contiguous
        (torch.randn(0, 8), (0, 4)),
    ],
)
def test_kernel_declines_what_it_does_not_cover(x, cos_shape):
    cos = torch.randn(cos_shape, dtype=x.dtype)
    assert rope_kernel.rotate_half_split(x, cos, cos) is None


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_kernel_stays_out_of_compile_and_export():
    """Under torch.compile and torch.export the eager formula is traced (the kernel is opaque to them)."""
    rope = RotaryEmbedding(16, interleaved=False)
    q, k = torch.randn(2, 1, 2, 300, 16).unbind(0)
    compiled = torch.compile(lambda q, k: rope(q, k), backend="eager", fullgraph=True)
    for got, want in zip(compiled(q, k), rope(q, k), strict=True):
        torch.testing.assert_close(got, want)

    class Rotate(torch.nn.Module):
        def forward(self, x):
            return rope.rotate(x)

    exported = torch.export.export(Rotate(), (q,), dynamic_shapes=({2: torch.export.Dim("seq", max=4096)},))
    longer = torch.randn(1, 2, 900, 16)
    torch.testing.assert_close(exported.module()(longer), rope.rotate(longer))


def test_build_is_cached_and_fails_softly(tmp_path):
    if HAS_COMPILER:
        first = rope_kernel.build(tmp_path / "cache")
        assert first is not None and first.is_file()
        mtime = first.stat().st_mtime_ns
        assert rope_kernel.build(tmp_path / "cache") == first and first.stat().st_mtime_ns == mtime
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary left behind
    assert rope_kernel.build(tmp_path / "none", compiler=str(tmp_path / "no-such-compiler")) is None
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    assert rope_kernel.build(tmp_path / "broken", compiler=str(broken)) is None
