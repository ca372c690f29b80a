"""Fine-tuning a pre-trained model on a labelled task: the one loop of the GLUE (§4.3), Chinese (§4.5) and
GPT-downstream (§4.7, Fig. 6) recipes.

A fine-tune is a pre-trained model, a task's training examples, a few settings and a seed, trained in a run
directory of its own. It runs ``epochs`` passes over the examples in batches of ``batch_size`` (each epoch a
fresh permutation, :func:`~roformer.train.batches.epoch_batches`), with a linear learning-rate decay to zero
after a warm-up over the first 10% of the updates, AdamW with weight decay 0.01 and gradients clipped at norm 1,
the validation metrics after every epoch and a checkpoint at every epoch's end. The seed sets the new head's
initialisation (drawn after ``torch.manual_seed(seed)``), the dropout and, through ``order_seed``, the data
order.

The run's owner (:class:`~roformer.train.run.RunDirectory`) records the identity the recipe gives and the
training settings before the first update; a finished fine-tune (its result file) is reused only by the same
run, and an interrupted one resumes from its last epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidArgument
from .batches import epoch_batches
from .run import RunDirectory
from .trainer import TrainConfig, Trainer, is_main_process

__all__ = ["FineTune", "finetune"]


@dataclass(frozen=True)
class FineTune:
    """How long and how fast to fine-tune: ``epochs`` over the training examples in batches of ``batch_size``
    at peak learning rate ``lr``; ``max_steps`` (smoke runs) cuts the updates short."""
    epochs: int
    batch_size: int
    lr: float
    log_every: int = 10
    max_steps: int | None = None

    def train_config(self, examples: int, seed: int, device: str = "cpu", dtype: str | None = None) -> TrainConfig:
        steps_per_epoch = max(1, examples // self.batch_size)
        total = self.max_steps or self.epochs * steps_per_epoch
        return TrainConfig(max_steps=total, lr=self.lr, schedule="linear", warmup_steps=max(1, total // 10),
                           min_lr_ratio=0.0, weight_decay=0.01, clip_grad_norm=1.0, eval_every=steps_per_epoch,
                           save_every=steps_per_epoch, keep_last=1, log_every=self.log_every, seed=seed,
                           device=device, dtype=dtype or "float32")


def finetune(run_dir: str | Path, identity: dict, settings: FineTune, seed: int, *,
             make_model: Callable[[], nn.Module], examples: int, make_batch: Callable[[list[int]], dict],
             loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, int]], eval_fn: Callable[[nn.Module], dict],
             order_seed: Callable[[int], int], finish: Callable[[nn.Module, dict, RunDirectory], dict] | None = None,
             result_file: str = "result.json", device: str = "cpu", dtype: str | None = None,
             resume: bool = False, desc: str | None = None) -> dict:
    """Fine-tune one model in ``run_dir`` and return its result.

    ``make_model()`` builds the model to train (the pre-trained body and a new head); it is called after
    ``torch.manual_seed(seed)``. ``make_batch(rows)`` gives the batch of those training examples, ``loss_fn`` and
    ``eval_fn`` are the :class:`~roformer.train.Trainer`'s, and ``order_seed(epoch)`` seeds the epoch's
    permutation. ``finish(model, final_metrics, owner)`` turns the trained model into the result (the final
    validation metrics when not given), written to ``result_file``; a finished fine-tune of the same run
    returns that file's result without training."""
    if examples < settings.batch_size:
        raise InvalidArgument(f"cannot fine-tune in {run_dir}: {examples} training examples are fewer than one batch "
                              f"of {settings.batch_size}")
    config = settings.train_config(examples, seed, device, dtype)
    with RunDirectory(run_dir, resume=resume) as owner:
        owner.begin(identity, dataclasses.asdict(config))
        done = owner.result(result_file)
        if done is not None:
            return done
        torch.manual_seed(seed)  # the new head
        model = make_model()
        batch_fn, _ = epoch_batches(examples, settings.batch_size, config.grad_accum, order_seed, make_batch)
        final = Trainer(model, config, owner.path, batch_fn, loss_fn, eval_fn, desc=desc,
                        identity=identity).fit(resume=resume)
        result = finish(model, final, owner) if finish else final
        if is_main_process():
            owner.write_json(result_file, result)
        return result
