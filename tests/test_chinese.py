"""§4.5: the word-level Chinese tokenizer, the corpus and CAIL2019-SCM splits, pair truncation, and the recipe
end to end (smoke preset)."""

import json
import shutil

import pytest

from roformer.cli import main
from roformer.data.chinese import pair_ids
from roformer.data.tokenizer import ChineseTokenizer, RoFormerTokenizer, load_tokenizer, save_tokenizer
from roformer.experiments.chinese import run

from .conftest import require_data

TEXTS = ["原告李某诉称，被告夏某因欠缺资金向丰辉借款七万元。", "法院依法判决被告偿还原告本金及利息。",
         "被告夏某未到庭参加诉讼。"] * 4


def test_word_level_tokenizer_keeps_known_words_and_splits_unknown_ones_into_characters():
    tok = ChineseTokenizer.train(TEXTS, 200)
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = tok.tokenize("被告偿还借款")
    assert "被告" in tokens and "偿还" in tokens  # whole words from the vocabulary
    # a word jieba finds but the vocabulary lacks falls back to its characters, unseen characters to [UNK]
    assert tok.tokenize("原告借款") == ["原告", "借款"]
    assert tok.tokenize("欠缺资金汽车") == ["欠缺", "资金", "[UNK]", "[UNK]"]
    chars = ChineseTokenizer.train(TEXTS, 200, word_level=False)
    assert chars.tokenize("被告 偿还") == ["被", "告", "偿", "还"]  # whitespace is dropped


def test_tokenizer_saves_and_loads_with_a_model(tmp_path):
    tok = ChineseTokenizer.train(TEXTS, 200)
    save_tokenizer(tok, tmp_path)
    again = load_tokenizer(tmp_path)  # the published checkpoints' algorithm reads the recipe's directory back
    assert isinstance(again, RoFormerTokenizer)
    for text in [*TEXTS, "被告 Hello, World! 2019年借款3.5万元", "[MASK]借款"]:
        assert again.encode(text, add_special_tokens=False).ids == tok.encode_ids(text)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["jieba_hmm"] is False
    with pytest.raises(ValueError, match="must start with"):
        ChineseTokenizer(["a", "b"])


def test_pairs_are_cut_longest_first():
    ids, types = pair_ids(list(range(10, 40)), [7, 8, 9], max_len=16, cls=2, sep=3)
    assert len(ids) == 16 and ids[0] == 2 and ids[-1] == 3 and ids[-4:-1] == [7, 8, 9]
    assert types == [0] * 12 + [1] * 4
    ids, _ = pair_ids(list(range(10, 110)), list(range(10, 110)), max_len=21, cls=2, sep=3)
    assert ids.index(3) == 10  # two equal texts keep 9 tokens each
    with pytest.raises(ValueError, match="no room"):
        pair_ids([1], [1], 4, 2, 3)


def test_scm_split_is_by_document_and_kept_out_of_pretraining():
    require_data("cail2019_scm")
    require_data("chinese_corpus")
    from roformer.data.chinese import load_chinese_documents, load_scm

    scm = load_scm()
    sizes = [len(v) for v in scm.values()]
    assert sizes[1] >= 40 and sizes[2] >= 40 and sizes[0] >= 150, sizes  # ~170 / 40 / 40 of 500 kept
    train_docs = {t for row in scm["train"] for t in row}
    for split in ("validation", "test"):  # no document of an evaluation triplet is seen in training
        assert not {t for row in scm[split] for t in row} & train_docs
    assert not {t for row in scm["validation"] for t in row} & {t for row in scm["test"] for t in row}
    scm_docs = {t[:60] for rows in scm.values() for row in rows for t in row}
    corpus = load_chinese_documents()
    assert len(corpus["train"]) > 10_000 and corpus["validation"]
    assert not any(d[:60] in scm_docs for split in corpus.values() for d in split)


