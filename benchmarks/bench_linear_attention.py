"""Causal attention against sequence length, forward and forward + backward, all in one run: our linear attention
with RoPE as Eq. 19 (elu+1 features, chunked causal sums with their own backward) against

- pytorch-fast-transformers' C++ CPU kernel `CausalDotProduct` (numerator) with a cumsum denominator, i.e. its
  CausalLinearAttention, built by `fast_transformers_cpu.py` (the package's pip install needs CUDA);
- performer-pytorch's `causal_linear_attention` (which calls that kernel) and its pure-PyTorch
  `causal_linear_attention_noncuda` (`pip install -e ".[bench]"`);
- softmax attention: PyTorch's fused SDPA, and the textbook form that materialises the N x N scores.

All get the same q, k, v (batch 1, fp32) and the same elu+1 features; ours also rotates them (Eq. 19), which the
references cannot do, so its time includes work theirs does not. Ratios are reference time / our time (> 1: we
are faster). Each point runs in a fresh subprocess; peak is that process's maximum resident set size minus its
size just before the timed calls.

    python benchmarks/bench_linear_attention.py                # N = 1k, 4k, 16k
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OURS = "ours: linear + RoPE (Eq. 19)"
METHODS = (OURS, "fast-transformers CausalDotProduct", "performer-pytorch (with that kernel)",
           "performer-pytorch (pure PyTorch)", "softmax SDPA", "softmax explicit N x N")


def _performer_with_kernel(kernel):
    """performer-pytorch's causal_linear_attention imports `fast_transformers.causal_product.CausalDotProduct`:
    hand it the kernel built here under that name."""
    import types

    package, module = types.ModuleType("fast_transformers"), types.ModuleType("fast_transformers.causal_product")
    module.CausalDotProduct = types.SimpleNamespace(apply=kernel)
    package.causal_product = module
    sys.modules.update({"fast_transformers": package, "fast_transformers.causal_product": module})
    from performer_pytorch.performer_pytorch import causal_linear_attention
    return causal_linear_attention


def attention_fn(method: str, dim: int):
    import torch
    import torch.nn.functional as F

    from roformer import RotaryEmbedding
    from roformer.linear_attention import linear_attention

    rope = RotaryEmbedding(dim)
    elu = lambda x: F.elu(x) + 1  # noqa: E731
    if method == OURS:
        return lambda q, k, v: linear_attention(q, k, v, "elu", causal=True, rope=rope)
    if method == "fast-transformers CausalDotProduct":
        sys.path.insert(0, str(Path(__file__).parent))
        from fast_transformers_cpu import causal_dot_product
        if causal_dot_product is None:
            return None

        def fast_transformers(q, k, v):
            pq, pk = elu(q), elu(k)
            return causal_dot_product(pq, pk, v) / (pq * pk.cumsum(-2)).sum(-1, keepdim=True)
        return fast_transformers
    if method.startswith("performer-pytorch"):
        try:
            if method.endswith("(pure PyTorch)"):
                from performer_pytorch.performer_pytorch import causal_linear_attention_noncuda as performer
            else:
                sys.path.insert(0, str(Path(__file__).parent))
                from fast_transformers_cpu import causal_dot_product
                if causal_dot_product is None:
                    return None
                performer = _performer_with_kernel(causal_dot_product)
        except ImportError:
            return None
        return lambda q, k, v: performer(elu(q), elu(k), v)
    if method == "softmax SDPA":
        return lambda q, k, v: F.scaled_dot_product_attention(*rope(q, k), v, is_causal=True)

    def explicit(q, k, v):
        qr, kr = rope(q, k)
        n = q.shape[2]
        scores = (qr @ kr.transpose(-1, -2) / dim ** 0.5).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1),
                                                                       float("-inf"))
        return scores.softmax(-1) @ v
    return explicit


def child(method: str, n: int, heads: int, dim: int, backward: bool, repeats: int) -> dict | None:
    import torch

    fn = attention_fn(method, dim)
    if fn is None:
        return None
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, requires_grad=backward) for _ in range(3))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.set_grad_enabled(backward):
        for _ in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            out = fn(q, k, v)
            if backward:
                out.sum().backward()
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times[1:]), "peak_mib": (peak - base) / 1024}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        cpu += ", " + ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2")
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {torch.get_num_threads()} threads; torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-explicit", type=int, default=8192, help="longest N for the explicit N x N form")
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.heads, args.dim, args.backward,
                               args.repeats)))
        return

    import torch  # noqa: F401  (only for the machine line)

    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"causal attention, batch 1, {args.heads} heads, head dim {args.dim}, fp32; median of {args.repeats} "
          f"after a warm-up; peak = extra resident memory of a fresh process\nmachine: {machine()}\n")
    for backward in (False, True):
        results = {}
        for n in lengths:
            for method in METHODS:
                if method == "softmax explicit N x N" and n > args.max_explicit:
                    continue
                cmd = [sys.executable, __file__, "--child", method, str(n), "--heads", str(args.heads), "--dim",
                       str(args.dim), "--repeats", str(args.repeats)] + (["--backward"] if backward else [])
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode == 0 and out.stdout.strip().splitlines()[-1] != "null":
                    results[(method, n)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"### {'forward + backward' if backward else 'forward'}\n")
        print("| method | " + " | ".join(f"N={n}: time, peak, time / ours" for n in lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for method in METHODS:
            cells = []
            for n in lengths:
                r, ours = results.get((method, n)), results.get((OURS, n))
                cells.append(f"{r['seconds'] * 1e3:.1f} ms, {r['peak_mib']:.0f} MiB, "
                             f"{r['seconds'] / ours['seconds']:.2f}x" if r and ours else "not run")
            print(f"| {method} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
