"""Checkpoints are interchangeable with HuggingFace's RoFormer, and our logits equal theirs.

HuggingFace models are built locally with random weights (no hub access)."""

import json
import logging

import pytest
import torch

import roformer
from roformer import KVCache, RoFormerConfig

transformers = pytest.importorskip("transformers")

HEADS = [
    "RoFormerModel",
    "RoFormerForMaskedLM",
    "RoFormerForCausalLM",
    "RoFormerForSequenceClassification",
    "RoFormerForTokenClassification",
    "RoFormerForQuestionAnswering",
    "RoFormerForMultipleChoice",
]

CONFIGS = {
    "base-like": dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=64),
    "factorized-embedding": dict(vocab_size=97, embedding_size=24, hidden_size=48, num_hidden_layers=3,
                                 num_attention_heads=3, intermediate_size=80, max_position_embeddings=64),
    "rotary-value-gelu-new": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, rotary_value=True, hidden_act="gelu_new",
                                  num_labels=3, max_position_embeddings=64),
}


def hf_model(head: str, config: dict, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.RoFormerConfig(**config, is_decoder=head == "RoFormerForCausalLM")
    model = getattr(transformers, head)(cfg).eval()
    with torch.no_grad():  # make every parameter random, biases and LayerNorms too (not the RoPE table)
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(config: dict, head: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config["vocab_size"], (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 4:] = 0
    types = torch.randint(0, 2, ids.shape, generator=g)
    if head == "RoFormerForCausalLM":
        types = torch.zeros_like(ids)
    if head == "RoFormerForMultipleChoice":
        ids, mask, types = (t.view(1, 3, 17) for t in (ids, mask, types))
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def outputs(model, inputs, ours: bool):
    with torch.no_grad():
        out = model(**inputs)
    if getattr(out, "logits", None) is None and getattr(out, "start_logits", None) is None:
        return [out.last_hidden_state]
    if getattr(out, "start_logits", None) is not None:
        return [out.start_logits, out.end_logits]
    return [out.logits]


def compare(hf, ours, inputs, head):
    a, b = outputs(hf, inputs, ours=False), outputs(ours, inputs, ours=True)
    mask = inputs["attention_mask"].bool()
    for x, y in zip(a, b, strict=True):
        if head == "RoFormerForCausalLM":
            # rows fully masked by causal + padding are arbitrary in both; compare the real tokens
            x, y = x[mask], y[mask]
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("head", HEADS)
def test_we_load_huggingface_and_match_its_outputs(tmp_path, head, config_name):
    config = CONFIGS[config_name]
    hf = hf_model(head, config)
    hf.save_pretrained(tmp_path)
    ours = getattr(roformer, head).from_pretrained(tmp_path).eval()
    compare(hf, ours, batch(config, head), head)


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("head", HEADS)
def test_huggingface_loads_ours_and_matches(tmp_path, head, config_name):
    config = CONFIGS[config_name]
    ours_cfg = RoFormerConfig(**config, is_decoder=head == "RoFormerForCausalLM")
    torch.manual_seed(3)
    ours = getattr(roformer, head)(ours_cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "roformer" and saved["architectures"] == [head]
    hf = getattr(transformers, head).from_pretrained(tmp_path).eval()
    compare(hf, ours, batch(config, head), head)
    # and back again: our own round trip is exact
    again = getattr(roformer, head).from_pretrained(tmp_path).eval()
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)


def test_encoder_checkpoint_into_a_classifier_warns_about_the_new_head(tmp_path, caplog):
    hf = hf_model("RoFormerForMaskedLM", CONFIGS["base-like"])
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        clf = roformer.RoFormerForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert "classifier.out_proj.weight" in caplog.text
    assert clf.classifier.out_proj.out_features == 5
    torch.testing.assert_close(clf.roformer.embeddings.word_embeddings.weight,
                               hf.roformer.embeddings.word_embeddings.weight)


def test_longer_than_max_position_embeddings(tmp_path):
    """HuggingFace's table stops at max_position_embeddings; RoPE here has no maximum."""
    config = dict(CONFIGS["base-like"], max_position_embeddings=16)
    hf = hf_model("RoFormerForMaskedLM", config)
    hf.save_pretrained(tmp_path)
    ours = roformer.RoFormerForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 97, (2, 100))
    with torch.no_grad():
        logits = ours(ids).logits
        assert logits.shape == (2, 100, 97) and torch.isfinite(logits).all()
        short = ids[:, :16]
        torch.testing.assert_close(ours(short).logits, hf(input_ids=short).logits, rtol=1e-5, atol=1e-5)


def test_causal_lm_cached_generation_equals_uncached_and_huggingface(tmp_path):
    hf = hf_model("RoFormerForCausalLM", CONFIGS["base-like"])
    hf.save_pretrained(tmp_path)
    ours = roformer.RoFormerForCausalLM.from_pretrained(tmp_path).eval()
    prompt = torch.randint(1, 97, (2, 5))
    generated = ours.generate(prompt, max_new_tokens=10)  # greedy, transformers' default
    assert torch.equal(generated, hf.generate(prompt, max_new_tokens=10))
    # greedy decoding without a cache: one full forward per step
    ids = prompt
    for _ in range(10):
        with torch.no_grad():
            ids = torch.cat((ids, ours(ids).logits[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(generated, ids)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    # cached logits equal uncached ones step by step
    # cached logits equal uncached ones step by step, with transformers' cache and with ours
    for cache in (transformers.DynamicCache(config=ours.config), KVCache(ours.config.num_hidden_layers)):
        with torch.no_grad():
            first = ours(ids[:, :8], cache=cache).logits
            rest = [ours(ids[:, t : t + 1], cache=cache).logits for t in range(8, ids.shape[1])]
            torch.testing.assert_close(torch.cat([first, *rest], 1), ours(ids).logits, rtol=1e-5, atol=1e-5)


def test_losses_match_huggingface(tmp_path):
    hf = hf_model("RoFormerForMaskedLM", CONFIGS["base-like"])
    hf.save_pretrained(tmp_path)
    ours = roformer.RoFormerForMaskedLM.from_pretrained(tmp_path).eval()
    inputs = batch(CONFIGS["base-like"], "RoFormerForMaskedLM")
    labels = inputs["input_ids"].masked_fill(torch.rand(3, 17) < 0.5, -100)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs, labels=labels).loss, hf(**inputs, labels=labels).loss)


def test_bad_directories_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        roformer.RoFormerModel.from_pretrained(tmp_path)
    hf_model("RoFormerModel", CONFIGS["base-like"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, hidden_size=32)))
    with pytest.raises(ValueError, match="shape"):
        roformer.RoFormerModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
    with pytest.raises(ValueError, match="not a RoFormer config"):
        roformer.RoFormerModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a loading option nor a RoFormerConfig field"):
        (tmp_path / "config.json").write_text(json.dumps(config))
        roformer.RoFormerModel.from_pretrained(tmp_path, hidden_sise=3)


def test_a_checkpoint_that_its_config_does_not_describe_is_refused(tmp_path):
    """num_hidden_layers: 1 for a 2-layer checkpoint used to load, dropping a layer with no word; int32 tensors for
    float weights too. A head the class lacks (the MLM head under a classifier) is still dropped with a warning."""
    import json as _json

    from safetensors.torch import load_file, save_file

    from roformer import RoFormerConfig, RoFormerForMaskedLM, RoFormerForSequenceClassification, RoFormerModel

    config = RoFormerConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32)
    RoFormerForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    RoFormerForSequenceClassification.from_pretrained(tmp_path / "mlm", num_labels=3)  # head dropped: fine
    shallow = tmp_path / "shallow"
    shallow.mkdir()
    (shallow / "model.safetensors").write_bytes((tmp_path / "mlm" / "model.safetensors").read_bytes())
    cfg = _json.loads((tmp_path / "mlm" / "config.json").read_text())
    (shallow / "config.json").write_text(_json.dumps({**cfg, "num_hidden_layers": 1}))
    for cls in (RoFormerForMaskedLM, RoFormerModel):
        with pytest.raises(ValueError, match=r"encoder weights its config.json has no place for \(.*layer\.1"):
            cls.from_pretrained(shallow)
    ints = tmp_path / "ints"
    ints.mkdir()
    (ints / "config.json").write_text((tmp_path / "mlm" / "config.json").read_text())
    tensors = load_file(str(tmp_path / "mlm" / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("attention.self.query.weight"))
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, str(ints / "model.safetensors"))
    with pytest.raises(ValueError, match=r"query.* stored as I32; a weight must be a floating-point"):
        RoFormerForMaskedLM.from_pretrained(ints)
    # the models saved in our own format (decoder LM, encoder-decoder) check the same, from the file's header
    from roformer.models.decoder import DecoderConfig, DecoderLM

    DecoderLM(DecoderConfig(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2)).save_pretrained(tmp_path / "lm")
    tensors = load_file(str(tmp_path / "lm" / "model.safetensors"))
    tensors["embed.weight"] = tensors["embed.weight"].to(torch.int32)
    save_file(tensors, str(tmp_path / "lm" / "model.safetensors"))
    with pytest.raises(ValueError, match="embed.weight is stored as I32; a weight must be a floating-point"):
        DecoderLM.from_pretrained(tmp_path / "lm")
