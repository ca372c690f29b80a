"""The ``roformer`` command: argument parsing only; each verb calls a recipe."""

from __future__ import annotations

import argparse
import sys


def _decay(args: argparse.Namespace) -> None:
    from .experiments import decay

    out = decay.run(args.dim, args.max_distance, args.base, args.out)
    bound = (out / "decay.csv").read_text().splitlines()
    print(f"wrote {out / 'decay.csv'} and {out / 'decay.png'}")
    print(f"relative upper bound: distance 0 -> {bound[1].split(',')[1]}, "
          f"distance {args.max_distance} -> {bound[-1].split(',')[1]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roformer", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("decay", help="RoPE's long-term decay bound (§3.4.3, Fig. 2): CSV + PNG")
    p.add_argument("--dim", type=int, default=128, help="rotary dimension d (even)")
    p.add_argument("--max-distance", type=int, default=256)
    p.add_argument("--base", type=float, default=10000.0)
    p.add_argument("--out", default="runs/decay", help="output directory")
    p.set_defaults(func=_decay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"roformer {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
