"""The `roformer` command end to end: decay, train (smoke preset on real enwik8), generate, report."""

import csv
import json

import pytest
import torch

from roformer import relative_upper_bound
from roformer.cli import main

from .conftest import require_data


def test_decay_writes_the_bound_and_a_plot(tmp_path, capsys):
    assert main(["decay", "--dim", "64", "--max-distance", "100", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "decay.csv")))
    assert len(rows) == 101
    expected = relative_upper_bound(64, 100)
    assert all(abs(float(r["relative_upper_bound"]) - expected[i].item()) < 1e-6 for i, r in enumerate(rows))
    assert (tmp_path / "decay.png").stat().st_size > 10_000
    assert "distance 0 -> 16.5" in capsys.readouterr().out


def test_bad_arguments_give_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["decay", "--dim", "63", "--out", str(tmp_path)]) == 2
    assert "even" in capsys.readouterr().err


@pytest.mark.slow
def test_train_generate_report_on_enwik8(tmp_path, capsys):
    require_data("enwik8")
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--out", str(run), "--device", "cpu"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    bpc = summary["final"]["validation_bpc"]
    assert 1.0 < bpc < 8.0  # a byte model scores at most log2(256) = 8 bits when it has learnt nothing
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert train_losses[-1] < train_losses[0] - 0.5  # it learnt something in 30 steps
    for f in ("report.md", "loss.png", "train_config.json", "model/config.json", "model/model.safetensors",
              "model/tokenizer.json"):
        assert (run / f).is_file(), f
    assert "validation bits per character" in capsys.readouterr().out

    assert main(["generate", "--model", str(run / "model"), "--prompt", "The ", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("The ")

    # a second run and the comparison report
    other = tmp_path / "other"
    assert main(["train", "--preset", "smoke", "--out", str(other), "--max-steps", "10"]) == 0
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "report.md").read_text()
    assert "| run |" in table and "| run |" in table and "other" in table
    assert (tmp_path / "cmp" / "curves.png").stat().st_size > 10_000

    # HuggingFace reads the saved causal LM and computes the same logits
    transformers = pytest.importorskip("transformers")
    from roformer import RoFormerForCausalLM

    ours = RoFormerForCausalLM.from_pretrained(run / "model").eval()
    hf = transformers.RoFormerForCausalLM.from_pretrained(run / "model").eval()
    ids = torch.tensor([list(b"Anarchism is a political philosophy")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_generate_streams_what_it_returns():
    """The streamed pieces arrive one step at a time and join to the returned text (UTF-8 split across bytes
    included: a byte model emits multi-byte characters byte by byte)."""
    from roformer import RoFormerConfig, RoFormerForCausalLM
    from roformer.experiments.char_lm import generate_text

    torch.manual_seed(0)
    model = RoFormerForCausalLM(RoFormerConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64, pad_token_id=None,
                                               type_vocab_size=1, is_decoder=True)).eval()
    pieces = []
    text = generate_text(model, "Zürich ", 60, temperature=1.0, top_k=None, seed=3, stream=pieces.append)
    assert "".join(pieces) == text and text.startswith("Zürich ")
    assert len(pieces) > 30
    assert generate_text(model, "Zürich ", 60, temperature=1.0, top_k=None, seed=3) == text
