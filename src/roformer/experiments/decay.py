"""§3.4.3 / Fig. 2: the long-term decay of RoPE.

The bound on |<R_m q, R_n k>| shrinks as the relative distance |m - n| grows; this recipe tabulates the
relative upper bound (1/(d/2)) sum_j |S_j| (``rope.relative_upper_bound``) and plots it against distance.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import InvalidArgument
from ..io import atomic_write, atomic_write_text
from ..rope import relative_upper_bound

MAX_DISTANCE = 1_000_000  # the bound is a (distance, dim / 2) table: 10**11 distances would need 800 GB


def run(dim: int = 128, max_distance: int = 256, base: float = 10000.0, out: str | Path = "runs/decay") -> Path:
    """Write ``decay.csv`` (distance, bound) and ``decay.png`` into ``out``; returns the directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 1 <= max_distance <= MAX_DISTANCE:
        raise InvalidArgument(f"max distance must be from 1 to {MAX_DISTANCE:,} (one CSV row per distance), got "
                              f"{max_distance}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bound = relative_upper_bound(dim, max_distance, base).tolist()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["relative_distance", "relative_upper_bound"])
    writer.writerows((r, f"{b:.6f}") for r, b in enumerate(bound))
    atomic_write_text(out / "decay.csv", text.getvalue())

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(range(len(bound)), bound, color="tab:blue")
    ax.set_xlabel("relative distance |m - n|")
    ax.set_ylabel("relative upper bound  (1/(d/2)) Σ_j |S_j|")
    ax.set_title(f"Long-term decay of RoPE (d = {dim}, base = {base:g})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out / "decay.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
