"""Reports: a run directory (``metrics.jsonl`` + ``summary.json``) to a markdown table and PNG plots; several
runs to one overlaid figure and one comparison table, the form of the paper's figures and tables."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

__all__ = ["read_metrics", "read_summary", "plot_curves", "markdown_table", "write_run_report", "compare_runs"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(runs: dict[str, str | Path], out_png: str | Path, keys=("loss", "eval/loss"),
                title: str = "Training curves", ylabel: str = "loss (nats / token)") -> Path:
    """One line per run and key (solid: training loss, dashed: evaluation), labelled axes, legend, title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, run_dir) in enumerate(runs.items()):
        records = read_metrics(run_dir)
        for key in keys:
            steps, values = _series(records, key)
            if steps:
                style = "--" if key.startswith("eval/") else "-"
                marker = "o" if key.startswith("eval/") and len(steps) < 30 else None
                ax.plot(steps, values, style, marker=marker, markersize=3, color=colors[i % len(colors)],
                        label=f"{label}: {'validation ' + key[5:] if key.startswith('eval/') else 'training ' + key}")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 72)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_run_report(run_dir: str | Path, title: str, command: str, notes: str = "") -> Path:
    """``report.md`` and ``loss.png`` for one run, from its metrics and summary."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    plot_curves({run_dir.name: run_dir}, run_dir / "loss.png", title=title)
    final = summary.get("final", {})
    parts = [f"# {title}", "", f"Produced by: `{command}`", "", "## Final metrics", "",
             markdown_table([final], list(final)), "", "![training and validation loss](loss.png)", ""]
    if notes:
        parts += [notes, ""]
    if "config" in summary:
        parts += ["## Configuration", "", "```json", json.dumps(summary["config"], indent=2), "```", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(parts))
    return out


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, title: str = "Comparison",
                 keys=("loss", "eval/loss")) -> Path:
    """Overlay several runs' curves in ``curves.png`` and tabulate their final metrics in ``report.md``."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    out_dir = Path(out_dir)
    runs = {Path(d).name: Path(d) for d in run_dirs}
    plot_curves(runs, out_dir / "curves.png", keys=keys, title=title)
    rows, columns = [], ["run"]
    for name, d in runs.items():
        final = read_summary(d).get("final") or {
            k.removeprefix("eval/"): v for k, v in read_metrics(d)[-1].items() if k != "step"}
        rows.append({"run": name, **final})
        columns += [k for k in final if k not in columns]
    text = "\n".join([f"# {title}", "", markdown_table(rows, columns), "", "![curves](curves.png)", ""])
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"
