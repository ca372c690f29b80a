"""§4.3: fine-tuning pre-trained encoders on GLUE (Table 2).

``finetune_task`` fine-tunes one saved encoder (ours, or a HuggingFace RoFormer directory) on one task over a
grid of learning rates x seeds, as the paper does (3 epochs, batch 32, lr in {2,3,4,5}e-5, 3 seeds, the
learning rate with the best mean reported as mean +- std). ``run`` does this for the BERT baseline and RoFormer
from our own pre-training (``roformer experiment mlm``) on every task and writes Table 2 with the paper's
figures beside ours. It fine-tunes the encoder of every pre-training seed k once, with fine-tuning seed k, so
that the spread over seeds, and the interval of the paired difference, hold the variance of pre-training as
well as that of fine-tuning (the paper reports one pre-trained model and 3 fine-tuning seeds).

Inputs are ``[CLS] A [SEP] (B [SEP])``. Over-long inputs are cut to the maximum length by the longest-first
rule: a token is removed from the end of the longer of the two texts until the pair fits. Every run scores
the validation split after each epoch; its final score (after the last epoch, no early stopping) is the one
reported. Training uses a linear decay after a warm-up over the first 10% of the updates, AdamW with weight
decay 0.01 and gradient clipping at 1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
from pathlib import Path

import torch

from ..data.glue import TASKS, Encoded, TaskData, encode, load_task, predict, score
from ..data.registry import DataUnavailable
from ..data.tokenizer import check_tokenizer, load_tokenizer, save_tokenizer
from ..errors import InvalidArgument
from ..io import atomic_write, atomic_write_text
from ..models import RoFormerForSequenceClassification
from ..models.saving import read_model_config
from ..report import markdown_table, seed_rows
from ..train import RunDirectory, is_main_process
from ..train.finetune import FineTune, finetune
from . import choose_preset, owns_run
from .mlm import saved_encoder_seeds
from .seeds import record_digest

__all__ = ["PRESETS", "PAPER_TABLE2", "finetune_task", "run"]

PRESETS = {
    "smoke": dict(max_len=32, train_examples=96, eval_examples=64, epochs=1, batch_size=16, lrs=(1e-4,), seeds=2),
    # the models of the small MLM preset are small and briefly pre-trained: a larger learning rate than BERT's
    # and more updates (a first run of 93 updates at 1e-4 and 3e-4 left every model at the majority class);
    # one rate instead of a grid (CPU budget)
    "small": dict(max_len=64, train_examples=2000, eval_examples=500, epochs=3, batch_size=32,
                  lrs=(1e-4,), seeds=3),
    # paper (arXiv v5 §4.3): 3 epochs, batch 32, lr {2,3,4,5}e-5, 3 seeds; ours: max_len 512, the full sets
    "paper": dict(max_len=512, train_examples=None, eval_examples=None, epochs=3, batch_size=32,
                  lrs=(2e-5, 3e-5, 4e-5, 5e-5), seeds=3),
}

# Table 2 of the paper (dev-set scores; MNLI matched / mismatched), quoted for reference
PAPER_TABLE2 = {
    "BERT (paper)": {"mrpc": "88.9", "sst2": "93.5", "qnli": "90.5", "stsb": "85.8", "qqp": "71.2",
                     "mnli": "84.6/83.4"},
    "RoFormer (paper)": {"mrpc": "89.5", "sst2": "90.7", "qnli": "88.0", "stsb": "87.0", "qqp": "86.4",
                         "mnli": "80.2/79.8"},
}
TABLE2_ORDER = ("mrpc", "sst2", "qnli", "stsb", "qqp", "mnli")
TASK_TITLES = {"mrpc": "MRPC (F1)", "sst2": "SST-2 (acc)", "qnli": "QNLI (acc)", "stsb": "STS-B (Spearman)",
               "qqp": "QQP (F1)", "mnli": "MNLI m/mm (acc)"}


def encoder_fingerprint(model_dir: Path) -> str:
    """What a resumed fine-tune compares to know it starts from the same encoder as the run it continues. An
    encoder saved by a comparison run (``summary.json`` with its final metrics beside the model directory, as
    ``train_seeds`` writes it) is known by that record: a run trained again from a fresh clone must end at it
    (``Trainer.fit(recorded=...)``). Any other directory is known by the SHA-256 of its weights."""
    record = record_digest(model_dir.parent)
    if record:
        return f"record {record}"
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        digest.update(path.read_bytes())
    return f"weights {digest.hexdigest()[:16]}"


def _finetune_once(model_dir: Path, encoder: str, task: str, num_labels: int, train: Encoded, valid: Encoded,
                   mismatched: Encoded | None, pad_id: int, p: dict, lr: float, seed: int, run_dir: Path,
                   device: str, dtype: str | None, resume: bool, max_steps: int | None) -> dict:
    """One fine-tune of the grid (:func:`roformer.train.finetune.finetune`); a finished one of the same run,
    from the same encoder, is reused. Its model is kept, its checkpoints dropped."""
    regression = TASKS[task].labels is None

    def loss_fn(net, batch):
        return net(**batch).loss, batch["input_ids"].shape[0]

    def eval_fn(net) -> dict:
        metrics = score(task, predict(net, valid, pad_id, regression), valid.labels)
        if mismatched is not None:
            scores = score(task, predict(net, mismatched, pad_id, regression), mismatched.labels)
            metrics |= {f"mismatched_{k}": v for k, v in scores.items()}
        return metrics

    def finish(model, final: dict, owner: RunDirectory) -> dict:
        if is_main_process():
            owner.save_directory("model", model.save_pretrained)
            shutil.rmtree(owner.path / "checkpoints", ignore_errors=True)  # finished: the result replaces it
        return final

    identity = {"model": str(model_dir), "encoder": encoder, "task": task, "train_examples": len(train)}
    return finetune(
        run_dir, identity, FineTune(p["epochs"], p["batch_size"], lr, max_steps=max_steps), seed,
        make_model=lambda: RoFormerForSequenceClassification.from_pretrained_as_new(model_dir, num_labels=num_labels),
        examples=len(train), make_batch=lambda rows: train.batch(rows, pad_id), loss_fn=loss_fn, eval_fn=eval_fn,
        order_seed=lambda epoch: seed * 1009 + epoch, finish=finish, device=device, dtype=dtype, resume=resume,
        desc=f"{task} lr {lr:g} seed {seed}")


def finetune_task(model_dir: str | Path, task: str, preset: str = "small", data_dir=None,
                  out: str | Path = "runs/finetune", resume: bool = False, device: str = "cpu",
                  dtype: str | None = None, max_steps: int | None = None, lrs=None, seeds: int | None = None) -> dict:
    """Fine-tune ``model_dir`` on ``task`` for every learning rate x seed; keep the best run's model in
    ``out/model`` and return the grid and the best learning rate's mean +- std of the task metric."""
    if task not in TASKS:
        raise InvalidArgument(f"unknown GLUE task {task!r}; known: {', '.join(TASKS)}")
    p = choose_preset(PRESETS, preset)
    return _finetune_grid(Path(model_dir), task, p, preset, data_dir, Path(out), resume, device, dtype, max_steps,
                          tuple(lrs or p["lrs"]), tuple(range(seeds or p["seeds"])))


