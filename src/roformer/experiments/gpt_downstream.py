"""§4.7, Fig. 6 (Neurocomputing version): GPT-style decoders with learned absolute positions and with RoPE,
fine-tuned on downstream tasks from their checkpoints at several pre-training steps.

The paper pre-trains GPT-3 with and without RoPE, fine-tunes the models saved at several pre-training steps on
text understanding, commonsense inference and reading comprehension tasks, plots accuracy against the
pre-training step (Fig. 6) and finds RoPE's improvement consistent and significant. Here: the decoders of
``pe_compare`` (same preset, same seeds, same data), with a checkpoint kept every ``snapshot_every`` updates;
each checkpoint is fine-tuned on GLUE tasks as GPT is (Radford et al. 2018): the text, a separator and the
second text, then an end token, and a linear head on the final state of that last token
(:class:`~roformer.models.decoder.DecoderForSequenceClassification`), with the fine-tuning loop GLUE uses
(:mod:`roformer.train.finetune`). The score is the accuracy on the task's validation split (no selection is made
on it: one learning rate, the last epoch).

Pairing: pre-training seed k sets both models' initialisation and data order, fine-tuning seed j the head and
the data order of the fine-tune. RoPE minus learned is taken per (k, j) and averaged over j, one paired
difference per pre-training seed, with a Student-t interval over the pre-training seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.glue import load_task, predict, score
from ..data.padding import right_pad
from ..data.tokenizer import load_tokenizer
from ..errors import MissingFile
from ..io import atomic_write, atomic_write_text, fingerprint
from ..models.decoder import DecoderConfig, DecoderForSequenceClassification
from ..report import markdown_table, mean_std, paired_difference, read_summary
from ..train import is_main_process, preset_train_config
from ..train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ..train.finetune import FineTune, finetune
from . import choose_preset, owns_run, pe_compare
from .lm_compare import eval_curve, train_variants
from .seeds import record_digest

VARIANTS = ("learned", "rope")

PRESETS = {  # pre-training: pe_compare's preset of the same name; tasks: {task: its own settings, if any}
    "smoke": dict(snapshot_every=3, tasks={"sst2": {}, "qnli": {}}, max_len=32, train_examples=32,
                  eval_examples=32, finetune=dict(epochs=1, batch_size=8, lr=1e-3), finetune_seeds=1),
    # 2 cores: 4 snapshots x 3 pre-training seeds x 2 models; SST-2 with 2 fine-tuning seeds (about 30 s each),
    # QNLI's longer pairs cut to 64 tokens with one (a first try at 128 tokens and 2 seeds would have taken 75 min)
    "small": dict(snapshot_every=50, tasks={"sst2": {}, "qnli": dict(max_len=64, finetune_seeds=1)}, max_len=128,
                  train_examples=1000, eval_examples=500, finetune=dict(epochs=2, batch_size=32, lr=3e-4),
                  finetune_seeds=2),
    "paper": dict(snapshot_every=20_000, tasks={"sst2": {}, "qnli": {}, "mnli": {}}, max_len=512,
                  train_examples=None, eval_examples=None, finetune=dict(epochs=3, batch_size=32, lr=3e-5),
                  finetune_seeds=3),
}


class Examples:
    """A task's examples as decoder inputs: ``A <sep> B <sep>`` (``A <sep>`` for one text), cut to ``max_len``
    by the tokenizer's longest-first truncation, as GLUE's encoder inputs are."""

    def __init__(self, tok, examples, max_len: int):
        tok.no_padding()
        tok.enable_truncation(max_length=max_len, strategy="longest_first")
        encodings = tok.encode_batch([e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples])
        self.ids = [e.ids for e in encodings]
        self.truncated = sum(bool(e.overflowing) for e in encodings)
        self.labels = torch.tensor([e.label for e in examples])

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: list[int], pad_id: int) -> dict:
        return {"input_ids": right_pad([self.ids[r] for r in rows], pad_id),
                "attention_mask": right_pad([[1] * len(self.ids[r]) for r in rows], 0), "labels": self.labels[rows]}


def task_tokenizer(out: Path):
    """The pre-training vocabulary, adding a separator after each text (the end-of-text token)."""
    from tokenizers.processors import TemplateProcessing

    tok = load_tokenizer(out)
    sep = pe_compare.SEPARATOR
    tok.post_processor = TemplateProcessing(single=f"$A {sep}", pair=f"$A {sep} $B {sep}",
                                            special_tokens=[(sep, tok.token_to_id(sep))])
    return tok


def snapshot_steps(every: int, total: int) -> list[int]:
    """The pre-training steps whose checkpoints are fine-tuned: every ``every`` updates, and the last."""
    return sorted({*range(every, total + 1, every), total})


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/gpt_downstream", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        seeds: int | None = None) -> dict:
    p, pp = choose_preset(PRESETS, preset), choose_preset(pe_compare.PRESETS, preset)
    out, seed_list = Path(out), list(range(seeds or pp["seeds"]))
    out.mkdir(parents=True, exist_ok=True)
    every = p["snapshot_every"]  # a checkpoint and an evaluation at every snapshot, all kept
    train_config = preset_train_config(pp["train"], device, dtype, max_steps, save_every=every, eval_every=every,
                                       keep_last=0)
    steps = snapshot_steps(every, train_config.max_steps)
    train, valid = pe_compare.encode_corpus(pp, data_dir, out, resume)
    tok = task_tokenizer(out)
    sep = tok.token_to_id(pe_compare.SEPARATOR)
    longest = max(pp["seq_len"], p["max_len"], *(own.get("max_len", 0) for own in p["tasks"].values()))
    configs = {name: DecoderConfig(vocab_size=pp["vocab"], position=name, max_positions=longest, dropout=0.0,
                                   **pp["model"]) for name in VARIANTS}
    train_variants(configs, train, valid, pp["seq_len"], pp["batch_size"], train_config, out, resume, seed_list)
    if not is_main_process():
        return {}
    results = {"pretraining": {}, "parameters": read_summary(out / "rope" / "seed0")["final"]["parameters"],
               "tasks": {}}
    for name in VARIANTS:
        for k in seed_list:
            curve = dict(eval_curve(out / name / f"seed{k}"))
            results["pretraining"].setdefault(name, []).append({s: curve.get(s) for s in steps})
    for task, own in p["tasks"].items():
        t = {**p, **own}
        data = load_task(task, data_dir)
        train_set = Examples(tok, data.splits["train"][: t["train_examples"]], t["max_len"])
        valid_set = Examples(tok, data.splits["validation"][: t["eval_examples"]], t["max_len"])
        majority = score(task, torch.full_like(valid_set.labels, int(train_set.labels.mode().values)),
                         valid_set.labels)["accuracy"]
        scores = {name: [[[_finetune(out, name, k, s, task, train_set, valid_set, data.num_labels, configs[name],
                                     p, j, sep, device, dtype, resume)
                           for j in range(t["finetune_seeds"])] for s in steps] for k in seed_list]
                  for name in VARIANTS}
        results["tasks"][task] = {"scores": scores, "majority_class": majority, "train_examples": len(train_set),
                                  "validation_examples": len(valid_set), "max_len": t["max_len"],
                                  "finetune_seeds": t["finetune_seeds"],
                                  "truncated": [train_set.truncated, valid_set.truncated]}
    results["steps"] = steps
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    _plot(results, out / "downstream.png")
    _write_report(out, p, pp, train_config, results, seed_list,
                  command or f"roformer experiment gpt_downstream --preset {preset}")
    return results


def _finetune(out: Path, name: str, k: int, step: int, task: str, train_set: Examples, valid_set: Examples,
              num_labels: int, config: DecoderConfig, p: dict, seed: int, pad_id: int, device, dtype,
              resume: bool) -> float:
    """The validation accuracy of pre-training run (name, seed k)'s checkpoint at ``step`` fine-tuned on ``task``
    with fine-tuning seed ``seed``."""
    run_dir = out / name / f"seed{k}"
    # a pre-training run trained again (fresh clone) must end at its record, so the record names its weights
    identity = {"pretrained": f"{name}/seed{k}", "record": record_digest(run_dir),
                "step": step, "task": task, "train": fingerprint([train_set.ids, train_set.labels.tolist()]),
                "validation": fingerprint([valid_set.ids, valid_set.labels.tolist()])}

    def make_model():
        checkpoint = checkpoint_path(run_dir / "checkpoints", step)
        if checkpoint not in list_checkpoints(run_dir / "checkpoints"):
            raise MissingFile(f"the pre-training checkpoint {checkpoint} is gone, and its fine-tunes start from it: "
                              f"remove {run_dir / 'checkpoints'} and --resume, which trains the run again to its "
                              "record")
        model = DecoderForSequenceClassification(config, num_labels)
        load_checkpoint(checkpoint, model.decoder)
        return model

    def eval_fn(net) -> dict:
        return score(task, predict(net, valid_set, pad_id, regression=False), valid_set.labels)

    result = finetune(
        out / "finetune" / task / name / f"seed{k}" / f"step{step}" / f"ft{seed}", identity,
        FineTune(**p["finetune"]), seed, make_model=make_model, examples=len(train_set),
        make_batch=lambda rows: train_set.batch(rows, pad_id),
        loss_fn=lambda net, batch: (net(**batch).loss, len(batch["labels"])), eval_fn=eval_fn,
        order_seed=lambda epoch: seed * 1009 + epoch, device=device, dtype=dtype, resume=resume,
        desc=f"{task} {name} seed {k} step {step} ft {seed}")
    return result["accuracy"]


def per_pretraining_seed(scores: list[list[list[float]]], i: int) -> list[float]:
    """At snapshot ``i``: each pre-training seed's accuracy, averaged over its fine-tuning seeds."""
    return [sum(per_step[i]) / len(per_step[i]) for per_step in scores]


