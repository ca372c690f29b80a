"""RoPE with linear attention (Eq. 19) against a dense O(N^2) float64 evaluation of the same formula, for every
feature map, causal and not, with and without RoPE, offsets and chunk sizes; causality as a prefix test; the
causal sums' own backward against autograd through the dense form."""

import math

import pytest
import torch
import torch.nn.functional as F

from roformer import RotaryEmbedding
from roformer.linear_attention import FavorFeatures, causal_product, linear_attention
from roformer.models.decoder import DecoderConfig, DecoderLM


def favor_reference(features: FavorFeatures):
    """FAVOR+ written from its definition, exp(w . x' - |x'|^2 / 2) / sqrt(m) with x' = x / d^(1/4), unstabilised."""
    w = features.projection.double()

    def phi(x):
        x = x / features.head_dim ** 0.25
        return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])
    return phi


def positive_callable(x):
    return F.softplus(x) + 0.05


FEATURE_MAPS = {
    "elu": lambda dim: ("elu", lambda x: F.elu(x) + 1),
    "favor": lambda dim: (lambda f: (f, favor_reference(f)))(FavorFeatures(dim, num_features=2 * dim)),
    "callable": lambda dim: (positive_callable, positive_callable),
}


def dense_eq19(q, k, v, phi, rope, causal, offset=0):
    """sum_n (R_m phi(q_m))^T (R_n phi(k_n)) v_n / sum_n phi(q_m)^T phi(k_n), term by term with an N x N mask."""
    pq, pk = phi(q), phi(k)
    rq, rk = (pq, pk) if rope is None else rope(pq, pk, offset=offset)
    numerator_weights = rq @ rk.transpose(-1, -2)  # (b, h, m, n)
    denominator_weights = pq @ pk.transpose(-1, -2)
    if causal:
        future = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu(1)
        numerator_weights = numerator_weights.masked_fill(future, 0)
        denominator_weights = denominator_weights.masked_fill(future, 0)
    return (numerator_weights @ v) / denominator_weights.sum(-1, keepdim=True)


