"""The rotation of Eq. 34 as one compiled C loop on CPU, for both pairings, out of place or in place.

Eager PyTorch has no single fused operation for either pairing at full speed: the half split (pairs
(x_j, x_(j + d/2))) costs at least three passes over q and k, and the interleaved pairing (pairs (x_(2j),
x_(2j+1))) is one complex multiply only for tensors whose layout can be viewed as complex. The loop below
makes one pass whatever the layout, reading each row of x once and writing each row of the output once:

    half split:   out_j  = x_j  cos(m theta_j) - x_(j+d/2) sin(m theta_j),  out_(j+d/2) = x_(j+d/2) cos + x_j sin
    interleaved:  out_2j = x_2j cos(m theta_j) - x_(2j+1)  sin(m theta_j),  out_(2j+1)  = x_(2j+1)  cos + x_2j sin

for j = 0 .. rotary_dim/2 - 1; features past rotary_dim are copied (partial rotary). Each pair is read before
it is written, so the output may be the input itself (in-place rotation). ``sign = -1`` rotates by -theta
(the inverse rotation R_m^T, which is also the backward pass).

It is plain C (float32 and float64, OpenMP over rows), built on first use with the system C compiler
(``$CC``, else ``cc``) in well under a second, cached under ``$ROFORMER_CACHE`` (default
``~/.cache/roformer``) by the hash of its source, flags and CPU, and called through ``ctypes``: torch's own
C++ extension builder would compile the torch headers, a minute per build, for a loop that needs none of
them. Where no compiler is found or the build fails, :func:`rotate` returns ``False`` and the caller
(:mod:`roformer.kernels.rotary`) uses its reference formula; ``ROFORMER_CPU_KERNEL=0`` turns the kernel off.
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

from ..io import atomic_write, cache_root

__all__ = ["rotate", "available", "build"]

_SOURCE = r"""
#include <stdint.h>

/* One row: pair j of x is (x[j], x[j + half]) (half split) or (x[2j], x[2j + 1]) (interleaved); it is read
   before it is written, so o may be x. */
#define ROTATE_ROW(NAME, T, FIRST, SECOND)                                                                 \
static inline void NAME(const T *xr, const T *cr, const T *sr, T *o, int64_t half, T sign) {                \
    _Pragma("omp simd")                                                                                     \
    for (int64_t j = 0; j < half; j++) {                                                                    \
        const T a = xr[FIRST], b = xr[SECOND], c = cr[j], s = sign * sr[j];                                 \
        o[FIRST] = a * c - b * s;                                                                           \
        o[SECOND] = b * c + a * s;                                                                          \
    }                                                                                                       \
}

/* x: (n0, n1, n2, d) with row strides xs*, unit stride along d; c, s: cos/sin broadcast to (n0, n1, n2, half)
   with row strides cs*, unit stride along half; out: (n0, n1, n2, d) with row strides os* (out == x in place).
   Features past 2 * half are copied through unless out is x. Threads share out the (n0, n1) blocks of rows;
   the common head dims (32, 64, 128) get a row loop of constant length, which the compiler unrolls. */
#define ROTATE(NAME, ROW, T)                                                                               \
void NAME(const T *x, const T *c, const T *s, T *out, int64_t n0, int64_t n1, int64_t n2, int64_t d,        \
          int64_t half, int64_t xs0, int64_t xs1, int64_t xs2, int64_t cs0, int64_t cs1, int64_t cs2,       \
          int64_t os0, int64_t os1, int64_t os2, T sign, int threads) {                                    \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads) if(threads > 1)")          \
    for (int64_t i0 = 0; i0 < n0; i0++)                                                                     \
        for (int64_t i1 = 0; i1 < n1; i1++)                                                                 \
            for (int64_t i2 = 0; i2 < n2; i2++) {                                                           \
                const T *xr = x + i0 * xs0 + i1 * xs1 + i2 * xs2;                                           \
                const T *cr = c + i0 * cs0 + i1 * cs1 + i2 * cs2;                                           \
                const T *sr = s + i0 * cs0 + i1 * cs1 + i2 * cs2;                                           \
                T *o = out + i0 * os0 + i1 * os1 + i2 * os2;                                                \
                switch (half) {                                                                             \
                    case 16: ROW(xr, cr, sr, o, 16, sign); break;                                           \
                    case 32: ROW(xr, cr, sr, o, 32, sign); break;                                           \
                    case 64: ROW(xr, cr, sr, o, 64, sign); break;                                           \
                    default: ROW(xr, cr, sr, o, half, sign);                                                \
                }                                                                                           \
                if (o != xr)                                                                                \
                    for (int64_t j = 2 * half; j < d; j++)                                                  \
                        o[j] = xr[j];                                                                       \
            }                                                                                               \
}

