"""RoPE with linear attention (Eq. 19) against a dense O(N^2) evaluation of the same formula."""

import pytest
import torch

from roformer import RotaryEmbedding
from roformer.linear_attention import FavorFeatures, elu_feature_map, linear_attention


def dense_eq19(q, k, v, phi_q, phi_k, rope, causal, positions=None):
    """sum_n (R_m phi(q_m))^T (R_n phi(k_n)) v_n / sum_n phi(q_m)^T phi(k_n), term by term."""
    pq, pk = phi_q(q), phi_k(k)
    rq, rk = (pq, pk) if rope is None else rope(pq, pk, positions)
    numerator_weights = rq @ rk.transpose(-1, -2)  # (b, h, m, n)
    denominator_weights = pq @ pk.transpose(-1, -2)
    if causal:
        mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
        numerator_weights = numerator_weights.masked_fill(~mask, 0)
        denominator_weights = denominator_weights.masked_fill(~mask, 0)
    return (numerator_weights @ v) / denominator_weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("chunk", [4, 16, 1000])
def test_elu_equals_dense(causal, use_rope, chunk):
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 3, 37, 8, dtype=torch.float64).unbind(0)
    v = torch.randn(2, 3, 37, 5, dtype=torch.float64)
    rope = RotaryEmbedding(8) if use_rope else None
    got = linear_attention(q, k, v, "elu", causal=causal, rope=rope, chunk_size=chunk)
    expected = dense_eq19(q, k, v, elu_feature_map, elu_feature_map, rope, causal).float()
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_favor_with_rope_equals_dense_and_positions_shift(causal):
    torch.manual_seed(1)
    features = FavorFeatures(16, num_features=32)
    q, k = torch.randn(2, 1, 2, 50, 16).unbind(0)
    v = torch.randn(1, 2, 50, 16)
    rope = RotaryEmbedding(32)
    got = linear_attention(q, k, v, features, causal=causal, rope=rope, positions=5, chunk_size=16)
    expected = dense_eq19(q, k, v, lambda x: features(x, True), lambda x: features(x, False), rope, causal, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    if not causal:  # the numerator depends on n - m only: a common shift of positions changes nothing
        shifted = linear_attention(q, k, v, features, causal=causal, rope=rope, positions=1000)
        torch.testing.assert_close(shifted, got, rtol=1e-4, atol=1e-5)


def test_denominator_is_not_rotated():
    """Eq. 19 keeps the denominator un-rotated: rotating it too (a different formula) gives another result."""
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 1, 1, 20, 8, dtype=torch.float64).unbind(0)
    rope = RotaryEmbedding(8)
    ours = linear_attention(q, k, v, "elu", rope=rope).double()
    pq, pk = elu_feature_map(q), elu_feature_map(k)
    rq, rk = rope(pq, pk)
    both_rotated = (rq @ rk.transpose(-1, -2) @ v) / (rq @ rk.transpose(-1, -2)).sum(-1, keepdim=True)
    assert not torch.allclose(ours, both_rotated, atol=1e-3)
    # and the variant of performer-pytorch (rotate q, k, then the feature map) is yet another formula
    variant = linear_attention(q, k, v, "elu", rope=rope, rope_mode="before_feature_map").double()
    assert not torch.allclose(ours, variant, atol=1e-3)


def test_favor_approximates_softmax_attention():
    """FAVOR+ features are an unbiased estimate of exp(q.k / sqrt(d)): with many features, linear attention
    comes close to softmax attention (a sanity check of the feature map, not of RoPE)."""
    torch.manual_seed(3)
    q, k = (0.5 * torch.randn(2, 1, 1, 30, 16)).unbind(0)
    v = torch.randn(1, 1, 30, 16)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v
    approx = linear_attention(q, k, v, FavorFeatures(16, num_features=4096))
    assert (approx - exact).abs().mean() < 0.05 * exact.abs().mean() + 0.02


def test_causal_prefix_does_not_see_the_future():
    torch.manual_seed(4)
    q, k, v = torch.randn(3, 1, 2, 40, 8).unbind(0)
    a = linear_attention(q, k, v, "elu", causal=True, rope=RotaryEmbedding(8), chunk_size=8)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 25:] += 1
    v2[:, :, 25:] -= 1
    b = linear_attention(q, k2, v2, "elu", causal=True, rope=RotaryEmbedding(8), chunk_size=8)
    torch.testing.assert_close(a[:, :, :25], b[:, :, :25])


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


def test_gradients_flow_through_the_causal_chunks():
    torch.manual_seed(5)
    q, k, v = torch.randn(3, 1, 1, 12, 4, dtype=torch.float64).unbind(0)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: linear_attention(t, k, v, "elu", causal=True, rope=RotaryEmbedding(4), chunk_size=5).double(),
        (q,), atol=1e-4)
