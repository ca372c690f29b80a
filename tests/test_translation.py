"""The encoder-decoder (§4.1): cached decoding, beam search against greedy, padding, awkward input, saving,
token batches, and the translation recipe and `roformer translate` end to end."""

import io
import json

import pytest
import torch
from safetensors.torch import load_file

from roformer.attention import KVCache
from roformer.cli import main
from roformer.data.parallel import token_batches
from roformer.data.tokenizer import train_bpe
from roformer.experiments.translation import SPECIALS, translate_lines
from roformer.models.generation import beam_search, greedy_search
from roformer.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from roformer.train import average_checkpoints, list_checkpoints

from .conftest import require_data

POSITIONS = ["rope", "sinusoidal", "learned", "shaw"]


def _model(position: str, vocab: int = 40, seed: int = 0, max_positions: int = 1024) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = Seq2SeqConfig(vocab_size=vocab, hidden_size=32, encoder_layers=2, decoder_layers=2, num_heads=4,
                           intermediate_size=64, position=position, max_positions=max_positions)
    return Seq2SeqTransformer(config).eval()


def _eos_prone(model: Seq2SeqTransformer, boost: float = 3.0) -> Seq2SeqTransformer:
    """Raise the EOS logit at a target position set by the source's length, so that a random model ends its
    outputs at varied lengths (the boost depends on source and position only, never on the cache or the beam)."""
    decode = model.decode

    def boosted(tgt_ids, memory, src_mask=None, kv_cache=None):
        logits = decode(tgt_ids, memory, src_mask, kv_cache)
        offset = kv_cache.seq_len - tgt_ids.shape[1] if kv_cache is not None else 0  # the cache has the new ones
        positions = offset + torch.arange(tgt_ids.shape[1])
        n = src_mask.sum(1) if src_mask is not None else torch.full((memory.shape[0],), memory.shape[1])
        logits[..., model.config.eos_token_id] += boost * (positions[None, :] == (3 * n[:, None]) % 7 + 1)
        return logits

    model.decode = boosted
    return model


def _sources(batch: int = 5, length: int = 9, vocab: int = 40):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(src)
    for b in range(1, batch):  # right padding of different lengths
        mask[b, length - b :] = 0
        src[b, length - b :] = 0
    return src, mask


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_decoding_equals_a_full_pass(position):
    model = _model(position)
    src, mask = _sources()
    tgt = torch.randint(3, 40, (5, 7))
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(tgt, memory, mask)
        cache = KVCache(len(model.decoder))
        steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
def test_beam_one_is_greedy_and_the_cache_changes_nothing(position):
    model = _eos_prone(_model(position))
    src, mask = _sources()
    greedy = greedy_search(model, src, mask, max_extra_tokens=12)
    assert len({len(g) for g in greedy}) > 1  # outputs end at different lengths: EOS handling is exercised
    assert beam_search(model, src, mask, beam_size=1, max_extra_tokens=12) == greedy
    assert greedy_search(model, src, mask, max_extra_tokens=12, use_cache=False) == greedy
    beam = beam_search(model, src, mask, beam_size=4, max_extra_tokens=12)
    assert beam_search(model, src, mask, beam_size=4, max_extra_tokens=12, use_cache=False) == beam


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy():
    """Scored by the model, with the length penalty off, beam 4's output is never less likely than greedy's."""
    model = _eos_prone(_model("rope", seed=3), boost=1.5)
    src, mask = _sources()
    eos, bos = model.config.eos_token_id, model.config.bos_token_id

    def log_probs(hyps: list[list[int]]) -> list[float]:
        """log p(hypothesis + EOS | source), all sources in one right-padded batch (as decoding saw them)."""
        width = max(map(len, hyps)) + 1
        tgt = torch.zeros((len(hyps), width), dtype=torch.long)
        for b, ids in enumerate(hyps):
            tgt[b, : len(ids) + 1] = torch.tensor([bos] + ids)
        with torch.no_grad():
            logp = model.decode(tgt, model.encode(src, mask), mask).log_softmax(-1)
        return [sum(logp[b, t, tok].item() for t, tok in enumerate(ids + [eos])) for b, ids in enumerate(hyps)]

    greedy = greedy_search(model, src, mask, max_extra_tokens=30)
    beam = beam_search(model, src, mask, beam_size=4, length_penalty=0.0, max_extra_tokens=30)
    assert beam != greedy  # the search found something greedy did not
    for lp_beam, lp_greedy in zip(log_probs(beam), log_probs(greedy), strict=True):
        assert lp_beam >= lp_greedy - 1e-4