def _finetune_grid(model_dir: Path, task: str, p: dict, preset: str, data_dir, out: Path, resume: bool, device: str,
                   dtype: str | None, max_steps: int | None, lrs: tuple, seeds: tuple[int, ...]) -> dict:
    """:func:`finetune_task` for the fine-tuning seeds ``seeds``."""
    metric = TASKS[task].metric
    tok = load_tokenizer(model_dir)  # a mismatched encoder is an error whether or not the task's data is here
    config = read_model_config(model_dir)
    check_tokenizer(tok, config["vocab_size"], config.get("pad_token_id", 0), model_dir, required=("[CLS]", "[SEP]"))
    try:
        data: TaskData = load_task(task, data_dir)
    except DataUnavailable as e:
        return {"task": task, "metric": metric, "absent": str(e)}
    num_labels = data.num_labels
    pad_id = config.get("pad_token_id") or 0
    train_examples = data.splits["train"][: p["train_examples"]]
    valid_examples = data.splits["validation"][: p["eval_examples"]]
    train = encode(tok, task, train_examples, p["max_len"], num_labels)
    valid = encode(tok, task, valid_examples, p["max_len"], num_labels)
    mismatched = None  # MNLI's second validation set, scored beside the first
    if "validation_mismatched" in data.splits:
        mismatched = encode(tok, task, data.splits["validation_mismatched"][: p["eval_examples"]], p["max_len"],
                            num_labels)

    encoder = encoder_fingerprint(model_dir)  # once for the grid: hashing a large encoder's weights takes a while
    with RunDirectory(out, resume=resume) as owner:
        owner.begin({"model": str(model_dir), "encoder": encoder, "task": task, "preset": preset})
        return _grid(owner, model_dir, encoder, task, tok, data, train, valid, mismatched, pad_id, p, lrs, seeds,
                     device, dtype, resume, max_steps)


