"""A fused CPU kernel for the half-split rotation (Eq. 34 with the pairs (x_i, x_(i + d/2))).

Eager PyTorch has one fused operation for the interleaved pairing (a complex multiply, see
:func:`roformer.rope._rotate`) but none for the half split: the two features of a pair lie d/2 apart, so
``x1 cos - x2 sin, x2 cos + x1 sin`` costs at least three passes over q and k (about 3-5x a copy). The loop
below makes one pass, reading each row of x once and writing each row of the output once:

    out_j       = x_j cos(m theta_j) - x_(j+d/2) sin(m theta_j)
    out_(j+d/2) = x_(j+d/2) cos(m theta_j) + x_j sin(m theta_j)        j = 1 .. rotary_dim/2

It is plain C (float32 and float64, OpenMP over rows), built on first use with the system C compiler
(``$CC``, else ``cc``) in well under a second, cached under ``$ROFORMER_CACHE`` (default
``~/.cache/roformer``) by the hash of its source and flags, and called through ``ctypes``: torch's own
C++ extension builder would compile the torch headers, a minute per build, for a loop that needs none of
them. Where no compiler is found or the build fails, :func:`rotate_half_split` returns ``None`` and the
caller keeps its eager path; so do CUDA/MPS tensors, half precision, tracing and compiling (where
inductor fuses the eager formula itself). ``ROFORMER_CPU_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch
from torch import Tensor

from .io import atomic_write, cache_root

__all__ = ["rotate_half_split", "available"]

_SOURCE = r"""
#include <stdint.h>

/* One row: the pairs (j, j + half) of x rotated by cos c_j, sin s_j into o. */
#define ROTATE_ROW(NAME, T)                                                                                \
static inline void NAME(const T *restrict xr, const T *restrict cr, const T *restrict sr, T *restrict o,    \
                        int64_t half) {                                                                     \
    _Pragma("omp simd")                                                                                     \
    for (int64_t j = 0; j < half; j++) {                                                                    \
        const T a = xr[j], b = xr[j + half];                                                                \
        o[j] = a * cr[j] - b * sr[j];                                                                       \
        o[j + half] = b * cr[j] + a * sr[j];                                                                \
    }                                                                                                       \
}

/* x: (n0, n1, n2, d) with row strides xs*, unit stride along d; c, s: cos/sin broadcast to (n0, n1, n2, half)
   with row strides cs*, unit stride along half; out: contiguous (n0, n1, n2, d). Features past 2 * half are
   copied through (partial rotary). Threads share out the (n0, n1) blocks of rows; the common head dims
   (32, 64, 128) get a row loop of constant length, which the compiler unrolls. */
#define ROTATE_HALF_SPLIT(NAME, ROW, T)                                                                    \
void NAME(const T *x, const T *c, const T *s, T *out, int64_t n0, int64_t n1, int64_t n2, int64_t d,        \
          int64_t half, int64_t xs0, int64_t xs1, int64_t xs2, int64_t cs0, int64_t cs1, int64_t cs2,       \
          int threads) {                                                                                   \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads) if(threads > 1)")          \
    for (int64_t i0 = 0; i0 < n0; i0++)                                                                     \
        for (int64_t i1 = 0; i1 < n1; i1++)                                                                 \
            for (int64_t i2 = 0; i2 < n2; i2++) {                                                           \
                const T *xr = x + i0 * xs0 + i1 * xs1 + i2 * xs2;                                           \
                const T *cr = c + i0 * cs0 + i1 * cs1 + i2 * cs2;                                           \
                const T *sr = s + i0 * cs0 + i1 * cs1 + i2 * cs2;                                           \
                T *o = out + ((i0 * n1 + i1) * n2 + i2) * d;                                                \
                switch (half) {                                                                             \
                    case 16: ROW(xr, cr, sr, o, 16); break;                                                 \
                    case 32: ROW(xr, cr, sr, o, 32); break;                                                 \
                    case 64: ROW(xr, cr, sr, o, 64); break;                                                 \
                    default: ROW(xr, cr, sr, o, half);                                                      \
                }                                                                                           \
                for (int64_t j = 2 * half; j < d; j++)                                                      \
                    o[j] = xr[j];                                                                           \
            }                                                                                               \
}

