"""The paper's experiments run end to end on real data at the smoke preset and write their reports."""

import json
import shutil

import pytest

from roformer.cli import main

from .conftest import require_data

pytestmark = pytest.mark.slow


def test_performer_lm_smoke(tmp_path, capsys):
    require_data("enwik8")
    assert main(["experiment", "performer_lm", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == ["performer", "performer+rope"]
    assert all(len(v) == 2 and all(0 < b < 9 for b in v) for v in results["validation_bpc"].values())
    for f in ("report.md", "training_loss.png", "validation_loss.png", "performer/seed0/metrics.jsonl",
              "performer+rope/seed1/model/model.safetensors"):
        assert (tmp_path / f).is_file(), f
    assert "performer+rope" in (tmp_path / "report.md").read_text()
    # resuming a finished comparison retrains nothing and writes the same table
    before = (tmp_path / "results.json").read_text()
    assert main(["experiment", "performer_lm", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    assert (tmp_path / "results.json").read_text() == before
    # a fresh clone of the report has its records, not its weights or checkpoints (.gitignore): the resume
    # trains every run again, which must end where it was recorded, and saves the models again
    run_dir = tmp_path / "performer+rope" / "seed1"
    curve = (run_dir / "metrics.jsonl").read_text()
    for ignored in [*tmp_path.glob("*/seed*/model"), *tmp_path.glob("*/seed*/checkpoints")]:
        shutil.rmtree(ignored)
    assert main(["experiment", "performer_lm", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    assert (tmp_path / "results.json").read_text() == before  # the records are kept, curves included
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "metrics.jsonl").read_text() == curve
    # a run that ends elsewhere than its record is refused, and its directory is left as it was
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["final"]["validation_loss"] *= 1 + 1e-5
    (run_dir / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(run_dir / "model")
    shutil.rmtree(run_dir / "checkpoints")
    capsys.readouterr()
    assert main(["experiment", "performer_lm", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) != 0
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bars of the run trained again
    assert "cannot resume" in last and "trained again" in last and "ending with loss" in last
    assert "Traceback" not in err
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir())
    assert (run_dir / "metrics.jsonl").read_text() == curve and not (run_dir / "model").exists()


def test_pe_compare_smoke(tmp_path):
    require_data("enwiki")
    assert main(["experiment", "pe_compare", "--preset", "smoke", "--out", str(tmp_path), "--seeds", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == ["learned", "t5", "rope", "sinusoidal", "alibi", "none"]
    assert all(len(v) == 1 and v[0] > 0 for v in results["validation_loss"].values())
    report = (tmp_path / "report.md").read_text()
    assert "RoPE (mean curve) reaches this mean loss at step" in report
    assert (tmp_path / "validation_loss.png").stat().st_size > 10_000


def test_seed_statistics_against_scipy():
    """mean ± std and the paired t interval, against scipy's own paired t-test on the same numbers."""
    from scipy import stats

    from roformer.report import paired_difference, seed_rows

    a, b = [2.61, 2.58, 2.64, 2.60], [2.59, 2.57, 2.60, 2.61]
    mean, low, high = paired_difference(a, b)
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(0.95)
    assert mean == pytest.approx(sum(x - y for x, y in zip(a, b, strict=True)) / 4)
    assert (low, high) == pytest.approx((interval.low, interval.high))
    rows = seed_rows({"x": a, "rope": b}, "rope", "loss", digits=3)
    assert rows[0]["loss (mean ± std)"] == f"{stats.tmean(a):.3f} ± {stats.tstd(a):.3f}"
    assert rows[0]["seeds better than rope"] == "1/4"
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0], [1.0, 2.0])
    one = seed_rows({"x": [2.61], "rope": [2.59]}, "rope", "loss", digits=3)[0]  # --seeds 1: no nan interval
    assert one["minus rope: mean [95% CI]"] == "+0.020 (one seed: no interval)"


def test_steps_to_reach():
    from roformer.experiments.lm_compare import steps_to_reach

    curve = [(10, 5.0), (20, 4.0), (30, 3.5)]
    assert steps_to_reach(curve, 4.0) == 20 and steps_to_reach(curve, 3.0) is None


def test_sliding_window_scores_every_token_once():
    """With a bigram 'model' (logits depend on the current token only), the sliding-window loss is the mean
    bigram loss over every predicted token 1 .. N-1, whatever the window and stride."""
    import torch

    from roformer.train.lm import sliding_window_loss, stream_loss

    torch.manual_seed(0)
    table = torch.randn(11, 11).log_softmax(-1)

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return type("Out", (), {"logits": table[x]})()

    data = torch.randint(0, 11, (101,))
    exact = -table[data[:-1], data[1:]].mean().item()
    for window, stride in ((10, 5), (10, 10), (20, 3), (100, 50)):
        assert sliding_window_loss(Bigram(), data, window, stride) == pytest.approx(exact, rel=1e-6)
    assert stream_loss(Bigram(), data, 10) == pytest.approx(exact, rel=1e-6)  # 100 = 10 windows of 10 + 1
    with pytest.raises(ValueError, match="stride"):
        sliding_window_loss(Bigram(), data, 10, 11)


def test_extrapolation_smoke(tmp_path):
    require_data("enwiki")
    assert main(["experiment", "extrapolation", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["learned"]["2"]["non-overlapping"] == [None]  # no position embedding past L
    assert all(v > 0 for v in results["alibi"]["4"]["sliding"])
    assert {"rope + linear (PI)", "rope + YaRN", "rope + dynamic NTK"} <= set(results)
    assert set(results["rope, fine-tuned at 1L (control)"]) == {"1", "2"}  # the same updates at L, as control
    report = (tmp_path / "report.md").read_text()
    assert "n/a" in report and "fine-tuned at 2L" in report and "relative to the same model at L" in report
    assert (tmp_path / "perplexity_sliding.png").stat().st_size > 10_000
    # resuming reuses every seed's evaluations and fine-tunes: the same results
    before = (tmp_path / "results.json").read_text()
    assert main(["experiment", "extrapolation", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == json.loads(before)["results"]


def test_optimizers_smoke(tmp_path):
    require_data("enwiki")
    assert main(["experiment", "optimizers", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert set(runs) == {f"{e}-{o}" for e in ("bert", "rpe", "roformer") for o in ("adamw", "amos")}
    assert all(len(seeds) == 2 for seeds in runs.values())
    for name, seeds in runs.items():
        train = seeds[0]["train"]
        assert train["optimizer"] == name.split("-")[1]
        assert (train["lr"], train["schedule"]) == ((3e-3, "constant") if name.endswith("amos") else (1e-3, "cosine"))
        final = seeds[0]["final"]
        assert 0 < final["validation_mrr"] <= 1 and final["validation_loss"] > 0
    assert runs["rpe-amos"][0]["config"]["position"] == "shaw"
    report = (tmp_path / "report.md").read_text()
    assert "Amos minus AdamW" in report and "1/sqrt(" in report
    assert (tmp_path / "validation_mrr.png").stat().st_size > 10_000


def test_gpt_downstream_inputs_end_with_the_separator(tmp_path):
    """``A <sep> B <sep>`` (``A <sep>``) within the length, the pair cut by the tokenizer's longest-first rule."""
    from roformer.data.glue import Example
    from roformer.data.tokenizer import save_tokenizer, train_bpe
    from roformer.experiments.gpt_downstream import Examples, task_tokenizer
    from roformer.experiments.pe_compare import SEPARATOR

    texts = ["the cat sat on the mat", "a dog ran in the park and the hills", "birds fly over the river"] * 20
    save_tokenizer(train_bpe(texts, 300, special_tokens=[SEPARATOR]), tmp_path)
    tok = task_tokenizer(tmp_path)
    sep = tok.token_to_id(SEPARATOR)
    plain = [e.ids for e in tok.encode_batch(texts[:3], add_special_tokens=False)]
    single = Examples(tok, [Example(t, None, 1) for t in texts[:3]], max_len=64)
    assert single.ids == [ids + [sep] for ids in plain] and single.truncated == 0
    pair = Examples(tok, [Example(texts[0], texts[1], 0)], max_len=64)
    assert pair.ids == [plain[0] + [sep] + plain[1] + [sep]]
    cut = Examples(tok, [Example(texts[0], texts[1], 0)], max_len=len(plain[0]) + 4)
    assert cut.truncated == 1 and len(cut.ids[0]) == len(plain[0]) + 4 and cut.ids[0].count(sep) == 2
    batch = single.batch([2, 0], pad_id=sep)
    assert batch["attention_mask"].sum(-1).tolist() == [len(single.ids[2]), len(single.ids[0])]
    assert batch["labels"].tolist() == [1, 1]


@pytest.mark.slow
def test_gpt_downstream_smoke(tmp_path, capsys):
    """Fig. 6 end to end: both decoders per seed, every snapshot fine-tuned on both tasks; a resume reuses every
    fine-tune, and so does one from a fresh clone (no weights, no checkpoints) after the pre-training runs have
    been trained again to their records."""
    for name in ("enwiki", "sst2", "qnli"):
        require_data(name)
    assert main(["experiment", "gpt_downstream", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == [3, 6]
    for task in ("sst2", "qnli"):
        scores = results["tasks"][task]["scores"]
        assert list(scores) == ["learned", "rope"]
        # [pre-training seed][snapshot][fine-tuning seed]
        assert all(len(runs) == 2 and all(len(steps) == 2 and all(len(ft) == 1 for ft in steps) for steps in runs)
                   for runs in scores.values())
        assert all(0 <= a <= 100 for runs in scores.values() for steps in runs for ft in steps for a in ft)
    run = json.loads((tmp_path / "finetune" / "qnli" / "rope" / "seed1" / "step3" / "ft0" / "run.json").read_text())
    assert run["step"] == 3 and run["pretrained"] == "rope/seed1"
    report = (tmp_path / "report.md").read_text()
    assert "The paper's claim and what was measured" in report and "RoPE − learned [95% CI]" in report
    assert (tmp_path / "downstream.png").stat().st_size > 10_000
    finished = {p: p.stat().st_mtime_ns for p in tmp_path.glob("finetune/**/result.json")}
    assert len(finished) == 2 * 2 * 2 * 2
    assert main(["experiment", "gpt_downstream", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    for ignored in [*tmp_path.glob("*/seed*/model"), *tmp_path.glob("**/checkpoints")]:  # .gitignore'd
        shutil.rmtree(ignored)
    assert main(["experiment", "gpt_downstream", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not one fine-tune trained again
    # a fine-tune to run again whose pre-training checkpoint is gone: one line naming it and the way out
    shutil.rmtree(tmp_path / "learned" / "seed0" / "checkpoints" / "step-00000003")
    shutil.rmtree(tmp_path / "finetune" / "sst2" / "learned" / "seed0" / "step3")
    assert main(["experiment", "gpt_downstream", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "step-00000003 is gone, and its fine-tunes start from it" in err and "Traceback" not in err
