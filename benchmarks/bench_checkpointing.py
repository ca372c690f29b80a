"""Peak memory and time of one long-sequence training step of a RoFormer masked LM, with and without gradient
checkpointing, side by side in one run (each point in a fresh process; peak = the process's maximum resident set
size minus its size just before the step).

    python benchmarks/bench_checkpointing.py          # 4 layers, 512 wide, 1 x 2048 and 1 x 4096 tokens
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def child(seq: int, layers: int, hidden: int, checkpointing: bool) -> dict:
    import torch

    from roformer import RoFormerConfig, RoFormerForMaskedLM

    torch.manual_seed(0)
    config = RoFormerConfig(vocab_size=8000, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
    model = RoFormerForMaskedLM(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    ids = torch.randint(5, 8000, (1, seq))
    labels = ids.masked_fill(torch.rand(ids.shape) > 0.15, -100)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    model(ids, labels=labels).loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2048,4096")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.layers, args.hidden, args.child[1] == "on")))
        return
    import torch

    print(f"RoFormer MLM, {args.layers} layers, {args.hidden} wide, batch 1, fp32, one forward + backward; "
          f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| tokens | without: time, peak | with checkpointing: time, peak | memory saved | time cost |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.lengths.split(",")):
        r = {}
        for mode in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", str(n), mode, "--layers", str(args.layers),
                                  "--hidden", str(args.hidden)], capture_output=True, text=True, check=True)
            r[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        off, on = r["off"], r["on"]
        print(f"| {n} | {off['seconds']:.2f} s, {off['peak_mib']:.0f} MiB | {on['seconds']:.2f} s, "
              f"{on['peak_mib']:.0f} MiB | {off['peak_mib'] / on['peak_mib']:.2f}x less | "
              f"{on['seconds'] / off['seconds']:.2f}x the time |")


if __name__ == "__main__":
    main()