ROTATE_ROW(rotate_row_f32, float)
ROTATE_ROW(rotate_row_f64, double)
ROTATE_HALF_SPLIT(rotate_half_split_f32, rotate_row_f32, float)
ROTATE_HALF_SPLIT(rotate_half_split_f64, rotate_row_f64, double)
"""

_FLAGS = ("-O3", "-fPIC", "-shared", "-std=c99")
# tried in this order until one builds: the host's vector units (AVX-512 where present: 1.2x faster on one
# thread) with OpenMP threads, then portable code with threads, then portable single-threaded code
_VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ())
# below this many elements, starting threads costs more than the loop
_PARALLEL_MIN_ELEMENTS = 1 << 15


def _host() -> str:
    """What a -march=native build depends on: the CPU's model and feature flags (a cache directory may be
    shared by machines with different CPUs, e.g. a home directory on a cluster)."""
    host = [platform.machine(), platform.system()]
    try:
        host += [line for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        host.append(platform.processor())
    return "\n".join(host)


def build(cache_dir: Path, compiler: str | None = None) -> Path | None:
    """Compile the kernel into ``cache_dir`` (or find it there) and return the library's path, or ``None``
    if no compiler is found or it fails on every variant of flags."""
    compiler = shutil.which(compiler or os.environ.get("CC") or "cc")
    if compiler is None:
        return None
    host = _host()
    for variant in _VARIANTS:
        flags = _FLAGS + variant
        key = hashlib.sha256("\0".join((_SOURCE, compiler, host, *flags)).encode()).hexdigest()[:16]
        library = cache_dir / f"rotate_half_split-{key}.so"
        if library.is_file():
            return library

        def compile_to(path: str, flags=flags) -> None:  # the source on stdin, no temporary source file
            subprocess.run([compiler, *flags, "-x", "c", "-", "-o", path], input=_SOURCE.encode(),
                           capture_output=True, timeout=120, check=True)

        try:  # atomic: concurrent processes never load a half-written library
            atomic_write(library, compile_to)
            return library
        except subprocess.CalledProcessError:
            continue  # these flags are not supported here: the next, more portable variant
        except (OSError, subprocess.SubprocessError):
            return None
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("ROFORMER_CPU_KERNEL", "1") == "0" or platform.system() == "Windows":
        return None
    path = build(cache_root() / "kernels")
    if path is None:
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError:
        return None
    pointers, sizes = [ctypes.c_void_p] * 4, [ctypes.c_int64] * 11  # x, cos, sin, out; shape, half, strides
    for name in ("rotate_half_split_f32", "rotate_half_split_f64"):
        getattr(library, name).argtypes = [*pointers, *sizes, ctypes.c_int]
        getattr(library, name).restype = None
    return library


def available() -> bool:
    """Whether the compiled kernel is in use on this machine (built, loaded and not turned off)."""
    return _library() is not None


def _eligible(x: Tensor, cos: Tensor, sin: Tensor) -> bool:
    return (
        type(x) is Tensor  # not a FakeTensor or another subclass without real storage
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and cos.dtype == sin.dtype == x.dtype
        and 1 <= x.dim() <= 4
        and x.numel() > 0
        and x.stride(-1) == 1
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
    )


def rotate_half_split(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor | None:
    """R_m x in the half-split pairing for the first ``2 * cos.shape[-1]`` features of ``x`` (the rest are
    copied), as a new contiguous tensor; ``None`` where the kernel does not apply (see the module docstring).

    ``cos`` and ``sin`` have the dtype of ``x`` and broadcast against ``x[..., :cos.shape[-1]]`` without
    enlarging it."""
    if not _eligible(x, cos, sin):
        return None
    half = cos.shape[-1]
    rows = x.shape[:-1]
    table = cos.shape[:-1]  # must broadcast into x's rows without enlarging them (else eager broadcasts)
    if len(table) > len(rows) or any(t not in (1, r) for t, r in zip(table, rows[len(rows) - len(table):],
                                                                     strict=True)):
        return None
    library = _library()
    if library is None:
        return None
    lead = (1,) * (4 - x.dim())  # viewed as (n0, n1, n2, d) with leading dims of size 1
    c, s = cos.expand(*lead, *rows, half), sin.expand(*lead, *rows, half)
    if c.stride(-1) != 1 or s.stride() != c.stride():
        c, s = c.contiguous(), s.contiguous()
    x4 = x.view(*lead, *x.shape) if lead else x
    out = torch.empty(x.shape, dtype=x.dtype)
    kernel = library.rotate_half_split_f32 if x.dtype == torch.float32 else library.rotate_half_split_f64
    threads = torch.get_num_threads() if x.numel() >= _PARALLEL_MIN_ELEMENTS else 1
    kernel(x4.data_ptr(), c.data_ptr(), s.data_ptr(), out.data_ptr(), *x4.shape, half, *x4.stride()[:3],
           *c.stride()[:3], threads)
    return out
