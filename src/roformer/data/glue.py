"""GLUE tasks from the registry as (text_a, text_b, label) examples, split as the registry states; their
encoding as encoder inputs, a model's predictions on them, and each task's metric.

Rows with the wrong number of columns or a label outside the task's label set are counted per file and
reported in ``TaskData.malformed``; they are never silently dropped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidArgument
from .padding import right_pad
from .registry import get, resolve

__all__ = ["Example", "TaskData", "TASKS", "load_task", "Encoded", "encode", "predict", "score"]

csv.field_size_limit(1 << 24)


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class TaskSpec:
    dataset: str  # registry name
    columns: int  # columns a row must have at least
    text_a: int
    text_b: int | None
    label: int
    labels: tuple[str, ...] | None  # label strings in id order; None: a float score (regression)
    header: bool
    metric: str
    score_range: tuple[float, float] = (0.0, 5.0)


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", 2, 0, None, 1, ("0", "1"), True, "accuracy"),
    "mrpc": TaskSpec("mrpc", 5, 3, 4, 0, ("0", "1"), True, "f1"),
    "stsb": TaskSpec("stsb", 7, 5, 6, 4, None, False, "spearman"),
    "qnli": TaskSpec("qnli", 4, 1, 2, 3, ("entailment", "not_entailment"), True, "accuracy"),
    "qqp": TaskSpec("qqp", 6, 3, 4, 5, ("0", "1"), False, "f1"),
    "mnli": TaskSpec("mnli", 12, 8, 9, 11, ("entailment", "neutral", "contradiction"), True, "accuracy"),
}


@dataclass
class TaskData:
    name: str
    splits: dict[str, list[Example]]
    malformed: dict[str, int] = field(default_factory=dict)  # file -> rows rejected
    split_rule: str = ""

    @property
    def num_labels(self) -> int:
        spec = TASKS[self.name]
        return 1 if spec.labels is None else len(spec.labels)


def _read(path: Path, spec: TaskSpec, malformed: dict[str, int]) -> list[Example]:
    examples, bad = [], 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.header:
            next(rows, None)
        for row in rows:
            if not row:
                continue
            if len(row) < spec.columns:
                bad += 1
                continue
            raw = row[spec.label].strip()
            if spec.labels is None:
                try:
                    label = float(raw)
                except ValueError:
                    bad += 1
                    continue
                if not spec.score_range[0] <= label <= spec.score_range[1]:
                    bad += 1
                    continue
            elif raw in spec.labels:
                label = spec.labels.index(raw)
            else:
                bad += 1
                continue
            examples.append(Example(row[spec.text_a], None if spec.text_b is None else row[spec.text_b], label))
    malformed[path.name] = bad
    return examples


def load_task(name: str, mirror: str | Path | None = None) -> TaskData:
    """A GLUE task's splits; raises ``DataUnavailable`` (naming what is missing) when its files are absent."""
    if name not in TASKS:
        raise InvalidArgument(f"unknown GLUE task {name!r}; known: {', '.join(TASKS)}")
    spec = TASKS[name]
    paths = {Path(p).name: Path(v) for p, v in resolve(spec.dataset, mirror).items()}
    malformed: dict[str, int] = {}

    def read(file: str) -> list[Example]:
        return _read(paths[file], spec, malformed)

    if name == "sst2":
        splits = {"train": read("train_90pct.tsv") + read("train_10pct_heldout.tsv"), "validation": read("dev.tsv")}
    elif name == "mrpc":
        rows = read("msr_paraphrase_train.txt")
        splits = {"train": [e for i, e in enumerate(rows) if i % 10],
                  "validation": [e for i, e in enumerate(rows) if i % 10 == 0],
                  "test": read("msr_paraphrase_test.txt")}
    elif name == "stsb":
        splits = {"train": read("sts-train.tsv"), "validation": read("sts-dev.tsv"), "test": read("sts-test.tsv")}
    elif name == "qnli":
        rows = read("dev.tsv")
        splits = {"train": [e for i, e in enumerate(rows) if i % 5],
                  "validation": [e for i, e in enumerate(rows) if i % 5 == 0]}
    elif name == "qqp":
        rows = read("qqp_labeled_subset.tsv")
        splits = {"train": [e for i, e in enumerate(rows) if i % 10],
                  "validation": [e for i, e in enumerate(rows) if i % 10 == 0]}
    else:  # mnli
        splits = {"train": read("train.tsv"), "validation": read("dev_matched.tsv"),
                  "validation_mismatched": read("dev_mismatched.tsv")}
    return TaskData(name, splits, malformed, get(spec.dataset).splits)


