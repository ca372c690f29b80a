"""Train several decoder-LM variants on the same token stream, with the same seed, data order and budget,
and collect their curves and final validation loss: the shared core of the §4.4 and §4.6-4.7 recipes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from ..io import fingerprint
from ..models.decoder import DecoderConfig, DecoderLM
from ..report import read_metrics
from ..train import TrainConfig
from ..train.lm import next_token_loss, stream_loss, window_batches
from .seeds import SeedRun, train_seeds


def train_variants(variants: dict[str, DecoderConfig], train: torch.Tensor, valid: torch.Tensor, seq_len: int,
                   batch_size: int, train_config: TrainConfig, out: Path, resume: bool = False,
                   seeds: Sequence[int] = (0,)) -> dict[str, list[dict]]:
    """Train each decoder variant once per seed in ``out/<name>/seed<k>`` (:func:`.seeds.train_seeds`) on
    windows of ``seq_len`` tokens, evaluated by the validation stream's loss; {name: [summary per seed]}."""

    def variant(config: DecoderConfig):
        def make(seed: int) -> SeedRun:
            functions = (window_batches(train, seq_len, batch_size, seed, train_config.grad_accum), next_token_loss,
                         lambda net: {"loss": stream_loss(net, valid, seq_len)})
            identity = {"model": dataclasses.asdict(config), "seq_len": seq_len, "batch_size": batch_size,
                        "train_data": fingerprint(train), "validation_data": fingerprint(valid)}
            return SeedRun(DecoderLM(config), train_config, functions, identity)
        return make

    return train_seeds({name: variant(config) for name, config in variants.items()}, out, resume, seeds)


def eval_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of a run, in step order."""
    return [(r["step"], r["eval/loss"]) for r in read_metrics(run_dir) if "eval/loss" in r]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step at which the curve is at or below ``target`` (None if never)."""
    return next((step for step, loss in curve if loss <= target), None)
