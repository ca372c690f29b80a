"""The one training loop every recipe uses.

A recipe hands the trainer a model and three functions:
- ``batch_fn(step, micro) -> dict of tensors``: the micro-batch of the whole (global) batch for that update. It
  must be a pure function of its arguments (e.g. draw from a generator seeded with the step), which makes the
  step the data position: resuming at step s replays exactly the batches an uninterrupted run would see.
- ``loss_fn(model, batch) -> (mean loss, number of tokens)``.
- ``eval_fn(model) -> dict of metrics`` (optional), run every ``eval_every`` updates and at the end.

It runs single-process or under ``torchrun`` (DDP: gloo on CPU, nccl on CUDA), where each process takes
its share of the rows of every micro-batch, so N processes compute the same update as one process with the
same global batch.

A run directory holds ``train_config.json``, ``run.json`` (what the recipe says identifies the run: preset, data,
model shape), ``metrics.jsonl`` (one JSON record per logged step and per evaluation) and ``checkpoints/``;
:class:`~roformer.train.run.RunDirectory` owns it (lock, identity, refusal to replace a run). Resuming checks
that both JSON files (or, without them, the newest checkpoint's stored settings) agree with the command, so a
run is never continued with other settings or data; a checkpoint that cannot be read is reported and the
previous one is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..errors import InvalidArgument, RoformerError
from ..io import atomic_write_text, read_jsonl
from ..models.fields import NON_NEGATIVE, POSITIVE, POSITIVE_FLOAT, check_fields
from .checkpoint import (
    CorruptCheckpoint,
    UnsafeCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_temporary,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .optim import SCHEDULES, build_optimizer, lr_multiplier
from .run import RunDirectory

__all__ = ["TrainConfig", "Trainer", "NonFiniteLoss", "init_distributed", "is_main_process",
           "preset_train_config"]


class NonFiniteLoss(RoformerError, ValueError):
    """The loss or the gradient norm of an update is not finite: the run stops before applying it."""


@dataclass
class TrainConfig:
    max_steps: int = 1000
    grad_accum: int = 1  # micro-batches per update
    optimizer: str = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip_grad_norm: float | None = 1.0
    dtype: str = "float32"  # float32, or bfloat16 / float16 autocast
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        check_fields(self, {"max_steps": POSITIVE, "grad_accum": POSITIVE, "lr": POSITIVE_FLOAT, "eps": POSITIVE_FLOAT,
                            "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE,
                            "min_lr_ratio": (0.0, 1.0, False, False), "clip_grad_norm": POSITIVE_FLOAT,
                            "eval_every": NON_NEGATIVE, "save_every": NON_NEGATIVE, "keep_last": NON_NEGATIVE,
                            "log_every": POSITIVE, "seed": NON_NEGATIVE})
        if self.schedule not in SCHEDULES:
            raise InvalidArgument(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise InvalidArgument(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_steps < 1 or self.grad_accum < 1:
            raise InvalidArgument("max_steps and grad_accum must be at least 1")


def preset_train_config(preset: dict, device: str = "cpu", dtype: str | None = None,
                        max_steps: int | None = None, **fixed) -> TrainConfig:
    """A recipe preset's training settings with the command line's device, dtype and step overrides."""
    values = {**preset, **fixed, "device": device}
    if dtype:
        values["dtype"] = dtype
    if max_steps:
        values["max_steps"] = max_steps
    return TrainConfig(**values)


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return rank, world, torch.device(device)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: str | Path,
        batch_fn: Callable[[int, int], dict],
        loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, int]],
        eval_fn: Callable[[nn.Module], dict] | None = None,
        desc: str | None = None,
        identity: dict | None = None,
    ):
        self.config, self.run_dir = config, Path(run_dir)
        self.batch_fn, self.loss_fn, self.eval_fn = batch_fn, loss_fn, eval_fn
        self.rank, self.world, self.device = init_distributed(config.device)
        torch.manual_seed(config.seed + self.rank)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, config.betas,
                                         config.eps)
        c = config
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_multiplier(c.schedule, step, c.warmup_steps, c.max_steps, c.lr, c.min_lr_ratio),
        )
        # fp16 autocast: gradients of small losses underflow in float16; the scaler multiplies the loss before the
        # backward pass and skips an update whose gradients overflowed (lowering the scale), as torch.amp does
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.dtype == "float16")
        self.ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.step, self.desc, self.identity = 0, desc, identity or {}
        self.resumed_finished = False  # set by fit(): the run was already complete, nothing was trained
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self._tb = None

    # -- bookkeeping --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if not is_main_process():
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def _state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "scaler": self.scaler.state_dict(),
            "train_config": dataclasses.asdict(self.config),
            "identity": self.identity,  # compared on resume when run.json is gone
        }

    def save(self) -> Path | None:
        if not is_main_process():
            return None
        return save_checkpoint(self.checkpoint_dir, self.step, self.model, self._state(), self.config.keep_last)

    def resume(self) -> bool:
        """Continue from the latest readable checkpoint in the run directory; False when there is none."""
        remove_temporary(self.checkpoint_dir)
        found = list_checkpoints(self.checkpoint_dir)
        errors = []
        for path in reversed(found):
            try:
                state = load_checkpoint(path, self.model)
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                if state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
                set_rng_state(state["rng"])  # python/numpy; torch is reseeded from the step in the loop
            except (CorruptCheckpoint, UnsafeCheckpoint, KeyError, IndexError, TypeError) as e:
                # truncated, damaged or refused: the previous checkpoint may still be good
                errors.append(e if isinstance(e, ValueError) else CorruptCheckpoint(
                    f"checkpoint {path}: its trainer state is damaged ({type(e).__name__}: {e})"))
                print(f"warning: {errors[-1]}; using the previous checkpoint", flush=True)
                continue
            self.step = state["step"]
            # records past the checkpoint belong to the interrupted attempt; they are recomputed identically
            if is_main_process() and self.metrics_path.exists():
                kept = [r for r in read_jsonl(self.metrics_path) if r["step"] <= self.step]
                atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            self.resumed_from = path
            return True
        if found:  # the newest one's reason, in its own type (an unsafe pickle stays UnsafeCheckpoint)
            raise type(errors[0])(f"cannot resume {self.run_dir}: none of its {len(found)} checkpoints is readable; "
                                  f"the newest: {errors[0]}")
        return False

    # -- the loop -----------------------------------------------------------------------------------
    def _autocast(self):
        if self.config.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.config.dtype))

    def _shard(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                if self.world > 1:
                    if v.shape[0] % self.world:
                        raise InvalidArgument(f"batch of {v.shape[0]} rows does not split over {self.world} processes")
                    v = v.chunk(self.world)[self.rank]
                v = v.to(self.device, non_blocking=True)
            out[k] = v
        return out

    def evaluate(self) -> dict:
        if self.eval_fn is None or not is_main_process():
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.eval_fn(self.model)
        self.model.train()
        self._log({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        return metrics

    def last_eval(self) -> dict:
        """The most recent evaluation record of the run (keys without the ``eval/`` prefix)."""
        if not self.metrics_path.exists():
            return {}
        evals = [r for r in read_jsonl(self.metrics_path) if any(k.startswith("eval/") for k in r)]
        return {k.removeprefix("eval/"): v for k, v in evals[-1].items() if k != "step"} if evals else {}

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, lr: float) -> None:
        """Stop before an update whose loss or gradients are not finite (one host sync per update): it would make
        every weight NaN, and a checkpoint saved after it would replace the finite ones."""
        if self.scaler.is_enabled():  # fp16: an overflowing gradient is the scaler's to skip (it lowers the scale);
            grad_norm = loss.new_zeros(())  # the loss must still be finite
        elif grad_norm is None:  # not clipped: the norm is still needed to see an inf/NaN gradient
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) \
                if grads else loss.new_zeros(())
        if bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            return
        latest = latest_checkpoint(self.checkpoint_dir)
        raise NonFiniteLoss(
            f"update {self.step + 1}: the loss is {float(loss):g} and the gradient norm {float(grad_norm):g}; the run "
            f"stopped before applying it (likely causes: a learning rate too high, it is {lr:g}; fp16 overflow; bad "
            f"data). Nothing after the last finite checkpoint ({latest or 'none yet'}) was saved, and it is kept")

    def fit(self, resume: bool = False, recorded: dict | None = None, overwrite: bool = False) -> dict:
        """Train to ``max_steps``; returns the final evaluation metrics.

        ``recorded``: the final evaluation of a finished run (from its summary), for a resume that finds no
        final checkpoint, as in a fresh clone of a report, which keeps the records and not the weights. The run
        then trains again and must end where it was recorded (the run owner's check,
        :meth:`~roformer.train.run.RunDirectory.retraining`); if not, the run directory is left as it was (the
        new checkpoints removed) and a ValueError says so. Either way its metrics.jsonl stays the recorded one.

        The run directory is held (:class:`~roformer.train.run.RunDirectory`) for the whole of it: locked against
        other processes, its identity and settings compared (``resume``) or the directory required to hold no
        run (unless ``overwrite``), and recorded before the first update."""
        with RunDirectory(self.run_dir, resume=resume, overwrite=overwrite) as run:
            run.begin(self.identity, dataclasses.asdict(self.config))
            check_record = run.retraining(recorded)
            final = self._fit(resume)
            if not self.resumed_finished:
                check_record(final)
                self.save()
            return final

    def _fit(self, resume: bool) -> dict:
        c = self.config
        resumed = resume and self.resume()
        if is_main_process():
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self._tb = None
        if resumed:
            if is_main_process():
                print(f"resumed from step {self.step} ({self.resumed_from})")
            if self.step >= c.max_steps:
                self.resumed_finished = True
                return self.last_eval()
        elif is_main_process() and self.metrics_path.exists():  # from step 0, also a resume with no checkpoint:
            self.metrics_path.unlink()  # the records of an earlier attempt would repeat in the curves
        net = self.ddp or self.model
        net.train()
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not (c.progress and is_main_process()),
                   unit="step", dynamic_ncols=True, desc=self.desc)
        tokens_seen, t0 = 0, time.perf_counter()
        try:  # the bar ends its line on any exit, so an error message starts on its own
            while self.step < c.max_steps:
                # every update's randomness (dropout) is a function of (seed, rank, step): exact resume, also
                # under DDP where the other processes' RNG states are not in the checkpoint
                torch.manual_seed(c.seed * 1_000_003 + self.step * 1009 + self.rank)
                loss_sum, tokens = 0.0, 0
                for micro in range(c.grad_accum):
                    batch = self._shard(self.batch_fn(self.step, micro))
                    sync = self.ddp is None or micro == c.grad_accum - 1
                    with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                        loss, n = self.loss_fn(net, batch)
                    self.scaler.scale(loss / c.grad_accum).backward()
                    loss_sum += loss.detach().float()
                    tokens += n
                grad_norm = None
                self.scaler.unscale_(self.optimizer)
                if c.clip_grad_norm:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad_norm)
                lr = self.scheduler.get_last_lr()[0]
                self._check_finite(loss_sum / c.grad_accum, grad_norm, lr)
                self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
                self.scaler.update()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                tokens_seen += tokens * self.world
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    loss_value = (loss_sum / c.grad_accum).item()
                    if self.world > 1:
                        t = torch.tensor([loss_value], device=self.device)
                        dist.all_reduce(t)
                        loss_value = t.item() / self.world
                    elapsed = time.perf_counter() - t0
                    record = {"step": self.step, "loss": loss_value, "lr": lr,
                              "tokens_per_s": float(tokens_seen) / max(elapsed, 1e-9)}
                    if grad_norm is not None:
                        record["grad_norm"] = float(grad_norm)
                    self._log(record)
                    bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                if c.eval_every and self.step % c.eval_every == 0 and self.step < c.max_steps:
                    self.evaluate()
                if c.save_every and self.step % c.save_every == 0 and self.step < c.max_steps:
                    self.save()
        finally:
            bar.close()
        final = self.evaluate()
        if self._tb is not None:
            self._tb.close()
        return final