def inputs(seed, n=40, dim=8, scale=1.0):
    torch.manual_seed(seed)
    q, k = (scale * torch.randn(2, 2, 3, n, dim, dtype=torch.float64)).unbind(0)
    return q, k, torch.randn(2, 3, n, 5, dtype=torch.float64)


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(FEATURE_MAPS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("chunk", [7, 8, 1000])  # not dividing 40, dividing it, longer than the sequence
@pytest.mark.parametrize("offset", [0, 13])
def test_equals_dense_eq19(name, causal, use_rope, chunk, offset):
    q, k, v = inputs(0)
    feature_map, phi = FEATURE_MAPS[name](8)
    feature_dim = 16 if name == "favor" else 8
    rope = RotaryEmbedding(feature_dim) if use_rope else None
    got = linear_attention(q, k, v, feature_map, causal=causal, rope=rope, offset=offset, chunk_size=chunk)
    assert got.dtype == torch.float64
    assert relative_error(got, dense_eq19(q, k, v, phi, rope, causal, offset)) < 1e-10


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("rotary_dim", [4, 8])
def test_both_pairings_and_partial_rotary_equal_dense(causal, interleaved, rotary_dim):
    q, k, v = inputs(9)
    rope = RotaryEmbedding(rotary_dim, interleaved=interleaved)
    got = linear_attention(q, k, v, "elu", causal=causal, rope=rope, chunk_size=7, offset=torch.tensor([2, 9]))
    expected = dense_eq19(q, k, v, lambda x: F.elu(x) + 1, rope, causal, torch.tensor([2, 9]))
    assert relative_error(got, expected) < 1e-10


@pytest.mark.parametrize("causal", [False, True])
def test_favor_is_exact_where_its_exponents_span_a_wide_range(causal):
    """q and k 3x larger: the raw features span about 30 orders of magnitude (exponents -70 .. 6), which the
    stabiliser must absorb without changing the result (at 4x the outputs reach 1e6, so ill-conditioned that
    the float64 reference itself is no longer good to 1e-10)."""
    q, k, v = inputs(1, n=64, dim=16, scale=3.0)
    features = FavorFeatures(16, num_features=32)
    assert features.log_features(k).min() < -50
    rope = RotaryEmbedding(32)
    got = linear_attention(q, k, v, features, causal=causal, rope=rope, chunk_size=16)
    assert relative_error(got, dense_eq19(q, k, v, favor_reference(features), rope, causal)) < 1e-10
    # float32 inputs are computed in float32 and stay close to the float64 result
    single = linear_attention(q.float(), k.float(), v.float(), features.float(), causal=causal, rope=rope,
                              chunk_size=16)
    assert relative_error(single.double(), got) < 1e-3


@pytest.mark.parametrize("name", list(FEATURE_MAPS))
@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("chunk", [7, 16, 1000])
@pytest.mark.parametrize("cut", [21, 32])
def test_causal_outputs_depend_on_their_prefix_only(name, use_rope, chunk, cut):
    """The first ``cut`` outputs of a causal run equal a run on the first ``cut`` tokens alone, even when the
    later keys are much larger (they would dominate any stabiliser taken over the whole sequence)."""
    q, k, v = inputs(2, n=48, dim=8)
    k[:, :, cut:] *= 4
    feature_map, _ = FEATURE_MAPS[name](8)
    rope = RotaryEmbedding(16 if name == "favor" else 8) if use_rope else None
    full = linear_attention(q, k, v, feature_map, causal=True, rope=rope, chunk_size=chunk, offset=3)
    prefix = linear_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], feature_map, causal=True, rope=rope,
                              chunk_size=chunk, offset=3)
    assert relative_error(full[:, :, :cut], prefix) < 1e-12