def test_padding_does_not_change_a_translation():
    model = _eos_prone(_model("rope"))
    src, mask = _sources()
    batched = beam_search(model, src, mask, beam_size=3, max_extra_tokens=10)
    for b in range(src.shape[0]):
        n = int(mask[b].sum())
        alone = beam_search(model, src[b : b + 1, :n], None, beam_size=3, max_extra_tokens=10)
        assert alone[0] == batched[b]


def test_output_length_is_limited_by_the_source():
    model = _model("sinusoidal")  # untrained: EOS is never the best token
    src, mask = _sources()
    for out in (greedy_search(model, src, mask, max_extra_tokens=4), beam_search(model, src, mask, 2, 0.6, 4)):
        assert [len(o) for o in out] == [int(m.sum()) + 4 for m in mask]


@pytest.fixture(scope="module")
def bpe():
    texts = ["a man rides a horse", "ein mann reitet ein pferd", "two dogs play in the snow",
             "zwei hunde spielen im schnee"] * 10
    return train_bpe(texts, 120, SPECIALS)


def test_empty_and_over_long_lines_are_handled(bpe):
    model = _eos_prone(_model("learned", vocab=bpe.get_vocab_size(), max_positions=24))
    lines = ["a man rides a horse", "", "   ", " ".join(["two dogs play in the snow"] * 40)]
    out = translate_lines(model, bpe, lines, beam_size=2, max_source_tokens=256)
    assert len(out) == 4 and out[1] == "" and out[2] == ""
    assert isinstance(out[3], str)  # the long source was cut to the 24 learned positions, no crash
    with pytest.raises(ValueError, match="empty"):
        model.encode(torch.zeros((1, 0), dtype=torch.long))


def test_save_and_load_round_trip(tmp_path):
    model = _model("shaw")
    model.save_pretrained(tmp_path)
    again = Seq2SeqTransformer.from_pretrained(tmp_path).eval()
    src, mask = _sources()
    with torch.no_grad():
        torch.testing.assert_close(again.encode(src, mask), model.encode(src, mask))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "roformer-seq2seq" and config["position"] == "shaw"
    with pytest.raises(ValueError, match="not a Seq2SeqTransformer"):
        (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "roformer-decoder"}))
        Seq2SeqTransformer.from_pretrained(tmp_path)


def test_token_batches_cover_every_example_within_the_budget():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, 40, (500,), generator=g).tolist()
    tgt = torch.randint(1, 40, (500,), generator=g).tolist()
    src[7] = 300  # longer than the budget: a batch of its own
    batches = token_batches(src, tgt, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        width = max(max(src[i], tgt[i]) for i in b)
        assert width * len(b) <= 200 or len(b) == 1


@pytest.mark.slow
def test_translation_recipe_and_translate_command(tmp_path, monkeypatch, capsys):
    require_data("multi30k")
    require_data("newstest2014")
    assert main(["experiment", "translation", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert set(runs) == {"RoFormer", "Transformer (sinusoidal)", "Transformer + RPE (Shaw)"}
    for seeds in runs.values():
        assert len(seeds) == 2  # the smoke preset's seeds
        for r in seeds:
            assert 0 <= r["BLEU test2016 (beam 4)"] <= 100 and r["signature"].startswith("nrefs:1|case:mixed")
    for seed, bootstrap in enumerate(results["paired_bootstrap"]):
        for name, b in bootstrap.items():  # sacreBLEU's paired bootstrap: the same BLEU as the decoding's
            assert b["BLEU"] == pytest.approx(runs[name][seed]["BLEU test2016 (beam 4)"], abs=1e-9)
            assert b["interval"][0] <= b["interval"][1]
            assert name == "RoFormer" or 0 <= b["p"] <= 1
    model = tmp_path / "rope" / "seed1" / "model"
    averaged = average_checkpoints(list_checkpoints(tmp_path / "rope" / "seed1" / "checkpoints")[-5:])
    saved = load_file(str(model / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in averaged.items() if k in saved)  # the last 5, averaged
    assert (tmp_path / "loss.png").is_file() and "Table 1" in (tmp_path / "report.md").read_text()
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("A dog runs.\n\nTwo men.\n"))
    assert main(["translate", "--model", str(tmp_path / "rope" / "seed0" / "model"), "--beam", "2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
