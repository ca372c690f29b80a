"""pytorch-fast-transformers' CPU causal dot product (`CausalDotProduct`), the reference kernel of the linear-
attention benchmark, built without the package's CUDA extensions.

`pip install pytorch-fast-transformers` fails on a CPU-only torch because its setup.py always builds the CUDA
kernels. This module asks pip for the package's source distribution (pip prepares its metadata, for which
torch's CUDA_HOME is set to a placeholder: nothing is compiled then), and JIT-compiles the one C++ file of the
CPU kernel with `torch.utils.cpp_extension.load` into a cache directory. The first call takes about a minute.

    from fast_transformers_cpu import causal_dot_product   # None if it cannot be built here
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.4.0"
CACHE = Path(os.environ.get("ROFORMER_BENCH_CACHE", Path.home() / ".cache" / "roformer-bench"))
SOURCE = f"pytorch-fast-transformers-{VERSION}/fast_transformers/causal_product/causal_product_cpu.cpp"


def _source_file() -> Path:
    target = CACHE / "causal_product_cpu.cpp"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp, "shim")
        shim.mkdir()
        # setup.py calls CUDAExtension, which needs a CUDA_HOME; metadata is all pip prepares for a download
        (shim / "sitecustomize.py").write_text(
            "import torch.utils.cpp_extension as c\nc.CUDA_HOME = c.CUDA_HOME or '/nonexistent-cuda'\n")
        env = {**os.environ, "PYTHONPATH": str(shim)}
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-d", tmp, f"pytorch-fast-transformers=={VERSION}"],
                       check=True, env=env, capture_output=True)
        with tarfile.open(Path(tmp, f"pytorch-fast-transformers-{VERSION}.tar.gz")) as archive:
            target.write_bytes(archive.extractfile(SOURCE).read())
    return target


def _load():
    import torch
    from torch.utils.cpp_extension import load

    module = load("causal_product_cpu", [str(_source_file())], build_directory=str(CACHE),
                  extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)

    class CausalDotProduct(torch.autograd.Function):
        """out_m = sum_{n <= m} (q_m . k_n) v_n with the package's C++ forward and backward kernels."""

        @staticmethod
        def forward(ctx, q, k, v):
            ctx.save_for_backward(q, k, v)
            out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
            module.causal_dot_product(q, k, v, out)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v = ctx.saved_tensors
            gq, gk, gv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
            module.causal_dot_backward(q, k, v, grad.contiguous(), gq, gk, gv)
            return gq, gk, gv

    return CausalDotProduct.apply


try:
    causal_dot_product = _load()
except Exception as error:  # a benchmark reference: report and go on without it
    print(f"fast-transformers CPU kernel unavailable: {error}", file=sys.stderr)
    causal_dot_product = None
