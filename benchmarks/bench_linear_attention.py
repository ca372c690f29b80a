"""Time and peak memory of causal attention against sequence length: softmax (PyTorch's fused SDPA, and the
textbook form that materialises the N x N scores) against linear attention with RoPE as Eq. 19 (elu+1
features, chunked prefix sums), all in one run.

    python benchmarks/bench_linear_attention.py                 # N = 1k .. 16k, forward
    python benchmarks/bench_linear_attention.py --backward      # forward + backward

Each point runs in a fresh subprocess; peak memory is that process's maximum resident set size minus its
size just before the attention call, so one point cannot inherit another's high-water mark.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("softmax (SDPA)", "softmax (explicit N x N)", "linear + RoPE (Eq. 19)")


def child(method: str, n: int, heads: int, dim: int, backward: bool, repeats: int) -> dict:
    import torch

    from roformer import RotaryEmbedding
    from roformer.linear_attention import linear_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, requires_grad=backward) for _ in range(3))
    rope = RotaryEmbedding(dim)

    def run():
        if method == "softmax (SDPA)":
            qr, kr = rope(q, k)
            out = torch.nn.functional.scaled_dot_product_attention(qr, kr, v, is_causal=True)
        elif method == "softmax (explicit N x N)":
            qr, kr = rope(q, k)
            scores = qr @ kr.transpose(-1, -2) / dim ** 0.5
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            out = scores.softmax(-1) @ v
        else:
            out = linear_attention(q, k, v, "elu", causal=True, rope=rope, chunk_size=128)
        if backward:
            out.sum().backward()
        return out

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.set_grad_enabled(backward):
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times), "peak_mib": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-explicit", type=int, default=8192, help="longest N for the explicit N x N form")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.heads, args.dim, args.backward,
                               args.repeats)))
        return

    lengths = [int(x) for x in args.lengths.split(",")]
    mode = "forward + backward" if args.backward else "forward"
    print(f"causal attention, batch 1, {args.heads} heads, head dim {args.dim}, {mode}; "
          f"median of {args.repeats}; peak = extra resident memory of a fresh process\n")
    results = {}
    for n in lengths:
        for method in METHODS:
            if method.startswith("softmax (explicit") and n > args.max_explicit:
                continue
            cmd = [sys.executable, __file__, "--child", method, str(n), "--heads", str(args.heads), "--dim",
                   str(args.dim), "--repeats", str(args.repeats)] + (["--backward"] if args.backward else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[(method, n)] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| N | " + " | ".join(f"{m}: time, peak" for m in METHODS) + " | SDPA time / linear time |")
    print("|---|" + "---|" * (len(METHODS) + 1))
    for n in lengths:
        cells = []
        for m in METHODS:
            r = results.get((m, n))
            cells.append(f"{r['seconds'] * 1e3:.0f} ms, {r['peak_mib']:.0f} MiB" if r else "skipped")
        ratio = results[(METHODS[0], n)]["seconds"] / results[(METHODS[2], n)]["seconds"]
        print(f"| {n} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    first, last = lengths[0], lengths[-1]
    for m in (METHODS[0], METHODS[2]):
        growth = results[(m, last)]["seconds"] / results[(m, first)]["seconds"]
        print(f"\n{m}: time grows {growth:.1f}x from N={first} to N={last} ({last // first}x longer)", end="")
    print()


if __name__ == "__main__":
    main()