@pytest.mark.parametrize("with_scales", [False, True])
@pytest.mark.parametrize("chunk", [3, 8, 50])
def test_causal_product_gradients(with_scales, chunk):
    """The hand-written backward of the chunked causal sums equals finite differences (gradcheck) and the
    gradient of the dense masked form computed by autograd."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 19, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 2, 19, dtype=torch.float64).cummax(-1).values if with_scales else None
    assert torch.autograd.gradcheck(lambda a, b, c: causal_product(a, b, c, g, chunk), (q, k, v))
    weights = torch.ones(19, 19, dtype=torch.float64).tril()
    if g is not None:
        weights = weights * torch.exp(g[..., None, :] - g[..., :, None]).masked_fill(weights == 0, 0)
    grad = torch.randn(2, 2, 19, 4, dtype=torch.float64)
    expected = torch.autograd.grad(((q @ k.transpose(-1, -2) * weights) @ v * grad).sum(), (q, k, v))
    got = torch.autograd.grad((causal_product(q, k, v, g, chunk) * grad).sum(), (q, k, v))
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("name", list(FEATURE_MAPS))
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_the_dense_formula(name, causal):
    q, k, v = inputs(4, n=30, dim=8, scale=2.0)
    for t in (q, k, v):
        t.requires_grad_(True)
    feature_map, phi = FEATURE_MAPS[name](8)
    rope = RotaryEmbedding(16 if name == "favor" else 8)
    grad = torch.randn(2, 3, 30, 5, dtype=torch.float64)
    got = torch.autograd.grad((linear_attention(q, k, v, feature_map, causal=causal, rope=rope, chunk_size=7)
                               * grad).sum(), (q, k, v))
    expected = torch.autograd.grad((dense_eq19(q, k, v, phi, rope, causal) * grad).sum(), (q, k, v))
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-10


def test_denominator_guard():
    """By default only a denominator that underflowed to zero is replaced (the output is then finite); a
    relative ``eps`` floors the denominator at eps times the scale of its terms."""
    q, k, v = inputs(5, n=10)
    zero = linear_attention(q, k, v, lambda x: torch.zeros_like(x), causal=True)
    assert torch.isfinite(zero).all() and (zero == 0).all()
    exact = linear_attention(q, k, v, "elu", causal=True)
    floored = linear_attention(q, k, v, "elu", causal=True, eps=1e6)
    assert relative_error(floored, exact) > 0.5  # a huge floor changes the result ...
    scaled = linear_attention(1e-3 * q, k, v, lambda x: 1e-30 * (F.elu(x) + 1), causal=True, eps=1e-12)
    reference = linear_attention(1e-3 * q, k, v, "elu", causal=True)
    assert relative_error(scaled, reference) < 1e-10  # ... and a small one is relative to the features' scale


def test_denominator_is_not_rotated():
    """Eq. 19 keeps the denominator un-rotated: rotating it too (a different formula) gives another result."""
    q, k, v = inputs(6, n=20)
    rope = RotaryEmbedding(8)
    ours = linear_attention(q, k, v, "elu", rope=rope)
    pq, pk = F.elu(q) + 1, F.elu(k) + 1
    rq, rk = rope(pq, pk)
    both_rotated = (rq @ rk.transpose(-1, -2) @ v) / (rq @ rk.transpose(-1, -2)).sum(-1, keepdim=True)
    assert not torch.allclose(ours, both_rotated, atol=1e-3)
    # and the variant of performer-pytorch (rotate q, k, then the feature map) is yet another formula
    variant = linear_attention(q, k, v, "elu", rope=rope, rope_mode="before_feature_map")
    assert not torch.allclose(ours, variant, atol=1e-3)


def test_favor_approximates_softmax_attention():
    """FAVOR+ features are an unbiased estimate of exp(q.k / sqrt(d)): with many features, linear attention
    comes close to softmax attention (a sanity check of the feature map, not of RoPE)."""
    torch.manual_seed(7)
    q, k = (0.5 * torch.randn(2, 1, 1, 30, 16)).unbind(0)
    v = torch.randn(1, 1, 30, 16)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v
    approx = linear_attention(q, k, v, FavorFeatures(16, num_features=4096))
    assert (approx - exact).abs().mean() < 0.05 * exact.abs().mean() + 0.02


@pytest.mark.parametrize("feature_map", ["favor", "elu"])
def test_performer_decoder_does_not_see_the_future(feature_map):
    """The §4.4 model with q/k/v weights scaled by 4 (large exponents): the logits of a prefix do not move when
    later tokens change."""
    torch.manual_seed(8)
    config = DecoderConfig(vocab_size=50, hidden_size=64, num_layers=2, num_heads=2, dropout=0.0,
                           attention="linear", feature_map=feature_map, position="rope", num_features=32)
    model = DecoderLM(config).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.weight"):
                p.mul_(4)
        ids = torch.randint(0, 50, (2, 300))
        changed = ids.clone()
        changed[:, 150:] = (changed[:, 150:] + 7) % 50
        a, b, prefix = model(ids).logits, model(changed).logits, model(ids[:, :150]).logits
    assert relative_error(a[:, :150], b[:, :150]) < 1e-12
    assert relative_error(a[:, :150], prefix) < 1e-12


def test_clear_errors():
    x = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="rope_mode"):
        linear_attention(x, x, x, rope=RotaryEmbedding(8), rope_mode="after")
    with pytest.raises(ValueError, match="feature map"):
        linear_attention(x, x, x, feature_map="relu")
    with pytest.raises(ValueError, match="batch, heads, seq"):
        linear_attention(x[0], x[0], x[0])
    with pytest.raises(ValueError, match="even"):
        FavorFeatures(8, num_features=7)
    with pytest.raises(ValueError, match="eps"):
        linear_attention(x, x, x, eps=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(x, x, x, causal=True, chunk_size=0)
