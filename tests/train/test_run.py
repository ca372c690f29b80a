"""The run-directory owner, through the installed `roformer` command and real faults: two real processes on one
directory, a lock left by a SIGKILLed process, real symbolic links, a run whose records are gone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roformer.errors import RunConflict
from roformer.train import TrainConfig, Trainer
from roformer.train.run import RunDirectory

from ..conftest import require_data
from ..train_helper import tiny_setup

ROFORMER = str(Path(sys.executable).parent / "roformer")
HOLD = ("import sys, time\nfrom roformer.train.run import RunDirectory\n"
        "with RunDirectory(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def roformer(*args, **kwargs):
    return subprocess.run([ROFORMER, *map(str, args)], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, **kwargs)


def one_line(result, code=2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("roformer: error: "), result.stderr
    return lines[0]


def hold(directory: Path) -> subprocess.Popen:
    """Another real process that holds ``directory`` as a run until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small text corpus of blank-line separated documents (what `pretrain --corpus FILE` takes)."""
    g = torch.Generator().manual_seed(0)
    words = ["rotary", "position", "embedding", "relative", "attention", "query", "key", "value", "token", "layer",
             "the", "a", "of", "and", "with", "model", "sequence", "length", "decay", "angle"]
    docs = [" ".join(words[int(i)] for i in torch.randint(len(words), (40,), generator=g)) for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path


def tiny_trainer(out: Path, **settings) -> Trainer:
    model, batch_fn, loss_fn = tiny_setup()
    config = TrainConfig(**{"max_steps": 4, "lr": 1e-2, "save_every": 2, "progress": False, **settings})
    return Trainer(model, config, out, batch_fn, loss_fn, identity={"data": "stream A"})


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_ones_lock_is_taken_over(tmp_path, corpus):
    out = tmp_path / "run"
    holder = hold(out)
    try:
        line = one_line(roformer("pretrain", "--corpus", corpus, "--preset", "smoke", "--out", out))
        assert "in use by another process" in line and f"pid {holder.pid}" in line
        assert not (out / "tokenizer.json").exists()  # refused before any work
        # a directory inside one another process is writing is refused too
        line = one_line(roformer("pretrain", "--corpus", corpus, "--preset", "smoke", "--out", out / "inner"))
        assert "in use by another process" in line and "inside it" in line
        assert not (out / "inner").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed process's lock file is still there; the kernel released its lock: taken over, with a note
    assert json.loads((out / ".lock").read_text())["pid"] == holder.pid
    result = roformer("pretrain", "--corpus", corpus, "--preset", "smoke", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "taking over the lock left by a run that is no longer running" in result.stderr
    assert (out / "model" / "config.json").is_file()


@pytest.mark.slow
def test_two_real_runs_racing_for_one_directory_one_is_refused_and_nothing_mixes(tmp_path):
    require_data("tinyshakespeare")
    out = tmp_path / "race"
    command = [ROFORMER, "train", "--preset", "smoke", "--data", "tinyshakespeare", "--out", str(out)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another process" in refused or "already holds a run" in refused
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run's records, not two interleaved


def test_pretrain_again_without_resume_changes_nothing_and_resume_on_another_corpus_is_refused(tmp_path, corpus):
    out = tmp_path / "run"
    assert roformer("pretrain", "--corpus", corpus, "--preset", "smoke", "--out", out).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(f"another corpus, document {i} about angles and tokens" for i in range(300)))
    line = one_line(roformer("pretrain", "--corpus", other, "--preset", "smoke", "--out", out))
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    line = one_line(roformer("pretrain", "--corpus", other, "--preset", "smoke", "--out", out, "--resume"))
    assert "cannot resume" in line and "corpus" in line
    # the vocabulary (learnt first by the recipe) and the model are those of the first run, byte for byte
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # --overwrite replaces the run, as asked
    result = roformer("pretrain", "--corpus", other, "--preset", "smoke", "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "run.json").read_text())["corpus"] == str(other)
    line = one_line(roformer("pretrain", "--corpus", other, "--out", out, "--overwrite", "--resume"))
    assert "not allowed with argument" in line


def test_a_trained_model_without_checkpoints_is_never_replaced_silently(tmp_path):
    out = tmp_path / "run"
    with RunDirectory(out) as run:
        run.begin({"data": "stream A"})
        run.save_directory("model", lambda path: (path.mkdir(), (path / "config.json").write_text("{}")))
    (out / "run.json").unlink()  # only the trained model is left
    with pytest.raises(RunConflict, match=r"already holds a run \(model\)"):
        tiny_trainer(out).fit()
    assert (out / "model" / "config.json").read_text() == "{}"


def test_checkpoints_without_records_are_compared_with_the_settings_stored_in_them(tmp_path):
    out = tmp_path / "run"
    tiny_trainer(out).fit()
    for record in ("run.json", "train_config.json"):
        (out / record).unlink()
    with pytest.raises(RunConflict, match="lr: run has 0.01, command has 0.1"):
        tiny_trainer(out, lr=0.1).fit(resume=True)
    trainer = tiny_trainer(out)
    trainer.identity = {"data": "stream B"}
    with pytest.raises(RunConflict, match="data: run has 'stream A', command has 'stream B'"):
        trainer.fit(resume=True)
    assert not (out / "run.json").exists()  # nothing was rewritten by the refused resumes
    assert tiny_trainer(out).fit(resume=True) == {} and (out / "run.json").is_file()  # the same run: finished


def test_symbolic_links_out_of_the_run_are_refused_never_written_through_or_read(tmp_path):
    outside = tmp_path / "someone_elses"
    outside.mkdir()
    (outside / "notes.json").write_text('{"final": {"validation_loss": 0.1}}')
    out = tmp_path / "run"
    tiny_trainer(out, max_steps=2).fit()
    # a record that links out of the run would be read as the run's result, and a directory or the appended
    # metrics would be written through: each is refused before any work, the target untouched
    for name, target in (("summary.json", outside / "notes.json"), ("metrics.jsonl", outside / "metrics.jsonl"),
                         ("checkpoints", outside / "checkpoints")):
        entry = out / name
        entry.rename(target) if entry.exists() else None
        entry.symlink_to(target)
        before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
        with pytest.raises(RunConflict, match=f"{name} is a symbolic link to .* outside the run directory"):
            tiny_trainer(out, max_steps=2).fit(resume=True)
        assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
        entry.unlink()
        target.rename(entry) if target.exists() and name != "summary.json" else None
    # the lock file too: never followed
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(outside / "notes.json")
    with pytest.raises(RunConflict, match="lock"):
        tiny_trainer(out, max_steps=2).fit(resume=True)
    assert (outside / "notes.json").read_text() == '{"final": {"validation_loss": 0.1}}'
    (out / ".lock").unlink()
    # a link that stays inside the run is fine, and the run directory itself may be a link (runs/ on a
    # larger disk): that is the user's choice
    link = tmp_path / "linked"
    link.symlink_to(out, target_is_directory=True)
    assert tiny_trainer(link, max_steps=2).fit(resume=True) == {}


def test_a_finished_result_is_reused_only_after_its_identity_is_checked(tmp_path):
    out = tmp_path / "run"
    with RunDirectory(out) as run:
        run.begin({"task": "sst2"})
        run.write_json("result.json", {"accuracy": 0.5})
        assert run.result("result.json") is None  # not resuming: made again
    with RunDirectory(out, resume=True) as run:
        run.begin({"task": "sst2"})
        assert run.result("result.json") == {"accuracy": 0.5}
    with RunDirectory(out, resume=True) as run, pytest.raises(RunConflict, match="task: run has 'sst2'"):
        run.begin({"task": "qnli"})
    (out / "run.json").unlink()  # an older version's result, with nothing to check it against
    with RunDirectory(out, resume=True) as run, pytest.raises(RunConflict, match="records no settings"):
        run.begin({"task": "sst2"})


def test_files_are_written_with_the_umask_and_the_lock_is_released(tmp_path):
    out = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        with RunDirectory(out) as run:
            run.begin({"x": 1})
            run.write_text("report.md", "# report")
            run.save_directory("model", lambda path: (path.mkdir(), (path / "w.bin").write_bytes(b"0")))
    finally:
        os.umask(previous)
    assert (out / "report.md").stat().st_mode & 0o777 == 0o640
    assert (out / "model" / "w.bin").stat().st_mode & 0o777 == 0o640
    started = time.perf_counter()
    holder = hold(out)  # another process gets it at once: released on exit
    holder.kill()
    holder.wait()
    assert time.perf_counter() - started < 30


def test_a_run_trained_again_must_end_at_its_record(tmp_path):
    """The owner's audit of a finished run trained again (its weights gone): it must end at the recorded metrics
    to 1e-6; if not, the checkpoints it made are removed and the error names the metric. Either way the recorded
    metrics.jsonl comes back."""
    recorded_curve = '{"step": 4, "eval/loss": 2.5}\n'
    for accepted, final in ((True, {"loss": 2.5 * (1 + 1e-8)}), (False, {"loss": 2.5 * (1 + 1e-5)})):
        run_dir = tmp_path / str(accepted)
        (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(recorded_curve)
        with RunDirectory(run_dir, resume=True) as owner:
            check = owner.retraining({"loss": 2.5, "note": "not a number: not compared"})
            (run_dir / "checkpoints" / "step-00000004").mkdir()  # what training again made
            (run_dir / "metrics.jsonl").write_text('{"step": 4, "eval/loss": 2.6}\n')
            if accepted:
                check(final)
            else:
                with pytest.raises(ValueError, match=r"trained again, ending with loss 2.500025 where the run "
                                                     r"recorded 2.5"):
                    check(final)
        kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert kept == (["step-00000002", "step-00000004"] if accepted else ["step-00000002"])
        assert (run_dir / "metrics.jsonl").read_text() == recorded_curve
        with RunDirectory(run_dir) as owner:
            owner.retraining(None)({"loss": 99.0})  # no record: nothing to check
