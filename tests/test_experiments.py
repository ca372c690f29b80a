"""The paper's experiments run end to end on real data at the smoke preset and write their reports."""

import json

import pytest

from roformer.cli import main

from .conftest import require_data

pytestmark = pytest.mark.slow


def test_performer_lm_smoke(tmp_path):
    require_data("enwik8")
    assert main(["experiment", "performer_lm", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in rows] == ["performer", "performer+rope"]
    assert all(0 < r["validation bpc"] < 9 for r in rows)
    for f in ("report.md", "training_loss.png", "validation_loss.png", "performer/metrics.jsonl",
              "performer+rope/model/model.safetensors"):
        assert (tmp_path / f).is_file(), f
    assert "performer+rope" in (tmp_path / "report.md").read_text()


def test_pe_compare_smoke(tmp_path):
    require_data("enwiki")
    assert main(["experiment", "pe_compare", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["position encoding"] for r in rows] == ["learned", "t5", "rope", "sinusoidal", "alibi"]
    for r in rows:
        assert r["validation loss"] > 0 and r["perplexity"] > 1
    report = (tmp_path / "report.md").read_text()
    assert "RoPE reaches this loss at step" in report
    assert (tmp_path / "validation_loss.png").stat().st_size > 10_000


def test_steps_to_reach():
    from roformer.experiments.lm_compare import steps_to_reach

    curve = [(10, 5.0), (20, 4.0), (30, 3.5)]
    assert steps_to_reach(curve, 4.0) == 20 and steps_to_reach(curve, 3.0) is None
