"""The trainer: schedules, atomic checkpoints, exact resume after a kill, 2-process DDP, averaging."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roformer.train import TrainConfig, Trainer, average_checkpoints, list_checkpoints, lr_multiplier
from roformer.train import checkpoint as ckpt

from .conftest import REPO, require_data
from .train_helper import tiny_setup

HELPER = str(Path(__file__).with_name("train_helper.py"))


def run_helper(*args, launcher=(sys.executable,), expect_returncode=0):
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, HELPER, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == expect_returncode, proc.stderr[-3000:]
    return proc


def losses(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("eval/bpc")) for r in records]


def test_inverse_sqrt_schedule_of_the_paper():
    peak, warmup = 5e-4, 100
    lrs = [peak * lr_multiplier("inverse_sqrt", s, warmup, 10_000, peak) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-7 + (peak - 1e-7) / warmup)  # from 1e-7, linearly
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[4 * warmup - 1] == pytest.approx(peak / 2)  # peak * sqrt(warmup / step)
    assert all(a < b for a, b in zip(lrs[: warmup - 1], lrs[1:warmup], strict=True))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_schedules_end_at_the_floor(schedule):
    values = [lr_multiplier(schedule, s, 10, 100, 1.0, min_ratio=0.1) for s in range(100)]
    assert values[9] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="int8")


def test_checkpoint_write_is_atomic_and_keeps_the_last_k(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    before = load_file(str(tmp_path / "step-00000003" / "model.safetensors"))

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 4, model, {"step": 4}, keep_last=2)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"  # no half-written step-4 under a real name
    after = load_file(str(tmp_path / "step-00000003" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_average_of_checkpoints(tmp_path):
    model = torch.nn.Linear(3, 2)
    weights = []
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.normal_()
        weights.append(model.weight.detach().clone())
        ckpt.save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=5)
    avg = average_checkpoints(list_checkpoints(tmp_path))
    torch.testing.assert_close(avg["weight"], torch.stack(weights).mean(0))


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    require_data("enwik8")
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_helper("full", full)
    run_helper("kill-at", killed, 17, expect_returncode=-9)  # really killed (SIGKILL), mid-run
    assert [p.name for p in list_checkpoints(killed / "checkpoints")][-1] == "step-00000010"
    assert max(s for s, *_ in losses(killed)) == 15  # it logged past its last checkpoint
    run_helper("resume", killed)
    assert losses(killed) == losses(full)  # every logged loss and evaluation, bit for bit
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    run_helper("single", tmp_path / "single")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517")
    run_helper("ddp", tmp_path / "ddp", launcher=torchrun)
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert [s for s, *_ in single] == [s for s, *_ in ddp] == list(range(1, 7))
    for (_, a, _), (_, b, _) in zip(single, ddp, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5)
    ws = load_file(str(tmp_path / "single" / "checkpoints" / "step-00000006" / "model.safetensors"))
    wd = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-00000006" / "model.safetensors"))
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-4, atol=1e-5)
    # and the update was not trivial
    assert single[0][1] - single[-1][1] > 0.05


@pytest.mark.parametrize("optimizer", ["adamw", "amos"])
def test_resume_continues_every_optimizer_exactly(tmp_path, optimizer):
    """A run stopped after its checkpoint at update 3 and resumed ends with the same weights as one run of 6
    updates: the optimizer's state (Amos's per-parameter decay included) goes through the checkpoint."""
    from roformer.train import Trainer

    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=data), torch.randn(64, 1, generator=data)
    stop_at = {"step": None}

    class Stopped(Exception):
        pass

    def batch_fn(step, micro):
        if step == stop_at["step"]:
            raise Stopped
        rows = torch.randint(64, (16,), generator=torch.Generator().manual_seed(step))
        return {"x": x[rows], "y": y[rows]}

    def loss_fn(net, batch):
        return torch.nn.functional.mse_loss(net(batch["x"]), batch["y"]), 16

    def net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def train(run_dir, resume=False):
        model = net()
        config = TrainConfig(max_steps=6, optimizer=optimizer, lr=1e-2, warmup_steps=2, schedule="constant",
                             save_every=3, log_every=1, progress=False)
        trainer = Trainer(model, config, run_dir, batch_fn, loss_fn)
        trainer.fit(resume=resume)
        return model, trainer

    whole, trainer = train(tmp_path / "whole")
    assert type(trainer.optimizer).__name__ == {"adamw": "AdamW", "amos": "Amos"}[optimizer]
    stop_at["step"] = 4
    with pytest.raises(Stopped):
        train(tmp_path / "split")
    assert [p.name for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step-00000003"]
    stop_at["step"] = None
    resumed, _ = train(tmp_path / "split", resume=True)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(net()[0].weight, whole[0].weight)  # it did train
    # stopped before its first checkpoint, the resumed run starts again at update 1: its curve is logged once
    stop_at["step"] = 2
    with pytest.raises(Stopped):
        train(tmp_path / "early")
    assert not list_checkpoints(tmp_path / "early" / "checkpoints")
    stop_at["step"] = None
    train(tmp_path / "early", resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "early" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("fault", ["nan loss", "nan gradient"])
def test_a_non_finite_update_stops_the_run_and_no_checkpoint_is_lost(tmp_path, fault):
    """A real NaN in the loss (or in the gradients of a finite loss, with no clipping) at update 5: the run stops
    with one line naming the update and the likely cause, before applying it; the weights stay finite, and the
    finite checkpoint of update 4 is kept (keep_last=1 would have pruned it for a NaN one)."""
    from roformer.train import NonFiniteLoss, Trainer

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))

    def batch_fn(step, micro):
        return {"x": x, "step": torch.tensor(step)}

    def loss_fn(net, batch):
        loss = net(batch["x"]).square().mean()
        if int(batch["step"]) == 4:  # the batch of update 5
            if fault == "nan loss":
                loss = loss * float("nan")
            else:  # d/dw sqrt(|w - w|) at 0: inf * 0 = NaN in the gradient, while the loss is 0
                w = net.weight
                loss = loss + (w - w.detach()).abs().sqrt().sum()
        return loss, 32

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    config = TrainConfig(max_steps=10, lr=1e-2, warmup_steps=0, schedule="constant", save_every=2, keep_last=1,
                         log_every=1, progress=False, clip_grad_norm=1.0 if fault == "nan loss" else None)
    with pytest.raises(NonFiniteLoss, match=r"update 5: the loss is .* learning rate .*step-00000004\) was saved"):
        Trainer(model, config, tmp_path, batch_fn, loss_fn).fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004"]
    saved = load_file(str(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


class Stopped(Exception):
    pass


def _linear_run(run_dir, max_steps, stop_at=None):
    """A tiny regression trainer, checkpointing every 2 updates; ``stop_at``: raise when that update's batch is
    asked for (a run stopped by an error after its checkpoint)."""
    from roformer.train import Trainer

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))

    def batch_fn(step, micro):
        if step == stop_at:
            raise Stopped
        return {"x": x}

    torch.manual_seed(0)
    config = TrainConfig(max_steps=max_steps, lr=1e-2, warmup_steps=0, schedule="constant", save_every=2,
                         log_every=1, progress=False)
    return Trainer(torch.nn.Linear(4, 1), config, run_dir, batch_fn,
                   lambda net, batch: (net(batch["x"]).square().mean(), 32))


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    """What a kill or a full disk in the middle of an append leaves: the resume warns, names the file and goes on;
    a damaged line before the last is an error naming the file and the line."""
    with pytest.raises(Stopped):  # after the checkpoint of update 2 and the record of update 3
        _linear_run(tmp_path, 6, stop_at=3).fit()
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b'{"step": 4, "loss": 0.12')  # torn
    with pytest.warns(UserWarning, match="metrics.jsonl: its last line is incomplete"):
        _linear_run(tmp_path, 6).fit(resume=True)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6 and len(set(steps)) >= 6
    metrics.write_text(metrics.read_text().replace('{"step": 2', '{"step: 2', 1))
    with pytest.raises(ValueError, match=r"metrics.jsonl: line \d+ is not valid JSON"):
        _linear_run(tmp_path, 6).fit(resume=True)


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _linear_run(tmp_path, 2).fit()
    finally:
        os.umask(old)
    files = list((tmp_path / "checkpoints").glob("step-*/*"))
    assert files and all(f.stat().st_mode & 0o777 == 0o644 for f in files), [(f.name, oct(f.stat().st_mode)) for f
                                                                             in files]


def test_fp16_trains_with_a_gradient_scaler_that_skips_overflowing_updates(tmp_path):
    """float16 autocast gets torch.amp's GradScaler: an update whose gradients overflow is skipped and the scale
    lowered (not a NaN run, not a stop); the scale is in the checkpoint, so a resume continues it."""
    model, batch_fn, loss_fn = tiny_setup()

    def overflowing_loss(net, batch):
        loss, n = loss_fn(net, batch)
        return (loss * 1e30 if overflowing_loss.step == 2 else loss), n

    overflowing_loss.step = 0

    def counting_batch(step, micro):
        overflowing_loss.step = step
        return batch_fn(step, micro)

    config = TrainConfig(max_steps=4, lr=1e-2, dtype="float16", progress=False, save_every=2, log_every=1)
    trainer = Trainer(model, config, tmp_path / "run", counting_batch, overflowing_loss)
    assert trainer.scaler.is_enabled()
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.scaler.get_scale() == 65536.0 / 2  # one skipped update
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000004" / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] == 65536.0 / 2
    assert not Trainer(*tiny_setup()[:1], TrainConfig(max_steps=2), tmp_path / "x", batch_fn, loss_fn
                       ).scaler.is_enabled()  # float32: no scaling, the arithmetic of every recorded run