def _grid(owner: RunDirectory, model_dir: Path, encoder: str, task: str, tok, data: TaskData, train: Encoded,
          valid: Encoded, mismatched: Encoded | None, pad_id: int, p: dict, lrs: tuple, seeds: tuple[int, ...],
          device: str, dtype: str | None, resume: bool, max_steps: int | None) -> dict:
    out, metric, num_labels = owner.path, TASKS[task].metric, data.num_labels
    grid: dict[str, list[float]] = {}  # learning rate -> score per seed, in the order of ``seeds``
    grid_mismatched: dict[str, list[float]] = {}
    for lr in lrs:
        for seed in seeds:
            final = _finetune_once(model_dir, encoder, task, num_labels, train, valid, mismatched, pad_id, p, lr,
                                   seed, out / f"lr{lr:g}_seed{seed}", device, dtype, resume, max_steps)
            grid.setdefault(f"{lr:g}", []).append(final[metric])
            if mismatched is not None:
                grid_mismatched.setdefault(f"{lr:g}", []).append(final[f"mismatched_{metric}"])
            print(f"{task} lr {lr:g} seed {seed}: {metric} {final[metric]:.2f}", flush=True)
    mean = {lr: statistics.fmean(v) for lr, v in grid.items()}
    best = max(mean, key=mean.get)
    best_seed = max(seeds, key=lambda s: grid[best][seeds.index(s)])
    for lr in grid:  # keep one fine-tuned model: the best seed of the best learning rate
        for seed in seeds:
            if (lr, seed) != (best, best_seed):
                shutil.rmtree(out / f"lr{lr}_seed{seed}" / "model", ignore_errors=True)
    best_dir = out / f"lr{best}_seed{best_seed}" / "model"
    if best_dir.is_dir():
        shutil.rmtree(out / "model", ignore_errors=True)
        best_dir.rename(out / "model")
        save_tokenizer(tok, out / "model")
    majority = None  # the score of always predicting the most frequent training class: the floor to beat
    if TASKS[task].labels is not None:
        constant = torch.full_like(valid.labels, int(train.labels.mode().values))
        majority = score(task, constant, valid.labels)[metric]
    result = {
        "task": task, "metric": metric, "majority_class": majority, "model": str(model_dir), "grid": grid,
        "best_lr": float(best),
        "seeds": list(seeds), "mean": mean[best], "std": statistics.stdev(grid[best]) if len(seeds) > 1 else 0.0,
        "train_examples": len(train), "validation_examples": len(valid),
        "truncated": {"train": train.truncated, "validation": valid.truncated},
        "split_rule": data.split_rule, "malformed_rows": data.malformed,
    }
    if grid_mismatched:  # at the learning rate chosen on the matched set
        result["grid_mismatched"] = grid_mismatched
        result["mismatched_mean"] = statistics.fmean(grid_mismatched[best])
    owner.write_json("results.json", result)
    return result


def _cell(result: dict) -> str:
    if "absent" in result:
        return "absent"
    if "mismatched_mean" in result:
        return f"{result['mean']:.1f}/{result['mismatched_mean']:.1f}"
    return f"{result['mean']:.1f} ± {result['std']:.1f}"


