"""RoPE scaling (roformer.rope_scaling) against HuggingFace transformers' own functions (a test-only dependency),
exact float64 rotation against the dense R of Eq. 15, the (batch, seq, heads, dim) layout, cached decoding
under every rope type, and config round trips."""

import math

import pytest
import torch

from roformer import RotaryEmbedding
from roformer.models import RoFormerConfig, RoFormerForCausalLM
from roformer.models.decoder import DecoderConfig, DecoderLM
from roformer.models.generation import sample
from roformer.rope import apply_rotary

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding  # noqa: E402

DIM, HEADS, BASE = 32, 2, 10000.0
LONGROPE = {"short_factor": [1.0 + 0.05 * i for i in range(DIM // 2)],
            "long_factor": [1.0 + 0.5 * i for i in range(DIM // 2)]}
# (our parameters, the model's configured length); HF's dynamic NTK reads the training length from
# max_position_embeddings, ours from original_max_position_embeddings
CASES = {
    "default": ({"rope_type": "default"}, 64),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 64),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64}, 64),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, 64),
    "yarn-mscale": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "mscale": 0.707,
                     "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2, "truncate": False}, 256),
    "yarn-attention-factor": ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                               "attention_factor": 1.3}, 64),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}, 512),
    "longrope": ({"rope_type": "longrope", **LONGROPE, "original_max_position_embeddings": 32}, 128),
    # transformers 5's p-RoPE (Gemma): a quarter of the pairs rotated, frequencies over the whole head
    "proportional": ({"rope_type": "proportional", "partial_rotary_factor": 0.25}, 64),
    "proportional-factor": ({"rope_type": "proportional", "partial_rotary_factor": 0.5, "factor": 8.0}, 64),
    # Llama 4 Scout's published parameters: low_freq_factor == high_freq_factor
    "llama4": ({"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                "original_max_position_embeddings": 64}, 1024),
    # partial_rotary_factor with the other types: the first half of the head, frequencies of the rotary dim
    "default-partial": ({"rope_type": "default", "partial_rotary_factor": 0.5}, 64),
    "linear-partial": ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, 64),
    "yarn-partial": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                      "partial_rotary_factor": 0.5}, 64),
    # yarn and longrope without original_max_position_embeddings: the model's max_position_embeddings, as in HF
    "yarn-implicit-original": ({"rope_type": "yarn", "factor": 4.0}, 64),
    "longrope-implicit-original": ({"rope_type": "longrope", **LONGROPE, "factor": 4.0}, 64),
}


def hf_config(parameters, max_positions):
    hf_parameters = {k: v for k, v in parameters.items() if not (parameters["rope_type"] == "dynamic"
                                                                  and k == "original_max_position_embeddings")}
    # GPT-NeoX: a model whose rotary embedding honours partial_rotary_factor (Llama's ignores it)
    return transformers.GPTNeoXConfig(hidden_size=DIM * HEADS, num_attention_heads=HEADS,
                                    max_position_embeddings=max_positions,
                                    rope_parameters={"partial_rotary_factor": 1.0, **hf_parameters, "rope_theta": BASE})


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seq_len", [None, 40, 1000])
def test_frequencies_and_attention_factor_equal_transformers(name, seq_len):
    """transformers computes the frequencies in float32: they agree with ours (float64) to float32 precision;
    the attention factor (a Python float in both) exactly."""
    parameters, max_positions = CASES[name]
    config = hf_config(parameters, max_positions)
    rope_type = parameters["rope_type"]
    if rope_type == "default":
        rot = int(DIM * parameters.get("partial_rotary_factor", 1.0))
        theirs = (1.0 / BASE ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot), 1.0)
    else:
        theirs = ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)
    rope = RotaryEmbedding(DIM, BASE, scaling=parameters, max_position_embeddings=max_positions)
    theta, factor = rope.frequencies(seq_len)
    assert theta.dtype == torch.float64
    torch.testing.assert_close(theta, theirs[0].double(), rtol=2e-7, atol=0)
    assert factor == pytest.approx(theirs[1], rel=1e-15)