ROTATE_ROW(half_row_f32, float, j, j + half)
ROTATE_ROW(half_row_f64, double, j, j + half)
ROTATE_ROW(pair_row_f32, float, 2 * j, 2 * j + 1)
ROTATE_ROW(pair_row_f64, double, 2 * j, 2 * j + 1)
ROTATE(rotate_half_f32, half_row_f32, float)
ROTATE(rotate_half_f64, half_row_f64, double)
ROTATE(rotate_pairs_f32, pair_row_f32, float)
ROTATE(rotate_pairs_f64, pair_row_f64, double)
"""

_FLAGS = ("-O3", "-fPIC", "-shared", "-std=c99")
# tried in this order until one builds: the host's vector units (AVX-512 where present: 1.2x faster on one
# thread) with OpenMP threads, then portable code with threads, then portable single-threaded code
_VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-fopenmp-simd",), ())
# below this many elements, starting threads costs more than the loop
_PARALLEL_MIN_ELEMENTS = 1 << 15
_KERNELS = {(interleaved, dtype): f"rotate_{'pairs' if interleaved else 'half'}_{suffix}"
            for interleaved in (True, False) for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64"))}


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
        library = cache_dir / f"rotary-{key}.so"
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
    pointers, sizes = [ctypes.c_void_p] * 4, [ctypes.c_int64] * 14  # x, cos, sin, out; shape, half, strides
    for (_, dtype), name in _KERNELS.items():
        getattr(library, name).argtypes = [*pointers, *sizes,
                                           ctypes.c_float if dtype == torch.float32 else ctypes.c_double,
                                           ctypes.c_int]
        getattr(library, name).restype = None
    return library


def available() -> bool:
    """Whether the compiled kernel is in use on this machine (built, loaded and not turned off)."""
    return _library() is not None


def rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, interleaved: bool, sign: float) -> bool:
    """Write R_m x (``sign=-1``: R_m^T x) into ``out`` (a tensor of x's shape and dtype, or x itself) and return
    True; return False, touching nothing, where the kernel does not apply: no library, not a CPU tensor,
    a dtype other than float32/float64, more than 4 dims, or a feature axis that is not unit-stride.

    ``cos`` and ``sin`` (x's dtype) broadcast against ``x[..., :cos.shape[-1]]`` without enlarging it."""
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and 1 <= x.dim() <= 4
            and x.stride(-1) == 1 and out.stride(-1) == 1 and cos.dtype == sin.dtype == x.dtype):
        return False
    library = _library()
    if library is None:
        return False
    if x.numel() == 0:
        return True
    half = cos.shape[-1]
    lead = (1,) * (4 - x.dim())  # viewed as (n0, n1, n2, d) with leading dims of size 1
    c, s = cos.expand(*x.shape[:-1], half), sin.expand(*x.shape[:-1], half)
    if c.stride(-1) != 1 or s.stride() != c.stride():
        c, s = c.contiguous(), s.contiguous()
    x4, c4, o4 = (t.view(*lead, *t.shape) if lead else t for t in (x, c, out))
    kernel = getattr(library, _KERNELS[interleaved, x.dtype])
    threads = torch.get_num_threads() if x.numel() >= _PARALLEL_MIN_ELEMENTS else 1
    kernel(x4.data_ptr(), c4.data_ptr(), s.data_ptr(), o4.data_ptr(), *x4.shape, half, *x4.stride()[:3],
           *c4.stride()[:3], *o4.stride()[:3], sign, threads)
    return True
