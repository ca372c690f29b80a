"""GLUE fine-tuning: pair encoding and truncation, label and tokenizer checks, metrics, and the recipe end to end
on an encoder of ours and on a HuggingFace RoFormer directory."""

import json

import pytest
import torch

from roformer.cli import main
from roformer.data.glue import Example, encode, score
from roformer.data.tokenizer import train_wordpiece
from roformer.experiments.glue import finetune_task
from roformer.models import RoFormerForSequenceClassification

from .conftest import require_data, tiny_encoder_dir

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the river and the hills"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(TEXTS, 200)


def test_pairs_are_truncated_longest_first(tok):
    long_a, short_b = " ".join(["the cat sat"] * 30), "a dog ran"
    enc = encode(tok, "mrpc", [Example(long_a, short_b, 1), Example("the cat", "a dog", 0)], max_len=16,
                 num_labels=2)
    ids, types = enc.ids[0], enc.types[0]
    assert len(ids) == 16 and enc.truncated == 1
    b_len = types.count(1) - 1  # segment B tokens without its [SEP]
    assert b_len == len(tok.encode(short_b, add_special_tokens=False).ids)  # the shorter text is kept whole
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert ids[0] == cls and ids.count(sep) == 2 and ids[-1] == sep
    assert len(enc.ids[1]) < 16  # short pairs are not padded or cut
    batch = enc.batch([0, 1], pad_id=0)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"][1].sum() == len(enc.ids[1])
    # two equally long texts lose tokens alternately: both keep about half the room
    even = encode(tok, "mrpc", [Example(long_a, long_a, 0)], max_len=21, num_labels=2)
    assert abs(even.types[0].count(0) - even.types[0].count(1)) <= 1


def test_a_label_outside_the_task_is_an_error(tok):
    with pytest.raises(ValueError, match="example 1 has label 2"):
        encode(tok, "sst2", [Example("good", None, 1), Example("bad", None, 2)], 16, num_labels=2)
    with pytest.raises(ValueError, match="score in"):
        encode(tok, "stsb", [Example("a", "b", 7.5)], 16, num_labels=1)


def test_metrics_match_their_definitions():
    y = torch.tensor([1, 0, 1, 1, 0, 1])
    p = torch.tensor([1, 0, 0, 1, 1, 1])
    s = score("mrpc", p, y)
    tp, fp, fn = 3, 1, 1
    assert s["accuracy"] == pytest.approx(100 * 4 / 6)
    assert s["f1"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    r = score("stsb", torch.tensor([0.1, 0.5, 0.2, 0.9]), torch.tensor([1.0, 3.0, 2.0, 5.0]))
    assert r["spearman"] == pytest.approx(100.0)
    assert r["pearson"] < 100.0


def test_unknown_task_and_mismatched_tokenizer_are_clear_errors(tmp_path, tok, capsys):
    model = tiny_encoder_dir(tmp_path / "m", tok)
    assert main(["finetune", "--task", "cola2", "--model", str(model)]) == 2
    assert "unknown task cola2" in capsys.readouterr().err
    small = tiny_encoder_dir(tmp_path / "small", tok, vocab_size=50)  # a tokenizer of ~200 tokens
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the model's vocabulary only 50"):
        finetune_task(small, "sst2", "smoke", out=tmp_path / "out")


@pytest.mark.slow
def test_finetune_grid_keeps_the_best_model(tmp_path, tok, capsys):
    require_data("stsb")
    model = tiny_encoder_dir(tmp_path / "m", tok)
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "stsb", "--model", str(model), "--preset", "smoke", "--out", str(out),
                 "--lrs", "1e-4,1e-3", "--seeds", "2"]) == 0
    assert "stsb: spearman" in capsys.readouterr().out
    r = json.loads((out / "stsb" / "results.json").read_text())
    assert set(r["grid"]) == {"0.0001", "0.001"} and all(len(v) == 2 for v in r["grid"].values())
    assert r["mean"] == pytest.approx(max(sum(v) / 2 for v in r["grid"].values()))
    kept = [p for p in (out / "stsb").rglob("model.safetensors")]
    assert kept == [out / "stsb" / "model" / "model.safetensors"]  # only the best run's model is kept
    best = RoFormerForSequenceClassification.from_pretrained(out / "stsb" / "model")
    assert best.config.num_labels == 1
    # a finished grid is not retrained on --resume: the same results come back
    again = finetune_task(model, "stsb", "smoke", out=out / "stsb", resume=True, lrs=[1e-4, 1e-3], seeds=2)
    assert again["grid"] == r["grid"]
    # ... but not from another encoder at the same path (the pre-training run again): one line naming it
    torch.manual_seed(1)
    tiny_encoder_dir(model, tok)
    assert main(["finetune", "--task", "stsb", "--model", str(model), "--preset", "smoke", "--out", str(out),
                 "--lrs", "1e-4,1e-3", "--seeds", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "encoder: run has 'weights " in err and "Traceback" not in err
    # nor a finished fine-tune that records no settings (an older version's run)
    for record in ("run.json", "lr0.0001_seed0/run.json", "lr0.0001_seed0/train_config.json"):
        (out / "stsb" / record).unlink()
    with pytest.raises(ValueError, match="records no settings"):
        finetune_task(model, "stsb", "smoke", out=out / "stsb", resume=True, lrs=[1e-4, 1e-3], seeds=2)


def test_an_encoder_is_known_by_its_run_record_or_else_its_weights(tmp_path, tok):
    """A comparison run's encoder keeps its fingerprint when trained again to its record (other bits, same
    record); a plain directory's fingerprint follows its weights."""
    from roformer.experiments.glue import encoder_fingerprint

    plain = tiny_encoder_dir(tmp_path / "plain", tok)
    first = encoder_fingerprint(plain)
    assert first.startswith("weights ") and encoder_fingerprint(plain) == first
    torch.manual_seed(123)
    tiny_encoder_dir(plain, tok)
    assert encoder_fingerprint(plain) != first
    run = tiny_encoder_dir(tmp_path / "seed0" / "model", tok)
    (tmp_path / "seed0" / "summary.json").write_text(json.dumps({"final": {"validation_loss": 6.5}}))
    recorded = encoder_fingerprint(run)
    assert recorded.startswith("record ")
    tiny_encoder_dir(run, tok)  # trained again: other weights, the same record
    assert encoder_fingerprint(run) == recorded
    (tmp_path / "seed0" / "summary.json").write_text(json.dumps({"final": {"validation_loss": 6.6}}))
    assert encoder_fingerprint(run) != recorded


@pytest.mark.slow
def test_finetune_a_huggingface_roformer_directory(tmp_path):
    """A directory written by transformers, with only a BERT vocab.txt as its tokenizer."""
    transformers = pytest.importorskip("transformers")
    require_data("mrpc")
    tok = train_wordpiece(TEXTS, 200)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    hf_dir = tmp_path / "hf"
    config = transformers.RoFormerConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, embedding_size=32)
    transformers.RoFormerForMaskedLM(config).save_pretrained(hf_dir)
    (hf_dir / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab))
    r = finetune_task(hf_dir, "mrpc", "smoke", out=tmp_path / "ft", seeds=1)
    assert r["train_examples"] == 96 and 0 <= r["mean"] <= 100
    assert r["majority_class"] is not None