@pytest.mark.parametrize("name", list(CASES))
def test_cos_sin_equal_transformers_rotary_embedding_up_to_32k(name):
    """cos and sin (attention factor included) equal the first dim/2 columns of transformers' half-layout table,
    within its float32 angles' error (about position x 1e-7)."""
    parameters, max_positions = CASES[name]
    hf = GPTNeoXRotaryEmbedding(hf_config(parameters, max_positions))
    rope = RotaryEmbedding(DIM, BASE, scaling=parameters, max_position_embeddings=max_positions)
    for length in (48, 4096, 32768):
        positions = torch.arange(length)
        hf_cos, hf_sin = hf(torch.zeros(1, length, DIM), positions[None])
        cos, sin = rope.cos_sin(length)
        half = rope.rotary_dim // 2
        assert hf_cos.shape[-1] == 2 * half  # the same number of rotated features
        tolerance = (positions[:, None].double() * 2e-7 + 1e-6)
        assert ((cos - hf_cos[0, :, :half].double()).abs() <= tolerance).all(), (name, length)
        assert ((sin - hf_sin[0, :, :half].double()).abs() <= tolerance).all(), (name, length)


def test_rope_theta_in_the_parameters_is_the_base():
    assert RotaryEmbedding(8, scaling={"rope_type": "default", "rope_theta": 500.0}).base == 500.0
    with pytest.raises(ValueError, match="disagree"):
        RotaryEmbedding(8, 1000.0, scaling={"rope_theta": 500.0})


@pytest.mark.parametrize("parameters,message", [
    ({"rope_type": "ntk-by-parts"}, "unknown rope_type 'ntk-by-parts'"),
    ({"rope_type": "linear"}, "'linear' needs 'factor'"),
    ({"rope_type": "linear", "factor": 0.0}, "factor must be a finite number > 0"),
    ({"rope_type": "linear", "factor": -2}, "factor must be a finite number > 0"),
    ({"rope_type": "linear", "factor": float("nan")}, "factor must be a finite number > 0"),
    ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8, "attention_factor": float("nan")},
     "attention_factor must be a finite number > 0"),
    ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8, "beta_fast": -1},
     "beta_fast must be a finite number > 0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 8}, "high_freq_factor .* at least low_freq_factor"),
    ({"rope_type": "default", "partial_rotary_factor": 1.5}, r"partial_rotary_factor must be a number in \(0, 1\]"),
    ({"rope_type": "default", "partial_rotary_factor": 0.1}, "rotary dim must be even and at least 2"),
    ({"rope_type": "default", "partial_rotary_factor": 0.375}, "rotates 3 features"),
    ({"rope_type": "yarn", "factor": 2.0}, "'yarn' needs 'original_max_position_embeddings'"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1, "original_max_position_embeddings": 8},
     "'llama3' needs 'high_freq_factor'"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0], "original_max_position_embeddings": 8,
      "factor": 2.0},
     "short_factor must hold 4"),
    ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, "takes no beta_fast"),
    ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' needs 'original_max_position_embeddings'"),
])
def test_bad_parameters_name_the_type_and_key(parameters, message):
    with pytest.raises(ValueError, match=message):
        RotaryEmbedding(8, scaling=parameters)


def test_scaling_with_another_position_encoding_is_an_error():
    with pytest.raises(ValueError, match="position='rope' only"):
        DecoderConfig(vocab_size=10, position="alibi", rope_parameters={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="position='rope' only"):
        RoFormerConfig(vocab_size=10, position="learned", rope_parameters={"rope_type": "linear", "factor": 2.0})


def dense_rotation(x, positions, theta):
    """R_m of Eq. 15 as a dense block-diagonal d x d matrix per position (the identity past the rotated pairs),
    applied by matrix product."""
    out = torch.empty_like(x)
    for m in range(x.shape[-2]):
        R = torch.eye(x.shape[-1], dtype=torch.float64)
        for i, t in enumerate(theta.tolist()):
            a = int(positions[m]) * t
            R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[math.cos(a), -math.sin(a)],
                                                                  [math.sin(a), math.cos(a)]],
                                                                 dtype=torch.float64)
        out[..., m, :] = x[..., m, :] @ R.T
    return out


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("total_len", [None, 5000, 20000])
def test_float64_is_rotated_exactly(name, total_len):
    """float64 inputs are rotated with float64 cos/sin: equal to the dense R of Eq. 15 (with the type's
    frequencies and attention factor) to 1e-12 at positions to 5000, under every rope type; length-dependent
    types (dynamic, longrope) at the given total length of the sequence."""
    parameters, max_positions = CASES[name]
    rope = RotaryEmbedding(DIM, BASE, scaling=parameters, max_position_embeddings=max_positions)
    positions = torch.tensor([0, 1, 17, 999, 4000, 4999])
    x = torch.randn(2, 3, 6, DIM, dtype=torch.float64)
    if rope.length_dependent and total_len is None:
        with pytest.raises(ValueError, match="total_len"):
            rope.cos_sin(6, position_ids=positions)
        return
    theta, factor = rope.frequencies(total_len)
    expected = dense_rotation(x, positions, theta)
    expected[..., : rope.rotary_dim] *= factor  # the attention factor scales cos and sin: the rotated features only
    cos, sin = rope.cos_sin(6, position_ids=positions, total_len=total_len)
    assert cos.dtype == torch.float64
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected, rtol=1e-12, atol=1e-12)
    if rope.length_dependent:  # the length matters: other angles within the original length
        other, _ = rope.cos_sin(6, position_ids=positions, total_len=1)
        assert (other - cos).abs().max() > 1e-3