@dataclass
class Encoded:
    """A split tokenized for the model: per example its token ids and segment ids, and its label."""
    ids: list[list[int]]
    types: list[list[int]]
    labels: torch.Tensor
    truncated: int  # examples cut to the maximum length

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: list[int], pad_id: int) -> dict:
        """Rows padded to the longest of them."""
        return {"input_ids": right_pad([self.ids[r] for r in rows], pad_id),
                "token_type_ids": right_pad([self.types[r] for r in rows], 0),
                "attention_mask": right_pad([[1] * len(self.ids[r]) for r in rows], 0),
                "labels": self.labels[rows]}


def check_labels(task: str, examples: list[Example], num_labels: int) -> None:
    """A label outside the task's label set is an error naming the example (never a silent wrong target)."""
    spec = TASKS[task]
    for i, e in enumerate(examples):
        if spec.labels is None:
            ok = isinstance(e.label, float | int) and spec.score_range[0] <= e.label <= spec.score_range[1]
        else:
            ok = isinstance(e.label, int) and 0 <= e.label < num_labels
        if not ok:
            allowed = f"a score in {spec.score_range}" if spec.labels is None else f"a class id in 0..{num_labels - 1}"
            raise InvalidArgument(f"{task}: example {i} has label {e.label!r}; the task needs {allowed}")


def encode(tok, task: str, examples: list[Example], max_len: int, num_labels: int) -> Encoded:
    """Tokenize (text_a, text_b) pairs as ``[CLS] A [SEP] B [SEP]`` with longest-first truncation to ``max_len``."""
    if max_len < 4:
        raise InvalidArgument(f"max_len must leave room for [CLS] and two [SEP], got {max_len}")
    check_labels(task, examples, num_labels)
    tok.no_padding()
    tok.enable_truncation(max_length=max_len, strategy="longest_first")
    pairs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    encodings = tok.encode_batch(pairs)
    dtype = torch.float if TASKS[task].labels is None else torch.long
    return Encoded([e.ids for e in encodings], [e.type_ids for e in encodings],
                   torch.tensor([e.label for e in examples], dtype=dtype),
                   sum(bool(e.overflowing) for e in encodings))


def score(task: str, predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The task's GLUE metric (x100) and the other usual ones: accuracy and F1 of the positive class for the
    classification tasks, Spearman and Pearson correlation for STS-B."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score

    p, y = predictions.cpu().numpy(), labels.cpu().numpy()
    if TASKS[task].labels is None:
        return {"spearman": 100 * float(spearmanr(p, y).statistic), "pearson": 100 * float(pearsonr(p, y).statistic)}
    out = {"accuracy": 100 * float(accuracy_score(y, p))}
    if len(TASKS[task].labels) == 2:
        out["f1"] = 100 * float(f1_score(y, p, zero_division=0.0))
    return out


def predict(net, data: Encoded, pad_id: int, regression: bool, batch_size: int = 64) -> torch.Tensor:
    """The model's prediction for every example of ``data`` (anything with ``ids``, ``batch(rows, pad_id)`` and
    ``len``): a class id, or a score when ``regression``; batched by length, for little padding."""
    order = sorted(range(len(data)), key=lambda r: len(data.ids[r]))  # little padding
    out = torch.empty(len(data), dtype=torch.float if regression else torch.long)
    device = next(net.parameters()).device
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        batch = {k: v.to(device) for k, v in data.batch(rows, pad_id).items() if k != "labels"}
        logits = net(**batch).logits.float()
        out[rows] = (logits.squeeze(-1) if regression else logits.argmax(-1)).cpu()
    return out