@pytest.mark.slow
def test_chinese_recipe_smoke(tmp_path):
    require_data("cail2019_scm")
    require_data("thucnews")
    require_data("chinese_corpus")
    assert main(["experiment", "chinese", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["stage"] for r in results["stages"]["roformer"]] == [1, 2]
    assert [r["max length"] for r in results["stages"]["roformer"]] == [64, 128]
    assert set(results["stages"]) == {"roformer", "wobert", "bert"}
    for task, size in (("scm", 8), ("thucnews", 8)):
        rows = results["tasks"][task]
        assert list(rows) == ["BERT-64 (char, learned positions)", "WoBERT-64 (word, learned positions)",
                              "RoFormer-64 (word, RoPE)", "RoFormer-128 (word, RoPE)"]
        assert all(len(seeds) == 2 for seeds in rows.values())  # the smoke preset's two fine-tuning seeds
        first = rows["RoFormer-64 (word, RoPE)"][0]
        assert {k for k in first if "correct" not in k} == {"validation @64", "validation @128", "test @64",
                                                            "test @128"}
        assert len(first["test correct @128"]) == size and set(first["test correct @128"]) <= {0, 1}
        assert first["test @128"] == 100 * sum(first["test correct @128"]) / size
    report = (tmp_path / "report.md").read_text()
    assert "Table 5" in report and "THUCNews" in report and "McNemar" in report
    assert (tmp_path / "pretraining.png").is_file()
    # stage 2 started from stage 1: the resumed schedule reuses both stages and retrains nothing
    assert main(["experiment", "chinese", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["stages"] == results["stages"] and again["tasks"] == results["tasks"]
    # a finished stage is reused only by the same run: other settings are refused, naming the difference
    with pytest.raises(ValueError, match="cannot resume .*stage1.*max_steps: run has 4, command has 1"):
        run("smoke", None, tmp_path, resume=True, max_steps=1)
    # a fresh clone of the report has no weights, vocabularies or checkpoints (.gitignore): the resume trains
    # the stages again, which must end where they were recorded, and reuses the finished fine-tunings
    for ignored in [*tmp_path.glob("*/stage*/model"), *tmp_path.glob("**/checkpoints")]:
        shutil.rmtree(ignored)
    for ignored in tmp_path.glob("*/vocab.txt"):
        ignored.unlink()
    assert main(["experiment", "chinese", "--preset", "smoke", "--out", str(tmp_path), "--resume"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["stages"] == results["stages"] and again["tasks"] == results["tasks"]
    assert (tmp_path / "wobert" / "stage2" / "model" / "config.json").is_file()
    # weights that end elsewhere than the record are refused: the fine-tunings would mix two encoders
    summary = tmp_path / "wobert" / "stage2" / "summary.json"
    recorded = json.loads(summary.read_text())
    summary.write_text(json.dumps({**recorded, "MLM loss": recorded["MLM loss"] * (1 + 1e-5)}))
    shutil.rmtree(tmp_path / "wobert" / "stage2" / "model")
    shutil.rmtree(tmp_path / "wobert" / "stage2" / "checkpoints")
    with pytest.raises(ValueError, match="cannot resume .*wobert.stage2: .*trained again, ending with loss"):
        run("smoke", None, tmp_path, resume=True)
    assert not (tmp_path / "wobert" / "stage2" / "model").exists()  # nor reused by the next resume
    with pytest.raises(ValueError, match="cannot resume .*wobert.stage2: .*trained again"):
        run("smoke", None, tmp_path, resume=True)


def test_mcnemar_against_the_binomial_distribution():
    from math import comb

    from roformer.report import mcnemar

    a = [1] * 10 + [0] * 3 + [1] * 20 + [0] * 7
    b = [0] * 10 + [1] * 3 + [1] * 20 + [0] * 7
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (10, 3)
    tail = sum(comb(13, k) for k in range(0, 4)) / 2**13  # P(X <= 3), X ~ Binomial(13, 1/2)
    assert p == pytest.approx(2 * tail, rel=1e-12)
    assert mcnemar([1, 0], [1, 0])[2] == 1.0
    with pytest.raises(ValueError, match="differ in number"):
        mcnemar([1], [1, 0])


def test_thucnews_split_is_by_article_and_kept_out_of_pretraining():
    require_data("thucnews")
    require_data("chinese_corpus")
    from roformer.data.chinese import load_chinese_documents, load_thucnews

    news = load_thucnews()
    assert [len(v) for v in news.values()] == [793, 111, 96]
    texts = {split: {a for _, a in rows} for split, rows in news.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert len({label for rows in news.values() for label, _ in rows}) == 10
    heads = {a[:60] for rows in texts.values() for a in rows}
    corpus = load_chinese_documents()
    assert not any(d[:60] in heads for split in corpus.values() for d in split)
