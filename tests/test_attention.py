"""Self-attention with RoPE (Eq. 16) through SDPA: equal to the explicit formula; masks; KV cache."""

import math

import pytest
import torch

from roformer import KVCache, MultiHeadAttention, RotaryEmbedding
from roformer.attention import attention_bias
from roformer.position import PositionalAttention


def explicit_attention(attn: MultiHeadAttention, x, allowed):
    """softmax((R_m q)^T (R_n k) / sqrt(d)) v written out, with a boolean (q, k) mask."""
    b, s, h = x.shape
    q, k, v = attn.qkv(x).view(b, s, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = RotaryEmbedding(attn.head_dim)(q, k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h))


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_explicit_formula_with_padding(causal):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).double().eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, 6:] = False
    rope = RotaryEmbedding(8)
    bias = attention_bias(padding, 9, 9, causal, torch.float64)
    got = attn(x, PositionalAttention(rope=rope.cos_sin(9)), bias)
    allowed = padding[:, None, None, :] & (torch.ones(9, 9).tril().bool() if causal else True)
    expected = explicit_attention(attn, x, allowed)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1, :6], expected[1, :6])


def test_fully_masked_rows_stay_finite():
    """A left-padded causal row has no key to attend to: it must not produce NaN that leaks onward."""
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 5, 16)
    padding = torch.tensor([[0, 0, 1, 1, 1]])
    pos = PositionalAttention(rope=RotaryEmbedding(8).cos_sin(5))
    out = attn(x, pos, attention_bias(padding, 5, 5, True, torch.float32))
    assert torch.isfinite(out).all()


def test_kv_cache_decoding_equals_full_pass():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).eval()
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 12, 32)
    full = attn(x, PositionalAttention(rope=rope.cos_sin(12)), is_causal=True)
    cache = KVCache(1)
    steps = [attn(x[:, :5], PositionalAttention(rope=rope.cos_sin(5)), is_causal=True, kv_cache=cache)]
    for t in range(5, 12):
        bias = attention_bias(None, 1, t + 1, True, torch.float32)
        pos = PositionalAttention(rope=rope.cos_sin(1, offset=t))
        steps.append(attn(x[:, t : t + 1], pos, bias, kv_cache=cache))
    assert cache.seq_len == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_attention_bias_rejects_a_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="attention_mask must be"):
        attention_bias(torch.ones(2, 7), 5, 5, False, torch.float32)


def test_odd_split_of_heads_is_an_error():
    with pytest.raises(ValueError, match="not a multiple"):
        MultiHeadAttention(30, 4)