@pytest.mark.parametrize("interleaved", [True, False])
def test_batch_seq_heads_layout(interleaved):
    """seq_dim=-3 rotates (batch, seq, heads, dim) along seq: equal to the default layout transposed."""
    q, k = torch.randn(2, 5, 7, 3, 16, dtype=torch.float64).unbind(0)  # (batch, seq, heads, dim)
    bshd = RotaryEmbedding(16, interleaved=interleaved, seq_dim=-3)
    bhsd = RotaryEmbedding(16, interleaved=interleaved)
    for positions in ({}, {"offset": 11}, {"offset": torch.tensor([3, 9, 0, 1, 2])},
                      {"position_ids": torch.arange(7)[None].repeat(5, 1) + 4}):
        ours = bshd(q, k, **positions)
        reference = bhsd(q.transpose(1, 2), k.transpose(1, 2), **positions)
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b.transpose(1, 2), rtol=0, atol=0)
    # the default layout on a (batch, seq, heads, dim) tensor rotates along the heads: not the same
    assert not torch.allclose(bhsd(q, k)[0], bshd(q, k)[0])
    with pytest.raises(ValueError, match="seq_dim"):
        RotaryEmbedding(16, seq_dim=1)


CACHE_CASES = {name: p for name, (p, _) in CASES.items()
               if name in ("default", "linear", "dynamic", "yarn", "llama3", "longrope")}


def _small(parameters, original=8):
    """The case's parameters for a model trained at length ``original``."""
    p = dict(parameters)
    if "original_max_position_embeddings" in p:
        p["original_max_position_embeddings"] = original
    if p["rope_type"] == "longrope":
        p.update(short_factor=[1.0 + 0.1 * i for i in range(4)], long_factor=[1.0 + 0.7 * i for i in range(4)])
    return p


def _model(family, parameters, vocab=40, length=8):
    if family == "decoder":
        return DecoderLM(DecoderConfig(vocab_size=vocab, hidden_size=16, num_layers=2, num_heads=2, dropout=0.0,
                                       max_positions=length, rope_parameters=parameters))
    return RoFormerForCausalLM(RoFormerConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=32, is_decoder=True,
                                              pad_token_id=None, max_position_embeddings=length,
                                              rope_parameters=parameters))


@pytest.mark.parametrize("name", list(CACHE_CASES))
@pytest.mark.parametrize("family", ["decoder", "roformer"])
def test_cached_decoding_equals_a_full_forward_pass(name, family):
    """Past the training length (8 here), under every rope type, each decoding step's logits equal those of a full
    forward pass over the same prefix. Dynamic NTK and LongRoPE change every position's angles as the sequence
    grows: their models refuse a KV cache, and generate() recomputes the prefix, so that equality holds for them
    too (a cache would not give it: measured 1e-6 apart in float64 with un-rotated keys re-rotated each step)."""
    from transformers import DynamicCache

    from roformer.attention import KVCache

    torch.manual_seed(0)
    parameters = _small(CACHE_CASES[name])
    model = _model(family, parameters).double().eval()
    prompt = torch.randint(0, 40, (2, 3))

    def new_cache():  # the RoFormer classes take transformers' caches, the decoder LM its own
        return KVCache(2) if family == "decoder" else DynamicCache(config=model.config)

    def step(ids, cache):
        return model(ids, kv_cache=cache) if family == "decoder" else model(ids, cache=cache, use_cache=True)

    with torch.no_grad():
        generated = model.generate(prompt, 20, temperature=0) if family == "decoder" else \
            model.generate(prompt, max_new_tokens=20, do_sample=False)
        assert torch.equal(generated, sample(model, prompt, 20, 2, temperature=0, use_cache=False))
        if name in ("dynamic", "longrope"):
            with pytest.raises(ValueError, match="KV cache would hold stale keys"):
                step(prompt, new_cache())
            return
        cache = new_cache()
        steps = [step(generated[:, :3], cache).logits[:, -1]]
        steps += [step(generated[:, t : t + 1], cache).logits[:, -1] for t in range(3, generated.shape[1])]
        for t, logits in enumerate(steps):
            reference = model(generated[:, : t + 3]).logits[:, -1]
            torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["decoder", "roformer"])