def test_table2_report_pairs_the_encoders_by_seed(tmp_path, tok):
    """Table 2 over every pre-training seed: the encoder of pre-training seed k is fine-tuned with fine-tuning
    seed k (its score is seed k of a plain grid fine-tune of that encoder), and the report's paired rows are
    BERT's per-seed scores minus RoFormer's, with a Student-t interval computed here from those grids."""
    from scipy import stats

    from roformer.experiments import glue

    require_data("mrpc")
    models = tmp_path / "mlm"
    for name in ("bert", "roformer"):
        for seed in (0, 1):
            tiny_encoder_dir(models / name / f"seed{seed}" / "model", tok)
    out = tmp_path / "glue"
    results = glue.run("smoke", out=out, models=models, tasks=("mrpc",))
    expected = {}
    for name in ("bert", "roformer"):
        per_seed = []
        for seed in (0, 1):
            grid = finetune_task(models / name / f"seed{seed}" / "model", "mrpc", "smoke",
                                 out=tmp_path / "alone" / name / f"seed{seed}", seeds=2)["grid"]["0.0001"]
            per_seed.append(grid[seed])
        expected[name] = per_seed
    bert, rof = (results[name]["mrpc"]["grid"]["0.0001"] for name in ("BERT (ours)", "RoFormer (ours)"))
    assert (bert, rof) == (expected["bert"], expected["roformer"])
    assert results["BERT (ours)"]["mrpc"]["seeds"] == [0, 1]
    assert sorted(p.name for p in (out / "roformer").iterdir()) == ["seed0", "seed1"]
    diffs = [a - b for a, b in zip(bert, rof, strict=True)]
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| MRPC (F1) | BERT (ours)"))
    assert f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]" in row
    assert ", ".join(f"{v:.1f}" for v in bert) in row


def test_table2_needs_every_pre_training_seeds_model(tmp_path, tok):
    """The encoders are paired by pre-training seed: seeds missing for one encoder, or a seed's run without its
    model (weights are not committed), are one line naming the directory and the command that trains it."""
    from roformer.errors import MissingFile
    from roformer.experiments import glue

    models = tmp_path / "mlm"
    with pytest.raises(MissingFile, match="no pre-training runs in"):
        glue.run("smoke", out=tmp_path / "glue0", models=models, tasks=("mrpc",))
    for name in ("bert", "roformer"):
        tiny_encoder_dir(models / name / "seed0" / "model", tok)
    (models / "roformer" / "seed1").mkdir()
    with pytest.raises(MissingFile, match=r"BERT seeds \[0\] but RoFormer seeds \[0, 1\]"):
        glue.run("smoke", out=tmp_path / "glue1", models=models, tasks=("mrpc",))
    (models / "bert" / "seed1").mkdir()
    with pytest.raises(MissingFile, match=r"no pre-trained model in .*bert/seed1/model .*--resume"):
        glue.run("smoke", out=tmp_path / "glue2", models=models, tasks=("mrpc",))
