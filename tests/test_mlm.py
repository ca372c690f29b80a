"""MLM data (packing, the 80/10/10 masking rule) and the pre-training recipe end to end."""

import json

import pytest
import torch

from roformer.cli import main
from roformer.data.mlm import mask_tokens, pack_documents

from .conftest import require_data


def test_packing_fills_sequences_and_cuts_long_documents():
    docs = [[5] * 3, [6] * 4, [7] * 20, [8] * 2]
    seqs = pack_documents(docs, max_len=10, cls_id=1, sep_id=2)
    assert all(len(s) <= 10 and s[0] == 1 and s[-1] == 2 for s in seqs)
    flat = [t for s in seqs for t in s if t not in (1, 2)]
    assert flat == [t for d in docs for t in d]  # every token kept, in order
    assert seqs[0] == [1, 5, 5, 5, 2, 6, 6, 6, 6, 2]
    with pytest.raises(ValueError, match="max_len"):
        pack_documents(docs, 2, 1, 2)


def test_masking_follows_the_80_10_10_rule():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (400, 128))
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS], [SEP]
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=[0, 1, 2], generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    rate = chosen.float().mean().item() * 128 / 126
    assert rate == pytest.approx(0.15, abs=0.005)
    masked = (inputs[chosen] == 4).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01) and kept == pytest.approx(0.1 + 0.1 / 1000, abs=0.01)


@pytest.mark.slow
def test_pretraining_recipe_saves_a_model_huggingface_loads(tmp_path, capsys):
    require_data("enwiki")
    assert main(["experiment", "mlm", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["bert (learned positions)", "roformer (rope positions)"]
    assert [r["per seed"].count(",") for r in rows] == [1, 1]  # the smoke preset's two seeds
    assert (tmp_path / "mlm_loss.png").is_file()
    capsys.readouterr()
    assert main(["fill-mask", "the [MASK] of the city", "--model", str(tmp_path / "roformer" / "seed0" / "model")]) == 0
    assert capsys.readouterr().out.startswith("[MASK] 1: ")
    transformers = pytest.importorskip("transformers")
    from roformer import RoFormerForMaskedLM

    ours = RoFormerForMaskedLM.from_pretrained(tmp_path / "roformer" / "seed0" / "model").eval()
    hf = transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / "roformer" / "seed0" / "model").eval()
    ids = torch.randint(5, 400, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    # the BERT baseline keeps its learned positions through a save/load round trip
    bert = RoFormerForMaskedLM.from_pretrained(tmp_path / "bert" / "seed0" / "model")
    assert bert.config.position == "learned" and bert.roformer.position.embeddings.weight.abs().sum() > 0
    config = json.loads((tmp_path / "bert" / "seed0" / "model" / "config.json").read_text())
    assert config["model_type"] == "roformer-variant"  # stock transformers would drop the positions


def test_pretrain_on_a_text_file(tmp_path, capsys):
    require_data("tinyshakespeare")
    from roformer.data import resolve

    corpus = next(iter(resolve("tinyshakespeare").values()))  # speeches separated by blank lines
    out = tmp_path / "bert"
    assert main(["pretrain", "--corpus", str(corpus), "--position", "learned", "--preset", "smoke",
                 "--out", str(out)]) == 0
    assert "validation MLM loss" in capsys.readouterr().out
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "roformer-variant"  # stock transformers would drop the positions
    assert (out / "model" / "tokenizer.json").is_file()
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one document\n\nanother one\n")
    assert main(["pretrain", "--corpus", str(tiny), "--preset", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert "too few to hold 1% out" in capsys.readouterr().err


def test_mlm_evaluation_mrr_equals_the_rank_of_the_true_token_by_sorting():
    from types import SimpleNamespace

    from roformer.train import TrainConfig
    from roformer.train.mlm import masked_lm_functions

    special = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3}
    tok = SimpleNamespace(token_to_id=special.get, get_vocab_size=lambda: 50)
    ids = torch.randint(4, 50, (40, 16), generator=torch.Generator().manual_seed(0))
    valid = (ids, torch.ones_like(ids))
    *_, eval_fn = masked_lm_functions(tok, valid, valid, 8, TrainConfig())
    table = torch.randn(40, 16, 50, generator=torch.Generator().manual_seed(1)).round(decimals=1)  # with ties
    served = [0]

    class Fixed(torch.nn.Module):  # returns the next rows of the table as its logits
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inputs, mask):
            served[0] += len(inputs)
            return SimpleNamespace(logits=table[served[0] - len(inputs) : served[0]])

    result = eval_fn(Fixed())
    _, labels = mask_tokens(ids, 3, 50, [0, 1, 2], torch.Generator().manual_seed(12345))  # the fixed masking
    chosen = labels != -100
    ranks = []
    for logits, label in zip(table[chosen].tolist(), labels[chosen].tolist(), strict=True):
        order = sorted(range(50), key=lambda i: (-logits[i], i == label))  # ties: the true token last of equals
        ranks.append(order.index(label) + 1)
    assert any(r > 1 for r in ranks) and any(r == 1 for r in ranks)
    assert result["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks), rel=1e-12)
    assert result["accuracy"] == pytest.approx(sum(r == 1 for r in ranks) / len(ranks), rel=1e-12)