def test_scaling_is_saved_and_loaded_with_the_same_logits(tmp_path, family):
    parameters = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}
    torch.manual_seed(1)
    if family == "decoder":
        model = DecoderLM(DecoderConfig(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, max_positions=32,
                                        rope_parameters=parameters))
        cls = DecoderLM
    else:
        model = RoFormerForCausalLM(RoFormerConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32, is_decoder=True,
                                                   max_position_embeddings=32, rope_parameters=parameters))
        cls = RoFormerForCausalLM
    model.eval().save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path).eval()
    assert again.config.rope_parameters == parameters
    ids = torch.randint(0, 30, (2, 30))
    unscaled = cls(type(model.config)(**{**model.config.__dict__, "rope_parameters": None}))
    unscaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
        assert not torch.allclose(unscaled.eval()(ids).logits, model(ids).logits)


def test_yarn_warns_like_transformers_when_the_factor_and_the_lengths_disagree():
    consistent = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RotaryEmbedding(DIM, scaling=consistent, max_position_embeddings=64)  # 64 / 16 == 4: silent
        RotaryEmbedding(DIM, scaling={"rope_type": "yarn", "factor": 4.0}, max_position_embeddings=64)  # implicit 1
    with pytest.warns(UserWarning, match="factor 4.0 differs from max_position_embeddings"):
        RotaryEmbedding(DIM, scaling=consistent, max_position_embeddings=32)
    with pytest.raises(ValueError, match="'yarn' needs 'original_max_position_embeddings'.*max_position_embeddings"):
        RotaryEmbedding(DIM, scaling={"rope_type": "yarn", "factor": 4.0})


@pytest.mark.parametrize("family", ["decoder", "roformer"])
def test_partial_rotary_factor_and_rope_theta_in_model_configs(tmp_path, family):
    """partial_rotary_factor in a model's rope_parameters rotates that fraction of each head (as transformers does),
    survives save / load, and the parameters' rope_theta is the model's base; two explicit bases are an error."""
    parameters = {"rope_type": "default", "partial_rotary_factor": 0.5, "rope_theta": 500.0}
    torch.manual_seed(2)
    if family == "decoder":
        model = DecoderLM(DecoderConfig(vocab_size=30, hidden_size=32, num_layers=1, num_heads=2,
                                        rope_parameters=parameters))
        with pytest.raises(ValueError, match="disagree"):
            DecoderConfig(vocab_size=30, rope_theta=7.0, rope_parameters=parameters)
    else:
        model = RoFormerForCausalLM(RoFormerConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32, is_decoder=True,
                                                   rope_parameters=parameters))
        with pytest.raises(ValueError, match="disagree"):
            RoFormerConfig(vocab_size=30, rope_theta=7.0, rope_parameters=parameters)
    assert model.config.rope_theta == 500.0
    rotary = next(m for m in model.modules() if isinstance(m, RotaryEmbedding))
    assert (rotary.dim, rotary.rotary_dim, rotary.base) == (16, 8, 500.0)
    model.eval().save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("low, high", [(1.0, 4.0), (1.0, 1.0)], ids=["llama3.1", "llama4"])
def test_llama3_equals_torchtune_scaled_rope(low, high):
    """torchtune's Llama3ScaledRoPE (interleaved pairing, float32 tables) on (batch, seq) positions, with Llama
    3.1's factors and Llama 4 Scout's equal ones, which this module used to refuse."""
    from .peers import torchtune_module

    theirs = torchtune_module("models/llama3_1/_position_embeddings.py").Llama3ScaledRoPE(
        DIM, max_seq_len=512, base=500000, scale_factor=8, low_freq_factor=low, high_freq_factor=high,
        old_context_len=64)
    ours = RotaryEmbedding(DIM, 500000.0, interleaved=True, seq_dim=-3, scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": low, "high_freq_factor": high,
        "original_max_position_embeddings": 64})
    x = torch.randn(2, 40, HEADS, DIM)
    positions = torch.randint(0, 512, (2, 40))
    torch.testing.assert_close(ours.rotate(x, position_ids=positions), theirs(x, input_pos=positions), rtol=1e-4,
                               atol=1e-4)
