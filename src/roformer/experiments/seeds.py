"""Train every variant of a comparison once per seed: the shared core of the comparison recipes.

A variant is a function of the seed that builds its model, training settings, trainer functions and identity
(what a resume must find unchanged). Each (variant, seed) trains in ``out/<variant>/seed<k>``; a seed sets the
initialisation and the data order, the same ones for every variant, so that runs pair by seed
(:func:`roformer.report.seed_rows` reports the paired differences).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..io import read_json, sha256_file
from ..train import RunDirectory, TrainConfig, Trainer, is_main_process

__all__ = ["SeedRun", "train_seeds", "run_dirs", "record_digest"]


@dataclasses.dataclass
class SeedRun:
    model: nn.Module
    config: TrainConfig
    functions: tuple  # (batch_fn, loss_fn, eval_fn) for Trainer
    identity: dict  # what a resume checks; its "model" entry is kept in summary.json as "config"
    save: Callable[[nn.Module, Path], None] | None = None  # writes the model directory (default: save_pretrained)


def train_seeds(variants: dict[str, Callable[[int], SeedRun]], out: Path, resume: bool = False,
                seeds: Sequence[int] = (0,)) -> dict[str, list[dict]]:
    """Train each variant once per seed and return {variant: [summary per seed]}. A summary's ``final`` holds
    the last evaluation as ``validation_<metric>`` (and the perplexity of its loss), the parameter count and
    the minutes of training. With ``resume``, a finished run is not trained again; one whose weights and
    checkpoints are gone (a fresh clone of a report) is, and must end at the metrics it recorded."""
    results = {}
    for name, make in variants.items():
        for seed in seeds:
            run_dir = Path(out) / name / f"seed{seed}"
            torch.manual_seed(seed)
            run = make(seed)
            config = dataclasses.replace(run.config, seed=seed)
            started = time.perf_counter()
            trainer = Trainer(run.model, config, run_dir, *run.functions, desc=f"{name} seed {seed}",
                              identity=run.identity)
            with RunDirectory(run_dir, resume=resume) as owner:
                owner.begin(run.identity, dataclasses.asdict(config))
                recorded = owner.result("summary.json")
                final = trainer.fit(resume=resume, recorded=recorded and {
                    k.removeprefix("validation_"): v for k, v in recorded["final"].items()
                    if k.startswith("validation_")})
                if not is_main_process():
                    continue
                if recorded:  # reused, or trained again to its recorded end (a fresh clone has no weights)
                    summary = recorded  # keeps the minutes of the run that trained it
                else:
                    metrics = {f"validation_{k}": v for k, v in final.items()}
                    if "loss" in final:
                        metrics["perplexity"] = math.exp(final["loss"])
                    summary = {"final": {**metrics, "parameters": sum(p.numel() for p in run.model.parameters()),
                                         "minutes": (time.perf_counter() - started) / 60},
                               "config": run.identity.get("model"), "train": dataclasses.asdict(config)}
                    owner.write_json("summary.json", summary)
                if not trainer.resumed_finished or not (run_dir / "model").is_dir():
                    save = run.save or (lambda model, path: model.save_pretrained(path))
                    owner.save_directory("model", functools.partial(save, run.model))
            results.setdefault(name, []).append(summary)
    return results


def run_dirs(out: Path, results: dict[str, list], seeds: Sequence[int]) -> dict[str, list[Path]]:
    """{variant: [its run directory per seed]}, for the band plots."""
    return {name: [Path(out) / name / f"seed{s}" for s in seeds] for name in results}


def record_digest(run_dir: Path) -> str | None:
    """What names the weights of a finished run of :func:`train_seeds` across clones: the SHA-256 (16 digits) of
    its ``summary.json``, whose final metrics a run trained again from a fresh clone must reproduce; None for a
    directory without that record. A fine-tune names the model it starts from by it."""
    record = Path(run_dir) / "summary.json"
    if not record.is_file() or "final" not in read_json(record, expect=dict):
        return None
    return sha256_file(record)[:16]
