"""What a user arriving from `transformers` expects: hub ids (offline, from a hub cache laid out here), transformers'
output objects, gradient checkpointing, the embedding methods, num_parameters, export."""

import pytest
import torch

import roformer
from roformer import RoFormerConfig, RoFormerForMaskedLM, RoFormerModel

transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hf_mlm(seed=0):
    torch.manual_seed(seed)
    return transformers.RoFormerForMaskedLM(transformers.RoFormerConfig(**CONFIG)).eval()


def hub_cache(root, repo_id, model, commit=COMMIT, ref="main"):
    """The layout huggingface_hub keeps: models--org--name/{refs/<ref>, snapshots/<commit>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo


def test_hub_id_loads_offline_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    hf = hf_mlm()
    hub_cache(tmp_path / "cache", "junnyu/roformer_chinese_base", hf)
    ours = RoFormerForMaskedLM.from_pretrained("junnyu/roformer_chinese_base", cache_dir=tmp_path / "cache").eval()
    ids = torch.randint(1, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    # the cache directory can also come from the hub's own environment variable
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    RoFormerForMaskedLM.from_pretrained("junnyu/roformer_chinese_base")
    # a revision: another snapshot, by its commit
    other = hf_mlm(seed=5)
    other_commit = "f" * 40
    hub_cache(tmp_path / "cache", "junnyu/roformer_chinese_base", other, commit=other_commit, ref="v2")
    again = RoFormerForMaskedLM.from_pretrained("junnyu/roformer_chinese_base", revision=other_commit).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, other(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_a_local_directory_wins_and_missing_ids_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    hub_cache(tmp_path / "cache", "org/model", hf_mlm(seed=0))
    local = hf_mlm(seed=3)
    local.save_pretrained(tmp_path / "org" / "model")
    ours = RoFormerForMaskedLM.from_pretrained("org/model").eval()
    ids = torch.randint(1, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, local(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="nobody/nothing: not a local directory, and the hub gave no copy .off"):
        RoFormerForMaskedLM.from_pretrained("nobody/nothing")
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        RoFormerForMaskedLM.from_pretrained("./no/such/dir")


def test_outputs_have_huggingface_field_names(tmp_path):
    hf = hf_mlm()
    hf.save_pretrained(tmp_path)
    base_hf = transformers.RoFormerModel.from_pretrained(tmp_path).eval()
    base = RoFormerModel.from_pretrained(tmp_path).eval()
    mlm = RoFormerForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 97, (2, 7))
    labels = ids.masked_fill(torch.rand(ids.shape) < 0.5, -100)
    with torch.no_grad():
        ours, theirs = base(ids), base_hf(input_ids=ids)
        torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
        ours, theirs = mlm(ids, labels=labels), hf(input_ids=ids, labels=labels)
        torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)  # the loss first, as in HF
        torch.testing.assert_close(ours["logits"], theirs["logits"], rtol=1e-5, atol=1e-5)
    assert list(ours.keys())[:2] == ["loss", "logits"]
    assert isinstance(ours, transformers.modeling_outputs.MaskedLMOutput)  # transformers' own output classes
    with pytest.raises(KeyError, match="start_logits"):
        ours["start_logits"]
    qa = roformer.RoFormerForQuestionAnswering(RoFormerConfig(**CONFIG)).eval()
    out = qa(ids)
    assert out.start_logits.shape == out.end_logits.shape == (2, 7) and out[0] is out.start_logits
    causal = roformer.RoFormerForCausalLM(RoFormerConfig(**CONFIG)).eval()
    cache = transformers.DynamicCache(config=causal.config)
    assert causal(ids, cache=cache, use_cache=True).cache is cache and cache.get_seq_length() == 7


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradient_checkpointing_gives_the_same_gradients(dropout):
    config = RoFormerConfig(**CONFIG, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    model = RoFormerForMaskedLM(config).double().train()
    ids = torch.randint(1, 97, (2, 33))

    def gradients():
        model.zero_grad()
        torch.manual_seed(1)
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.activation_checkpointing_enable()  # transformers 5's name (gradient_checkpointing_enable is deprecated)
    assert model.is_activation_checkpointing
    checkpointed = gradients()
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing


def test_embedding_methods_and_parameter_count(tmp_path):
    hf = hf_mlm()
    hf.save_pretrained(tmp_path)
    model = RoFormerForMaskedLM.from_pretrained(tmp_path).eval()
    # HF also counts its fixed sinusoidal table (max_position_embeddings x head_dim, a frozen parameter); ours is a
    # buffer, kept so that stock transformers finds it in our checkpoints
    assert model.num_parameters() == hf.num_parameters(only_trainable=True)
    assert hf.num_parameters() - hf.num_parameters(only_trainable=True) == 64 * 16
    assert model.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True)
    assert model.get_input_embeddings() is model.roformer.embeddings.word_embeddings
    ids = torch.randint(1, 97, (2, 6))
    with torch.no_grad():
        before = model(ids).logits
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120 and model.get_input_embeddings().num_embeddings == 120
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    with torch.no_grad():
        after = model(ids).logits
        torch.testing.assert_close(after[..., :97], before)  # the old tokens' rows are kept
        model(torch.tensor([[119, 100]]))  # the new ids work
    model.save_pretrained(tmp_path / "resized")
    assert transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / "resized").config.vocab_size == 120
    model.resize_token_embeddings(50)
    assert model.cls.predictions.bias.shape == (50,) and model(torch.tensor([[49]])).logits.shape[-1] == 50
    new = torch.nn.Embedding(50, 32)
    model.set_input_embeddings(new)
    model.tie_weights()  # transformers' own way to re-tie after replacing the input embeddings
    assert model.cls.predictions.decoder.weight is new.weight


@pytest.mark.parametrize("head", ["RoFormerForSequenceClassification", "RoFormerForMaskedLM",
                                  "RoFormerForQuestionAnswering", "RoFormerModel"])
def test_export_onnx_runs_in_onnxruntime_on_longer_inputs(tmp_path, head):
    """`roformer export` of a checkpoint saved by transformers: dynamic batch and sequence, checked by
    onnxruntime on 3 x 300 tokens (traced at 2 x 16) to 1e-4, here re-checked independently at 3 x 500."""
    onnxruntime = pytest.importorskip("onnxruntime")
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(0)
    hf = getattr(transformers, head)(transformers.RoFormerConfig(**{**CONFIG, "max_position_embeddings": 1024}))
    hf = hf.eval()
    hf.save_pretrained(tmp_path / "model")
    out = tmp_path / "model.onnx"
    command = [str(Path(sys.executable).parent / "roformer"), "export", "--model", str(tmp_path / "model"), "--out",
               str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "max abs difference" in result.stdout
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = torch.randint(1, 97, (3, 500))
    mask = torch.ones_like(ids)
    mask[2, 250:] = 0
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                             "token_type_ids": torch.zeros_like(ids).numpy()})
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask)
    names = {"RoFormerModel": ["last_hidden_state"],
             "RoFormerForQuestionAnswering": ["start_logits", "end_logits"]}.get(head, ["logits"])
    for array, name in zip(got, names, strict=True):
        torch.testing.assert_close(torch.from_numpy(array), getattr(expected, name), rtol=1e-4, atol=1e-4)


def test_export_torch_program(tmp_path):
    torch.manual_seed(0)
    roformer.RoFormerForCausalLM(RoFormerConfig(**CONFIG)).save_pretrained(tmp_path / "model")
    from roformer.export import export_model

    report = export_model(tmp_path / "model", tmp_path / "model.pt2", "torch")
    assert report["head"] == "RoFormerForCausalLM" and report["max abs difference"] < 1e-4
    program = torch.export.load(str(tmp_path / "model.pt2"))
    ids = torch.randint(1, 97, (2, 200))
    with torch.no_grad():
        expected = roformer.RoFormerForCausalLM.from_pretrained(tmp_path / "model").eval()(ids).logits
        torch.testing.assert_close(program.module()(ids, torch.ones_like(ids))[0], expected, rtol=1e-5, atol=1e-5)