def _write_report(out: Path, p: dict, pp: dict, train_config, results: dict, seed_list: list[int],
                  command: str) -> None:
    steps = results["steps"]
    text = [
        "# §4.7, Fig. 6: GPT with and without RoPE, fine-tuned at several pre-training steps", "",
        f"Produced by: `{command}`", "",
        f"Pre-training: the `pe_compare` decoders (pre-LayerNorm, {pp['model']['num_layers']} layers, "
        f"{pp['model']['hidden_size']} wide, byte-level BPE of {pp['vocab']} tokens, windows of {pp['seq_len']} "
        f"tokens, batch {pp['batch_size']}, {train_config.max_steps} updates of AdamW at lr {train_config.lr:g}) with "
        f"learned absolute positions and with RoPE, seeds {', '.join(map(str, seed_list))}; a checkpoint every "
        f"{p['snapshot_every']} updates. Fine-tuning, per checkpoint and task: {p['finetune']['epochs']} epochs, "
        f"batch {p['finetune']['batch_size']}, lr {p['finetune']['lr']:g} (linear decay, 10% warm-up), a linear "
        "head on the last token; the input length and the fine-tuning seeds are given per task. Score: accuracy "
        "(x100) on the validation split. An interval is a Student-t 95% interval of the "
        "mean RoPE minus learned difference over the pre-training seeds (each seed's fine-tunes averaged first).",
        "", "![accuracy against pre-training step](downstream.png)", "",
        "## Pre-training: validation loss at each snapshot (mean over seeds)", "",
    ]
    loss_rows = []
    for name, runs in results["pretraining"].items():
        row = {"model": name}
        for s in steps:
            values = [r[s] for r in runs if r[s] is not None]
            row[f"step {s}"] = f"{mean_std(values)[0]:.3f}" if values else "—"
        loss_rows.append(row)
    text += [markdown_table(loss_rows, list(loss_rows[0])), ""]
    ahead = significant_for = significant_against = cells = 0
    for task, r in results["tasks"].items():
        rows = []
        for i, s in enumerate(steps):
            learned = per_pretraining_seed(r["scores"]["learned"], i)
            rope = per_pretraining_seed(r["scores"]["rope"], i)
            diff, low, high = paired_difference(rope, learned)
            cells += 1
            ahead += diff > 0
            significant_for += low > 0
            significant_against += high < 0
            rows.append({"pre-training step": s,
                         "learned: mean ± std": "{:.1f} ± {:.1f}".format(*mean_std(learned)),
                         "RoPE: mean ± std": "{:.1f} ± {:.1f}".format(*mean_std(rope)),
                         "RoPE − learned [95% CI]": f"{diff:+.1f} [{low:+.1f}, {high:+.1f}]" if len(rope) > 1
                         else f"{diff:+.1f}",
                         "pre-training seeds RoPE ahead":
                             f"{sum(a > b for a, b in zip(rope, learned, strict=True))}/{len(rope)}"})
        text += [f"## {task.upper()}", "",
                 f"{r['train_examples']} training / {r['validation_examples']} validation examples "
                 f"({r['truncated'][0]} / {r['truncated'][1]} cut to {r['max_len']} tokens), "
                 f"{r['finetune_seeds']} fine-tuning seed(s) per checkpoint; always predicting the most frequent "
                 f"training label scores {r['majority_class']:.1f}.", "",
                 markdown_table(rows, list(rows[0])), ""]
    text += [
        "## The paper's claim and what was measured", "",
        "The paper (Fig. 6) finds RoPE's downstream improvement over the same GPT without it consistent across "
        "pre-training steps and significant. Here, over "
        f"{cells} (task, pre-training step) cells, RoPE's mean accuracy is ahead in {ahead}; the 95% interval "
        f"excludes zero in RoPE's favour in {significant_for} and against it in {significant_against}.", "",
        f"Scale: these decoders have {results['parameters'] / 1e6:.1f}M parameters and see "
        f"{train_config.max_steps * pp['batch_size'] * pp['seq_len'] / 1e6:.1f}M tokens in pre-training; the "
        "paper's are GPT-3 models.", "",
    ]
    atomic_write_text(out / "report.md", "\n".join(text))


def _plot(results: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, steps = list(results["tasks"]), results["steps"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), dpi=120, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        r = results["tasks"][task]
        for name, label in (("learned", "GPT, learned positions"), ("rope", "GPT + RoPE")):
            per_seed = [per_pretraining_seed(r["scores"][name], i) for i in range(len(steps))]
            mean = [sum(v) / len(v) for v in per_seed]
            line, = ax.plot(steps, mean, marker="o", label=f"{label} (mean)")
            ax.fill_between(steps, [min(v) for v in per_seed], [max(v) for v in per_seed], color=line.get_color(),
                            alpha=0.2, linewidth=0)
        ax.axhline(r["majority_class"], color="grey", linestyle=":", label="majority class")
        ax.set_title(task.upper(), fontsize=10)
        ax.set_xlabel("pre-training step")
        ax.set_ylabel("validation accuracy (x100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Downstream accuracy against pre-training step (Fig. 6); band: lowest to highest pre-training "
                 "seed", fontsize=9)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