def _across_seeds(per_seed: list[dict]) -> dict:
    """One encoder's results on one task over its pre-training seeds (each fine-tuned once, with its own seed)
    as one grid: learning rate -> score per pre-training seed; the best learning rate by the mean."""
    first = per_seed[0]
    if "absent" in first:
        return first
    grid = {lr: [r["grid"][lr][0] for r in per_seed] for lr in first["grid"]}
    best = max(grid, key=lambda lr: statistics.fmean(grid[lr]))
    result = {k: first[k] for k in ("task", "metric", "majority_class", "train_examples", "validation_examples",
                                    "truncated", "split_rule", "malformed_rows")}
    result |= {"models": [r["model"] for r in per_seed], "seeds": [r["seeds"][0] for r in per_seed], "grid": grid,
               "best_lr": float(best), "mean": statistics.fmean(grid[best]),
               "std": statistics.stdev(grid[best]) if len(per_seed) > 1 else 0.0}
    if "grid_mismatched" in first:  # at the learning rate chosen on the matched set
        result["grid_mismatched"] = {lr: [r["grid_mismatched"][lr][0] for r in per_seed] for lr in grid}
        result["mismatched_mean"] = statistics.fmean(result["grid_mismatched"][best])
    return result


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/glue", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        models: str | Path = "reports/mlm", tasks=TABLE2_ORDER) -> dict:
    """Table 2: fine-tune the BERT baseline and RoFormer pre-trained by ``roformer experiment mlm`` (found in
    ``models``/{bert,roformer}/seed<k>/model) on each task and write ``out``/report.md and a bar chart. The
    encoder of pre-training seed k is fine-tuned with fine-tuning seed k, in ``out``/<encoder>/seed<k>/<task>."""
    p = choose_preset(PRESETS, preset)
    out, models = Path(out), Path(models)
    seeds = saved_encoder_seeds(models)
    results = {name: {task: _across_seeds([
        _finetune_grid(models / key / f"seed{seed}" / "model", task, p, preset, data_dir,
                       out / key / f"seed{seed}" / task, resume, device, dtype, max_steps, p["lrs"], (seed,))
        for seed in seeds]) for task in tasks}
        for name, key in (("BERT (ours)", "bert"), ("RoFormer (ours)", "roformer"))}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    _plot(results, out / "glue.png")
    rows = [{"model": name, **{TASK_TITLES[t]: _cell(r[t]) for t in tasks}} for name, r in results.items()]
    first = next(iter(results.values()))
    rows.append({"model": "majority class", **{TASK_TITLES[t]: "absent" if "absent" in first[t] else "—"
                                               if first[t]["majority_class"] is None
                                               else f"{first[t]['majority_class']:.1f}" for t in tasks}})
    rows += [{"model": name, **{TASK_TITLES[t]: paper[t] for t in tasks}} for name, paper in PAPER_TABLE2.items()]
    paired = []  # seed k: both encoders' pre-training seed, and their fine-tunes' head initialisation and order
    for task in tasks:
        if any("absent" in r[task] for r in results.values()):
            continue
        at_best = {name: r[task]["grid"][f"{r[task]['best_lr']:g}"] for name, r in results.items()}
        paired += [{"task": TASK_TITLES[task], **row}
                   for row in seed_rows(at_best, "RoFormer (ours)", "score", digits=1, lower_is_better=False)]
    notes = []
    for task in tasks:
        r = results["RoFormer (ours)"][task]
        if "absent" in r:
            notes.append(f"- {task}: data absent ({r['absent']})")
            continue
        grid = "; ".join(f"{name.split()[0]}: " + ", ".join(
            f"lr {lr}: {statistics.fmean(v):.1f}" for lr, v in results[name][task]["grid"].items())
            for name in results)
        bad = sum(r["malformed_rows"].values())
        notes.append(f"- {task}: {r['train_examples']} training / {r['validation_examples']} validation examples "
                     f"({r['truncated']['train']} / {r['truncated']['validation']} truncated); split: "
                     f"{r['split_rule']}" + (f"; {bad} malformed row(s) rejected" if bad else "")
                     + f". Mean per learning rate: {grid}.")
    text = [
        "# §4.3 GLUE fine-tuning (Table 2)", "",
        f"Produced by: `{command or f'roformer experiment glue --preset {preset}'}`", "",
        f"Preset `{preset}`: the BERT baseline and RoFormer of `{models}` (our MLM pre-training), pre-training "
        f"seeds {', '.join(map(str, seeds))}; the encoder of each pre-training seed k fine-tuned once on each task, "
        f"with fine-tuning seed k, for {p['epochs']} epochs, batch {p['batch_size']}, inputs of at most "
        f"{p['max_len']} tokens (pairs truncated longest-first), learning rates {', '.join(map(str, p['lrs']))}; "
        "the learning rate with the best mean validation score is reported as mean ± std over the seeds (x100), "
        "a spread that holds the variance of pre-training as well as that of fine-tuning. The majority-class row "
        "always predicts the most frequent training label: the "
        "floor a model must beat. The paper's rows are its arXiv v5 Table 2 (BERT-base scale, full training sets), "
        "quoted for reference, not comparable in scale.", "",
        markdown_table(rows, list(rows[0])), "", "![GLUE scores](glue.png)", "",
        "Per seed (pre-training seed k, fine-tuning seed k), at each encoder's chosen learning rate, with the "
        "difference to RoFormer paired by seed (95% Student-t interval over the seeds; positive: better than "
        "RoFormer):", "",
        *([markdown_table(paired, list(paired[0])), ""] if paired else []), "Data:", *notes, "",
    ]
    atomic_write_text(out / "report.md", "\n".join(text))
    return results


def _plot(results: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TABLE2_ORDER if any(t in r and "absent" not in r[t] for r in results.values())]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, [r[t]["mean"] for t in tasks], width, yerr=[r[t]["std"] for t in tasks], capsize=3, label=name)
    ax.set_xticks(range(len(tasks)), [TASK_TITLES[t] for t in tasks], fontsize=8)
    ax.set_ylabel("validation score (x100), mean ± std over seeds")
    ax.set_title("GLUE fine-tuning: BERT baseline vs RoFormer (Table 2)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
