"""GLUE tasks from the registry as (text_a, text_b, label) examples, split as the registry states.

Rows with the wrong number of columns or a label outside the task's label set are counted per file and
reported in ``TaskData.malformed``; they are never silently dropped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgument
from .registry import get, resolve

__all__ = ["Example", "TaskData", "TASKS", "load_task"]

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
