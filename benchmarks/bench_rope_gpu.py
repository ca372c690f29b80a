"""RoPE on a CUDA GPU: our Triton kernel against the eager formula, transformers' ``apply_rotary_pos_emb``,
``torch.compile`` of the eager formula, and Liger's and flash-attn's rotary where they are installed, measured
side by side in one run, with each one's achieved bandwidth and its fraction of a device-to-device copy of the
same bytes measured in the same run.

    python benchmarks/bench_rope_gpu.py                 # Llama-like shapes, bf16, writes bench_rope_gpu.md
    python benchmarks/bench_rope_gpu.py --quick         # two shapes

Shapes: q (batch, seq, 32, 128) and k (batch, seq, 8, 128) (32 query / 8 key-value heads, GQA), the half-split
pairing (Llama's), cos/sin formed once per shape (as a model forms them once per forward); batch x tokens from
1 x 2k to 8 x 32k. Each candidate rotates q and k; "forward" returns new tensors, "forward + backward" also
rotates the gradients back. The bytes counted are those a one-pass kernel must move: read q and k, write them
(twice that with the backward); cos/sin tables are small and not counted. Without CUDA it says so and stops: no
figure here is ever a CPU one.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

SHAPES = [(1, 2048), (1, 8192), (1, 32768), (4, 2048), (4, 8192), (8, 2048), (8, 4096)]
QUICK = [(1, 8192), (4, 2048)]


def eager(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The half-split rotation written out in PyTorch (transformers' rotate_half form), computed in float32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.float(), sin.float()
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def candidates(args) -> dict:
    from roformer import apply_rotary

    found = {
        "roformer (Triton)": lambda q, k, cos, sin: (apply_rotary(q, cos[:, None], sin[:, None], False),
                                                     apply_rotary(k, cos[:, None], sin[:, None], False)),
        "eager formula": lambda q, k, cos, sin: (eager(q, cos[:, None], sin[:, None]),
                                                 eager(k, cos[:, None], sin[:, None])),
    }
    compiled = torch.compile(eager, dynamic=False)
    found["torch.compile(eager)"] = lambda q, k, cos, sin: (compiled(q, cos[:, None], sin[:, None]),
                                                            compiled(k, cos[:, None], sin[:, None]))
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        def hf(q, k, cos, sin):  # (batch, heads, seq, dim) with full-width cos/sin
            full_cos, full_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
            return apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), full_cos, full_sin)

        found["transformers apply_rotary_pos_emb"] = hf
    except ImportError:
        print("transformers not installed: its row is skipped")
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        def liger(q, k, cos, sin):
            full_cos, full_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
            return liger_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), full_cos, full_sin)

        found["Liger"] = liger
    except ImportError:
        print("liger-kernel not installed: its row is skipped")
    try:
        from flash_attn.layers.rotary import apply_rotary_emb

        found["flash-attn"] = lambda q, k, cos, sin: (apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin))
    except ImportError:
        print("flash-attn not installed: its row is skipped")
    return found


def bench(fn, warmup: int = 5, repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` by CUDA events (triton.testing.do_bench where Triton is there)."""
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=repeats * 5, return_mode="median"))
    except ImportError:
        times = []
        for i in range(warmup + repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def measure(found: dict, batch: int, seq: int, dtype: torch.dtype, device: torch.device) -> list[str]:
    """The table rows of one shape: the copy, then each candidate's forward and forward + backward."""
    q = torch.randn(batch, seq, 32, 128, device=device, dtype=dtype)
    k = torch.randn(batch, seq, 8, 128, device=device, dtype=dtype)
    theta = 500000.0 ** (-torch.arange(64, device=device, dtype=torch.float64) / 64)
    angle = torch.arange(seq, device=device, dtype=torch.float64)[:, None] * theta
    cos, sin = angle.cos().float(), angle.sin().float()
    moved = 2 * (q.numel() + k.numel()) * q.element_size()  # read + write q and k
    copy_q, copy_k = torch.empty_like(q), torch.empty_like(k)
    copy_ms = bench(lambda: (copy_q.copy_(q), copy_k.copy_(k)))
    rows = [f"| {batch} x {seq} | device-to-device copy | - | {copy_ms:.3f} | {moved / copy_ms / 1e6:.0f} | 1.00 |"]
    reference = eager(q, cos[:, None], sin[:, None])
    for name, fn in found.items():
        got = fn(q, k, cos, sin)[0]
        got = got.transpose(1, 2) if got.shape != reference.shape else got
        torch.testing.assert_close(got.float(), reference.float(), rtol=2e-2, atol=2e-2)
        ms = bench(lambda fn=fn: fn(q, k, cos, sin))
        rows.append(f"| {batch} x {seq} | {name} | forward | {ms:.3f} | {moved / ms / 1e6:.0f} | {copy_ms / ms:.2f} |")
        qg, kg = q.detach().requires_grad_(), k.detach().requires_grad_()

        def both(fn=fn, qg=qg, kg=kg):
            rq, rk = fn(qg, kg, cos, sin)
            torch.autograd.backward((rq, rk), (torch.ones_like(rq), torch.ones_like(rk)))

        ms = bench(both)
        rows.append(f"| {batch} x {seq} | {name} | forward + backward | {ms:.3f} | {2 * moved / ms / 1e6:.0f} | "
                    f"{2 * copy_ms / ms:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", default="bench_rope_gpu.md", help="the markdown table (also printed)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_rope_gpu: no CUDA device here; this benchmark measures GPUs only (nothing was measured)")
    from roformer.kernels.rotary import implementation

    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda")
    assert implementation("cuda", dtype) == "triton", "Triton is not importable: pip install roformer[gpu]"
    props = torch.cuda.get_device_properties(device)
    header = (f"{props.name}, torch {torch.__version__}, {platform.python_version()}; q (b, s, 32, 128), "
              f"k (b, s, 8, 128), {args.dtype}, half split")
    lines = [header, "", "| shape (b x s) | candidate | pass | ms | GB/s | fraction of a copy |",
             "|---|---|---|---|---|---|"]
    found = candidates(args)
    for batch, seq in QUICK if args.quick else SHAPES:
        lines += measure(found, batch, seq, dtype, device)
        torch.cuda.empty_cache()
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).write_text(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
