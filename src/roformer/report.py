"""Reports: a run directory (``metrics.jsonl`` + ``summary.json``) to a markdown table and PNG plots; several
runs to one overlaid figure and one comparison table, the form of the paper's figures and tables."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from .errors import InvalidArgument, MissingFile
from .io import atomic_write, atomic_write_text, read_jsonl

__all__ = ["read_metrics", "read_summary", "plot_curves", "markdown_table", "write_run_report", "compare_runs",
           "mean_std", "paired_difference", "mcnemar", "seed_rows", "plot_seed_bands", "plot_lines"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MissingFile(f"{run_dir} is not a run directory: no metrics.jsonl")
    return read_jsonl(path)


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _save_plot(fig, ax, out_png: str | Path, title: str, ylabel: str, xlabel: str = "training step",
               legend_beside: bool = False) -> Path:
    """Label the axes, title, grid and legend (over the axes, or beside them); write the PNG."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 72)), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if legend_beside:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out_png


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
    return _save_plot(fig, ax, out_png, title, ylabel)


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
    atomic_write_text(out, "\n".join(parts))
    return out


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, title: str = "Comparison",
                 keys=("loss", "eval/loss")) -> Path:
    """Overlay several runs' curves in ``curves.png`` and tabulate their final metrics in ``report.md``."""
    if not run_dirs:
        raise InvalidArgument("give at least one run directory")
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
    atomic_write_text(out_dir / "report.md", text)
    return out_dir / "report.md"


# -- several seeds per variant ------------------------------------------------------------------------------
def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var ** 0.5


def paired_difference(values, reference, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``values[i] - reference[i]`` and its Student-t confidence interval
    (the seeds pair the runs: same initialisation seed and data order); (mean, low, high)."""
    from scipy import stats

    if len(values) != len(reference):
        raise InvalidArgument(f"paired seeds differ in number: {len(values)} vs {len(reference)}")
    diffs = [float(a) - float(b) for a, b in zip(values, reference, strict=True)]
    mean, std = mean_std(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * std / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def mcnemar(a: list[int], b: list[int]) -> tuple[int, int, float]:
    """McNemar's exact test of two models on the same examples (1 = right): the examples only ``a`` got right,
    those only ``b`` got right, and the two-sided p-value (a binomial test of the discordant pairs)."""
    from scipy.stats import binomtest

    if len(a) != len(b):
        raise InvalidArgument(f"paired predictions differ in number: {len(a)} vs {len(b)}")
    only_a = sum(x > y for x, y in zip(a, b, strict=True))
    only_b = sum(y > x for x, y in zip(a, b, strict=True))
    return only_a, only_b, binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0


def seed_rows(per_variant: dict[str, list[float]], reference: str, metric: str, digits: int = 4,
              lower_is_better: bool = True) -> list[dict]:
    """One table row per variant: mean ± std over seeds, the seeds' values, and the paired difference against
    ``reference`` with a 95% interval and how many seeds the variant beat the reference in."""
    rows = []
    for name, values in per_variant.items():
        mean, std = mean_std(values)
        row = {"variant": name, f"{metric} (mean ± std)": f"{mean:.{digits}f} ± {std:.{digits}f}",
               "per seed": ", ".join(f"{v:.{digits}f}" for v in values)}
        if name != reference and reference in per_variant:
            diff, low, high = paired_difference(values, per_variant[reference])
            wins = sum((a < b) == lower_is_better and a != b for a, b in zip(values, per_variant[reference],
                                                                               strict=True))
            row[f"minus {reference}: mean [95% CI]"] = (
                f"{diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]" if len(values) > 1
                else f"{diff:+.{digits}f} (one seed: no interval)")
            row[f"seeds better than {reference}"] = f"{wins}/{len(values)}"
        else:
            row[f"minus {reference}: mean [95% CI]"] = row[f"seeds better than {reference}"] = ""
        rows.append(row)
    return rows


def plot_seed_bands(runs: dict[str, list[str | Path]], out_png: str | Path, key: str = "eval/loss",
                    title: str = "Validation loss", ylabel: str = "loss (nats / token)") -> Path:
    """One line per variant, the mean over its seeds' runs at each logged step, in a band from the lowest to the
    highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, run_dirs in runs.items():
        curves = [dict(zip(*_series(read_metrics(d), key), strict=True)) for d in run_dirs]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        values = [[c[s] for c in curves] for s in steps]
        mean = [sum(v) / len(v) for v in values]
        line, = ax.plot(steps, mean, label=f"{label} (mean of {len(curves)} seeds)")
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    return _save_plot(fig, ax, out_png, title + " (band: lowest to highest seed)", ylabel)


def plot_lines(curves: dict[str, list[tuple[float, float]]], out_png: str | Path, xlabel: str, ylabel: str,
               title: str, log: bool = True) -> Path:
    """One line with markers per label through its (x, y) points, log-scaled axes by default; more than ten
    labels get twenty colours and a legend beside the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(curves) > 10
    fig, ax = plt.subplots(figsize=(11 if many else 7, 4.5), dpi=120)
    colours = plt.get_cmap("tab20" if many else "tab10").colors
    for i, (label, points) in enumerate(curves.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="os^D"[i // len(colours) % 4], markersize=4, label=label,
                    color=colours[i % len(colours)], linestyle="-" if len(points) > 1 else "none")
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    return _save_plot(fig, ax, out_png, title, ylabel, xlabel, legend_beside=many)
