"""The compiled rotation (roformer.kernels.cpu), both pairings, out of place and in place, against a float64
complex evaluation of Eq. 34 written here; the layouts it accepts, what it declines, and its build cache."""

import os
import shutil
import stat

import pytest
import torch

from roformer.kernels import cpu
from roformer.rope import rotary_cos_sin

HAS_COMPILER = shutil.which(os.environ.get("CC") or "cc") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, sign: float = 1.0):
    """Eq. 34 read as complex multiplication, in float64: pair j (x_2j + i x_2j+1 interleaved, x_j + i x_(j+h)
    half split) times e^(i sign m theta_j)."""
    h, x64 = cos.shape[-1], x.double()
    a, b = (x64[..., 0:2 * h:2], x64[..., 1:2 * h:2]) if interleaved else (x64[..., :h], x64[..., h:2 * h])
    pairs = torch.complex(a, b) * torch.complex(cos.double(), sign * sin.double())
    rotated = torch.stack((pairs.real, pairs.imag), -1).flatten(-2) if interleaved else torch.cat(
        (pairs.real, pairs.imag), -1)
    return torch.cat((rotated, x64[..., 2 * h:]), -1)


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
        ("head dim 80", rand(2, 3, 9, 80), torch.arange(9), 80),
        ("head dim sliced out of a wider tensor", rand(2, 3, 50, 96)[..., 16:80], torch.arange(50), 64),
        ("large (threaded)", rand(4, 8, 256, 64), torch.arange(256), 64),
    ]


@needs_compiler
def test_kernel_is_built_where_a_compiler_exists():
    assert cpu.available()


@needs_compiler
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["R", "R^T"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("name, x, positions, rotary_dim", layouts(), ids=lambda v: v if isinstance(v, str) else "")
def test_kernel_equals_the_complex_rotation(name, x, positions, rotary_dim, dtype, tol, interleaved, sign):
    x = x.to(dtype)
    cos, sin = angles(positions, rotary_dim, dtype)
    expected = reference(x, cos, sin, interleaved, sign)
    out = torch.empty(x.shape, dtype=dtype)
    assert cpu.rotate(x, cos, sin, out, interleaved, sign), name
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    assert torch.equal(out[..., 2 * cos.shape[-1]:], x[..., 2 * cos.shape[-1]:])  # passed through bit for bit
    # in place: the same numbers, written into x itself (strided x included)
    inplace = x.clone()
    if not x.is_contiguous():
        inplace = torch.empty_strided(x.shape, x.stride(), dtype=dtype).copy_(x)
    assert cpu.rotate(inplace, cos, sin, inplace, interleaved, sign)
    assert torch.equal(inplace, out)


@pytest.mark.parametrize(
    "x, cos_shape",
    [
        (torch.randn(2, 8, dtype=torch.float16), (2, 4)),  # half precision: the reference formula, in float32
        (torch.randn(2, 8, dtype=torch.bfloat16), (2, 4)),
        (torch.randn(1, 2, 3, 4, 8), (2, 3, 4)),  # more than 4 dims
        (torch.randn(8, 3).t(), (8, 4)),  # features not contiguous
    ],
)
def test_kernel_declines_what_it_does_not_cover(x, cos_shape):
    cos = torch.randn(cos_shape, dtype=x.dtype)
    out = torch.zeros_like(x)
    assert not cpu.rotate(x, cos, cos, out, False, 1.0)
    assert not out.any()


def test_build_is_cached_and_fails_softly(tmp_path):
    if HAS_COMPILER:
        first = cpu.build(tmp_path / "cache")
        assert first is not None and first.is_file()
        mtime = first.stat().st_mtime_ns
        assert cpu.build(tmp_path / "cache") == first and first.stat().st_mtime_ns == mtime
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary left behind
    assert cpu.build(tmp_path / "none", compiler=str(tmp_path / "no-such-compiler")) is None
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    assert cpu.build(tmp_path / "broken", compiler=str(broken)) is None
