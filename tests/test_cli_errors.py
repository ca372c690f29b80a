"""Every user mistake through the real `roformer` entry point (a subprocess): one line `roformer: error: ...`
naming the problem, exit code 2 (130 for Ctrl-C), never a traceback; runs are never silently mixed."""

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roformer import RoFormerConfig, RoFormerForCausalLM
from roformer.data.tokenizer import train_wordpiece
from roformer.errors import InvalidArgument, UnknownName
from roformer.models.decoder import DecoderConfig, DecoderLM

from .conftest import require_data, tiny_encoder_dir
from .train_helper import tiny_setup

ROFORMER = str(Path(sys.executable).parent / "roformer")


def run(*args, cwd=None, env=None):
    return subprocess.run([ROFORMER, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def assert_error(result, *words, code=2):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("roformer: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("byte_model")
    torch.manual_seed(0)
    config = RoFormerConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, pad_token_id=None, type_vocab_size=1, is_decoder=True)
    RoFormerForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("args,words", [
    (["generate", "--top-k", "0"], ["--top-k", "at least 1"]),
    (["generate", "--top-k", "-3"], ["--top-k"]),
    (["generate", "--temperature", "nan"], ["--temperature", "finite"]),
    (["generate", "--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["fill-mask", "a [MASK] b", "--top-k", "-1"], ["--top-k"]),
    (["fill-mask", "a [MASK] b", "--top-k", "0"], ["--top-k"]),
    (["train", "--device", "cuda"], ["--device", "no CUDA"]),
    (["train", "--device", "foo"], ["--device", "not a device"]),
    (["train", "--data", "wikitext"], ["--data", "tinyshakespeare"]),
    (["train", "--max-steps", "0"], ["--max-steps", "at least 1"]),
    (["finetune", "--task", "sst2", "--model", "x", "--seeds", "0"], ["--seeds"]),
    (["finetune", "--task", "sst2", "--model", "x", "--lrs", "1e-4,-1"], ["-1", "above 0"]),
    (["translate", "--max-source-tokens", "-1"], ["--max-source-tokens"]),
    (["translate", "--length-penalty", "-5"], ["--length-penalty"]),
    (["translate", "--batch-size", "0"], ["--batch-size"]),
    (["decay", "--base", "0"], ["--base", "above 1"]),
    (["decay", "--dim", "63"], ["even"]),
    (["experiment", "performer_lm", "--preset", "tiny"], ["--preset", "smoke"]),
])
def test_invalid_options_are_refused_at_parse_time(args, words):
    assert_error(run(*args), *words)


def test_output_locations(tmp_path):
    existing = tmp_path / "a_file"
    existing.write_text("keep me")
    assert_error(run("decay", "--out", existing), "existing file")
    assert_error(run("decay", "--out", existing / "below"), "is a file")
    assert existing.read_text() == "keep me"
    # a directory nobody may write to (root ignores permission bits, /proc refuses even root)
    assert_error(run("decay", "--out", "/proc/roformer-test/out"), "/proc/roformer-test")


def test_inputs_and_models(tmp_path, byte_model):
    assert_error(run("translate", "--input", tmp_path), "directory")
    assert_error(run("generate", "--model", byte_model, "--prompt", ""), "--prompt is empty")
    decoder = tmp_path / "decoder"
    DecoderLM(DecoderConfig(vocab_size=30, hidden_size=32, num_layers=1, num_heads=2)).save_pretrained(decoder)
    assert_error(run("generate", "--model", decoder), "roformer-decoder", "DecoderLM")
    assert_error(run("fill-mask", "a [MASK] b", "--model", decoder), "roformer-decoder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((byte_model / "config.json").read_text())
    weights = (byte_model / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert_error(run("generate", "--model", broken), "model.safetensors", "truncated")
    (broken / "model.safetensors").write_bytes(b"")
    assert_error(run("generate", "--model", broken), "model.safetensors")
    (broken / "config.json").write_text('{"vocab_size": 256,')
    assert_error(run("generate", "--model", broken), str(broken / "config.json"), "not valid JSON")
    assert_error(run("generate", "--model", tmp_path / "nowhere"), "not a model directory")


def test_experiment_options_it_does_not_take():
    assert_error(run("experiment", "performer_lm", "--models", "x"), "--models", "performer_lm")


def test_absent_data_is_an_error(tmp_path):
    # a valid encoder: the model is checked before the task's data is looked for
    tok = train_wordpiece(["the cat sat on the mat", "a dog ran in the park"] * 10, 100)
    encoder = tiny_encoder_dir(tmp_path / "encoder", tok)
    empty = {"ROFORMER_DATA_DIR": str(tmp_path / "no-mirror"), "ROFORMER_CACHE": str(tmp_path / "no-cache")}
    assert_error(run("finetune", "--task", "mnli", "--model", encoder, env=empty), "mnli")
    assert_error(run("finetune", "--task", "mnli", "--model", "nowhere"), "tokenizer", "nowhere")
    assert_error(run("finetune", "--task", "nosuch", "--model", "nowhere"), "unknown task nosuch")


def test_debug_shows_the_traceback():
    result = run("--debug", "generate", "--model", "nowhere")
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = run("generate", "--model", "nowhere", env={"ROFORMER_DEBUG": "1"})
    assert "Traceback" in result.stderr


@pytest.mark.slow
def test_resume_refuses_another_run_and_ctrl_c_says_how_to_continue(tmp_path):
    require_data("enwik8")
    out = tmp_path / "run"
    assert run("train", "--preset", "smoke", "--out", out, "--max-steps", "4").returncode == 0
    assert_error(run("train", "--preset", "smoke", "--out", out, "--max-steps", "4"), "--resume", "another --out")
    assert_error(run("train", "--preset", "smoke", "--out", out, "--resume", "--max-steps", "4", "--data",
                     "tinyshakespeare"),
                 "cannot resume", "data", "tinyshakespeare")
    assert_error(run("train", "--preset", "smoke", "--out", out, "--resume", "--max-steps", "2"),
                 "cannot resume", "max_steps")
    assert_error(run("train", "--preset", "small", "--out", out, "--resume"), "cannot resume", "preset")
    # a kill at any point leaves a temporary checkpoint directory: the next resume removes it
    (out / "checkpoints" / ".tmp-step-00000009-1").mkdir()
    assert run("train", "--preset", "smoke", "--out", out, "--resume", "--max-steps", "4").returncode == 0
    assert not list((out / "checkpoints").glob(".tmp-*"))

    other = tmp_path / "interrupted"
    # a suite started in the background (`nohup ... &`) inherits an ignored SIGINT, which Python keeps ignoring:
    # give the child the default disposition a terminal's Ctrl-C meets
    process = subprocess.Popen([ROFORMER, "train", "--preset", "smoke", "--out", str(other), "--max-steps", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (other / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err


def test_files_follow_the_umask(tmp_path, byte_model):
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from roformer import RoFormerForCausalLM; "
            "RoFormerForCausalLM.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[3])")
    for umask, expected in (("022", 0o644), ("002", 0o664)):
        out = tmp_path / umask
        subprocess.run([sys.executable, "-c", code, str(byte_model), umask, str(out)], check=True)
        for f in ("config.json", "model.safetensors"):
            assert (out / f).stat().st_mode & 0o777 == expected, (umask, f)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_resume_never_unpickles_code(tmp_path):
    """A trainer_state.pt whose pickle would run code is refused with a clear error; the code does not run."""
    from roformer.train import TrainConfig, Trainer
    from roformer.train.checkpoint import UnsafeCheckpoint

    model, batch_fn, loss_fn = tiny_setup()
    run_dir = tmp_path / "run"
    Trainer(model, TrainConfig(max_steps=2, progress=False), run_dir, batch_fn, loss_fn).fit()
    checkpoint = next((run_dir / "checkpoints").iterdir())
    marker = tmp_path / "marker"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    state["step"] = _RunsCode(marker)
    with open(checkpoint / "trainer_state.pt", "wb") as f:
        pickle.dump(state, f)
    # whoever crafted it also wrote the digest the checkpoint carries, so the pickle itself must be refused
    digests = json.loads((checkpoint / "sha256.json").read_text())
    digests["trainer_state.pt"] = hashlib.sha256((checkpoint / "trainer_state.pt").read_bytes()).hexdigest()
    (checkpoint / "sha256.json").write_text(json.dumps(digests))
    model, batch_fn, loss_fn = tiny_setup()
    trainer = Trainer(model, TrainConfig(max_steps=2, progress=False), run_dir, batch_fn, loss_fn)
    with pytest.raises(UnsafeCheckpoint, match="refused.*could run code"):
        trainer.resume()
    assert not marker.exists()


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    from roformer.train import TrainConfig, Trainer

    model, batch_fn, loss_fn = tiny_setup()
    run_dir = tmp_path / "run"
    Trainer(model, TrainConfig(max_steps=4, save_every=2, keep_last=3, progress=False), run_dir, batch_fn,
            loss_fn).fit()
    newest = sorted((run_dir / "checkpoints").iterdir())[-1]
    weights = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(weights[:100])
    model, batch_fn, loss_fn = tiny_setup()
    trainer = Trainer(model, TrainConfig(max_steps=4, save_every=2, keep_last=3, progress=False), run_dir,
                      batch_fn, loss_fn)
    assert trainer.resume() and trainer.step == 2
    assert "using the previous checkpoint" in capsys.readouterr().out
    json.loads((run_dir / "train_config.json").read_text())


@pytest.mark.slow
def test_experiments_write_to_runs_not_to_the_committed_reports(tmp_path):
    require_data("enwik8")
    result = run("experiment", "performer_lm", "--preset", "smoke", "--seeds", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "performer_lm" / "report.md").is_file()
    assert not (tmp_path / "reports").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real file system that fills up: a 1.6 MB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(small_disk):
    """The second checkpoint of a smoke run does not fit: one line naming the path and the cause (not torch's
    'unexpected pos'), exit 2, the first checkpoint intact; with room again, --resume finishes the run."""
    require_data("enwik8")
    out = small_disk / "run"
    result = run("train", "--preset", "smoke", "--out", out)
    assert_error(result, "no space left", "checkpoints/step-", "--resume")
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-00000010"], checkpoints  # no temporary directory left, the first one kept
    from roformer.experiments import char_lm
    from roformer.train import checkpoint as ckpt

    smoke_model = RoFormerForCausalLM(char_lm.model_config(char_lm.build_config("smoke")))
    ckpt.load_checkpoint(out / "checkpoints" / "step-00000010", smoke_model)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert run("train", "--preset", "smoke", "--out", out, "--resume").returncode == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 30


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(tmp_path):
    require_data("enwik8")
    out = tmp_path / "terminated"
    process = subprocess.Popen([ROFORMER, "train", "--preset", "smoke", "--out", str(out), "--max-steps", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-00000010").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert "Traceback" not in err and lines[-1].startswith("roformer: terminated") and "--resume" in lines[-1]
    assert (out / "checkpoints" / "step-00000010" / "model.safetensors").is_file()


def test_a_damaged_newest_trainer_state_falls_back_to_the_previous(tmp_path, capsys):
    """Not truncated but damaged: bytes in the middle of the newest trainer_state.pt overwritten (it used to end in
    'internal error IndexError'), or a pickle that holds no trainer state."""
    from roformer.train import TrainConfig, Trainer

    model, batch_fn, loss_fn = tiny_setup()
    run_dir = tmp_path / "run"
    config = TrainConfig(max_steps=4, save_every=2, keep_last=3, progress=False)
    Trainer(model, config, run_dir, batch_fn, loss_fn).fit()
    newest = sorted((run_dir / "checkpoints").iterdir())[-1] / "trainer_state.pt"
    data = bytearray(newest.read_bytes())
    for damage in ("bytes", "no state"):
        if damage == "bytes":
            middle = len(data) // 2
            data[middle : middle + 64] = bytes(range(64))
            newest.write_bytes(bytes(data))
        else:
            torch.save({"step": "four"}, newest)
        model, batch_fn, loss_fn = tiny_setup()
        trainer = Trainer(model, config, run_dir, batch_fn, loss_fn)
        assert trainer.resume() and trainer.step == 2, damage
        assert "using the previous checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("error, code", [
    (KeyError("max_len"), 1), (TypeError("unsupported operand"), 1), (ValueError("math domain error"), 1),
    (IndexError("index out of range"), 1), (InvalidArgument("--dim must be even, got 7"), 2),
    (UnknownName("unknown data set 'x'"), 2), (FileNotFoundError(2, "No such file or directory", "a.txt"), 2),
])
def test_only_the_projects_own_errors_are_user_errors(monkeypatch, capsys, error, code):
    """A KeyError or TypeError from inside is a bug (exit 1, with the hint to rerun with --debug), not a user's
    mistake dressed as one; the project's own error types and the operating system's are exit 2."""
    from roformer import cli
    from roformer.experiments import decay

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(decay, "run", fail)
    assert cli.main(["decay", "--out", "unused"]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roformer: error: ")
    assert ("internal error" in lines[0] and "--debug" in lines[0]) == (code == 1), lines[0]


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory):
    return tiny_encoder_dir(tmp_path_factory.mktemp("masked") / "m",
                            train_wordpiece(["the cat sat on the mat", "rotary position embedding"] * 50, 120))


@pytest.mark.parametrize("key, value, words", [
    ("num_attention_heads", 0, ("num_attention_heads must be in [1",)),
    ("hidden_size", "64", ("hidden_size must be an integer", "'64'")),
    ("vocab_size", 256.0, ("vocab_size must be an integer", "256.0")),
    ("hidden_dropout_prob", -0.5, ("hidden_dropout_prob must be in [0.0, 1.0)",)),
    ("rope_theta", -1, ("rope_theta",)),
    (None, [1, 2], ("config.json must hold an object", "list")),
])
def test_a_bad_config_json_is_one_line_naming_the_field(tmp_path, masked_model, key, value, words):
    model = tmp_path / "model"
    shutil.copytree(masked_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(value if key is None else {**config, key: value}))
    assert_error(run("fill-mask", "the [MASK] sat", "--model", model), *words)


def test_damaged_or_foreign_files_are_named(tmp_path, masked_model):
    model = tmp_path / "model"
    shutil.copytree(masked_model, model)
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text[: len(text) // 2])
    assert_error(run("fill-mask", "the [MASK]", "--model", model), str(model / "tokenizer.json"), "truncated")
    # only a pickle checkpoint: weights_only refuses what is not tensors, in one line of our own
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(masked_model / "config.json", pickled)
    shutil.copy(masked_model / "tokenizer.json", pickled)
    torch.save({"roformer.x": hashlib.sha256}, pickled / "pytorch_model.bin")
    assert_error(run("fill-mask", "the [MASK]", "--model", pickled), "pytorch_model.bin", "refused")
    torch.save([1, 2], pickled / "pytorch_model.bin")
    assert_error(run("fill-mask", "the [MASK]", "--model", pickled), "does not hold a state dict")


def test_text_and_paths_that_are_not_utf8_and_outputs_are_refused_before_any_work(tmp_path, masked_model,
                                                                                  byte_model):
    def run_bytes(*args, stdin=None):
        return subprocess.run([ROFORMER.encode(), *args], capture_output=True, input=stdin, timeout=300)

    for args in ([b"fill-mask", b"the [MASK] \xff sat", b"--model", bytes(masked_model)],
                 [b"generate", b"--model", bytes(byte_model), b"--prompt", b"ab\xffc"],
                 [b"decay", b"--out", bytes(tmp_path) + b"/runs/\xff"],
                 [b"train", b"--preset", b"smoke", b"--out", bytes(tmp_path) + b"/\xffrun"]):
        result = run_bytes(*args)
        assert result.returncode == 2, result
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "not valid UTF-8" in lines[0] and "0xff" in lines[0], lines
    assert not any(b"\xff" in bytes(p) for p in tmp_path.rglob("*"))  # nothing was created
    assert_error(run("export", "--model", masked_model, "--out", tmp_path), "is a directory", "file name")
    assert_error(run("export", "--model", masked_model, "--out", "/proc/roformer-test/m.onnx"), "/proc/roformer-test")
    assert_error(run("fill-mask", "the [MASK]", "--model", masked_model, "--top-k", "100000"),
                 "top_k must be from 1 to the vocabulary size")
    assert_error(run("decay", "--max-distance", str(10**11)), "--max-distance", "at most 1000000")


def test_non_utf8_sentences_for_translate_are_named(tmp_path):
    from roformer.data.tokenizer import save_tokenizer, train_bpe
    from roformer.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

    tok = train_bpe(["a small house", "ein kleines haus"] * 20, 60, ["<pad>", "<s>", "</s>"])
    model = tmp_path / "mt"
    Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, encoder_layers=1,
                                     decoder_layers=1, num_heads=2, intermediate_size=32)).save_pretrained(model)
    save_tokenizer(tok, model)
    result = subprocess.run([ROFORMER, "translate", "--model", str(model), "--greedy"], input=b"a house\n\xff b\n",
                            capture_output=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == ("roformer: error: standard input is not valid UTF-8 (byte 0xff on "
                                              "line 2); give the sentences in UTF-8")


def test_a_corpus_that_is_not_utf8_is_named_with_its_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"first document\n\nsecond \xff document\n")
    assert_error(run("pretrain", "--corpus", corpus, "--preset", "smoke", "--out", tmp_path / "run"),
                 str(corpus), "not valid UTF-8", "0xff on line 3")
