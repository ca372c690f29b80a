"""Train several decoder-LM variants on the same token stream, with the same seed, data order and budget,
and collect their curves and final validation loss: the shared core of the §4.4 and §4.6-4.7 recipes."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models.decoder import DecoderConfig, DecoderLM
from ..report import read_metrics
from ..train import TrainConfig, Trainer, is_main_process
from ..train.lm import next_token_loss, stream_loss, window_batches


def train_variants(variants: dict[str, DecoderConfig], train: torch.Tensor, valid: torch.Tensor, seq_len: int,
                   batch_size: int, train_config: TrainConfig, out: Path, resume: bool = False,
                   seeds: Sequence[int] = (0,)) -> dict[str, list[dict]]:
    """Train each variant once per seed in ``out/<name>/seed<k>`` and return {name: [summary per seed]}. A seed
    sets the initialisation (random features included) and the data order; every variant sees the same ones.
    A finished run is not retrained when ``resume`` is set."""
    results = {}
    for name, config in variants.items():
        for seed in seeds:
            run_dir, seed_config = out / name / f"seed{seed}", dataclasses.replace(train_config, seed=seed)
            torch.manual_seed(seed)
            model = DecoderLM(config)
            batch_fn = window_batches(train, seq_len, batch_size, seed, train_config.grad_accum)
            started = time.perf_counter()
            identity = {"model": dataclasses.asdict(config), "seq_len": seq_len, "batch_size": batch_size,
                        "train_data": fingerprint(train), "validation_data": fingerprint(valid)}
            trainer = Trainer(model, seed_config, run_dir, batch_fn, next_token_loss,
                              lambda net: {"loss": stream_loss(net, valid, seq_len)}, desc=f"{name} seed {seed}",
                              identity=identity)
            final = trainer.fit(resume=resume)
            if not is_main_process():
                continue
            summary_path = run_dir / "summary.json"
            if resume and summary_path.exists() and trainer.resumed_finished:
                summary = json.loads(summary_path.read_text())  # keeps the minutes of the run that trained it
            else:
                summary = {
                    "final": {"validation_loss": final["loss"], "perplexity": math.exp(final["loss"]),
                              "parameters": sum(p.numel() for p in model.parameters()),
                              "minutes": (time.perf_counter() - started) / 60},
                    "config": dataclasses.asdict(config),
                    "train": dataclasses.asdict(seed_config),
                }
                summary_path.write_text(json.dumps(summary, indent=2))
                model.save_pretrained(run_dir / "model")
            results.setdefault(name, []).append(summary)
    return results


def fingerprint(tokens: torch.Tensor) -> str:
    """Length and CRC-32 of a token stream: what a resume compares to know it trains on the same data."""
    return f"{tokens.numel()} tokens, crc32 {zlib.crc32(tokens.cpu().numpy().tobytes()):08x}"


def eval_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of a run, in step order."""
    return [(r["step"], r["eval/loss"]) for r in read_metrics(run_dir) if "eval/loss" in r]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step at which the curve is at or below ``target`` (None if never)."""
    return next((step for step, loss in curve if loss <= target), None)
