"""Each position encoding's defining property, and the decoder LM with every switch."""

import math

import pytest
import torch

from roformer.attention import KVCache, MultiHeadAttention
from roformer.models.decoder import DecoderConfig, DecoderLM
from roformer.position import POSITIONS, alibi_slopes, build_position, t5_bucket


def scores_at(name: str, start: int, causal: bool = True, seq: int = 7, seed: int = 0):
    """Attention output of one layer for the same tokens placed at positions start .. start+seq-1."""
    torch.manual_seed(seed)
    pe = build_position(name, hidden_size=16, num_heads=2, head_dim=8, causal=causal, max_positions=512)
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, seq, 16, dtype=torch.float64)
    pe, attn = pe.double(), attn.double()
    h = pe.embed(x, start)
    pos = pe.attention(seq, seq, start, x.device)
    return attn(h, pos, is_causal=causal)


@pytest.mark.parametrize("name", ["rope", "shaw", "t5", "alibi", "none"])
@pytest.mark.parametrize("causal", [True, False])
def test_relative_schemes_ignore_a_shift_of_all_positions(name, causal):
    torch.testing.assert_close(scores_at(name, 0, causal), scores_at(name, 300, causal))


@pytest.mark.parametrize("name", ["learned", "sinusoidal"])
def test_absolute_schemes_see_the_shift(name):
    assert not torch.allclose(scores_at(name, 0), scores_at(name, 300))


@pytest.mark.parametrize("name", ["rope", "shaw", "t5", "alibi", "learned", "sinusoidal"])
def test_each_scheme_makes_attention_position_aware(name):
    """Permuting the input tokens permutes the output only when nothing encodes position ("none")."""
    torch.manual_seed(0)
    pe = build_position(name, hidden_size=16, num_heads=2, head_dim=8, causal=False).double()
    attn = MultiHeadAttention(16, 2).double().eval()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])

    def run(inp):
        return attn(pe.embed(inp, 0), pe.attention(6, 6, 0, inp.device))

    assert not torch.allclose(run(x)[:, perm], run(x[:, perm]))


def test_t5_buckets():
    rel = torch.arange(-200, 201)
    b = t5_bucket(rel, bidirectional=True)
    assert b.min() == 0 and b.max() == 31
    assert torch.equal(b[193:201].flip(0), torch.arange(0, 8))  # n - m = 0, -1, .. -7: one bucket each
    assert torch.equal(b[201:208], torch.arange(17, 24))  # n - m = 1 .. 7: the same, in the upper half
    assert (b[201:] >= 16).all() and (b[:200] < 16).all()  # keys after the query use the other half
    assert b[200 + 128] == b[200 + 200] == 31  # beyond max_distance: the last bucket
    causal = t5_bucket(rel, bidirectional=False)
    assert (causal[200:] == 0).all() and causal[0] == 31  # a causal model only distinguishes the past


def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert len(alibi_slopes(12)) == 12 and alibi_slopes(12)[0] == 2 ** -1


def test_learned_positions_refuse_past_their_table():
    pe = build_position("learned", hidden_size=8, num_heads=2, head_dim=4, causal=True, max_positions=16)
    with pytest.raises(ValueError, match="stop at 16"):
        pe.embed(torch.zeros(1, 20, 8), 0)


def test_unknown_position_encoding():
    with pytest.raises(ValueError, match="unknown position encoding 'xpos'"):
        DecoderConfig(vocab_size=10, position="xpos")


@pytest.mark.parametrize("position", POSITIONS)
def test_decoder_cached_decoding_equals_full_pass(position):
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, dropout=0.0,
                                    position=position, max_positions=64)).eval()
    ids = torch.randint(0, 40, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(2)
        parts = [model(ids[:, :9], kv_cache=cache).logits]
        parts += [model(ids[:, t : t + 1], kv_cache=cache).logits for t in range(9, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention,feature_map,position", [("linear", "elu", "rope"), ("linear", "favor", "rope"),
                                                             ("linear", "favor", "none"), ("softmax", "favor", "t5")])
def test_decoder_is_causal_learns_and_round_trips(tmp_path, attention, feature_map, position):
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=30, hidden_size=32, num_layers=2, num_heads=2, dropout=0.0,
                           attention=attention, feature_map=feature_map, position=position)
    model = DecoderLM(config)
    ids = torch.randint(0, 30, (2, 24))
    model.eval()
    with torch.no_grad():
        a = model(ids).logits
        changed = ids.clone()
        changed[:, 15:] = (changed[:, 15:] + 1) % 30
        b = model(changed).logits
    torch.testing.assert_close(a[:, :15], b[:, :15])  # the future does not leak into the past
    model.save_pretrained(tmp_path)
    again = DecoderLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, a)
    # a few steps of training reduce the loss on a learnable sequence
    model.train()
    data = (torch.arange(25)[None] * 7 % 30).repeat(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model(data, labels=data).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5
    assert model.generate(ids[:, :3], 5, temperature=0).shape == (2, 8)


def test_linear_attention_rejects_score_biases():
    with pytest.raises(ValueError, match="score matrix"):
        DecoderConfig(vocab_size=10, attention="linear", position="alibi")


def test_decoder_sinusoidal_matches_vaswani():
    pe = build_position("sinusoidal", hidden_size=6, num_heads=1, head_dim=6, causal=True)
    table = pe.embed(torch.zeros(1, 5, 6, dtype=torch.float64), 0)[0]
    for p in range(5):
        for i in range(3):
            assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)))
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)))


def test_sinusoidal_scales_token_embeddings_by_sqrt_d():
    pe = build_position("sinusoidal", hidden_size=16, num_heads=1, head_dim=16, causal=True)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    table = pe.embed(torch.zeros_like(x), 3)
    torch.testing.assert_close(pe.embed(x, 3), x * 4.0 + table)


@pytest.mark.parametrize("causal", [False, True])
def test_shaw_is_shaw_et_al_with_key_and_value_terms_per_layer(causal):
    """Against Shaw et al.'s Eq. 3-4 written out term by term in float64:
    e_mn = q_m . (k_n + a^K_clip(n-m)) / sqrt(d), z_m = sum_n softmax_n(e_mn) (v_n + a^V_clip(n-m)),
    with a table of each per layer (and clipping at k = 3 here)."""
    torch.manual_seed(0)
    pe = build_position("shaw", hidden_size=16, num_heads=2, head_dim=8, causal=causal, shaw_max_distance=3,
                        num_layers=2).double()
    attn = MultiHeadAttention(16, 2).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    pos = pe.attention(9, 9, 0, x.device)
    q, k, v = attn.qkv(x).view(2, 9, 3, 2, 8).transpose(1, 3).unbind(2)
    for layer in (0, 1):
        expected = torch.zeros(2, 2, 9, 8, dtype=torch.float64)
        for m in range(9):
            keys = [n for n in range(9) if not causal or n <= m]
            r = [min(max(n - m, -3), 3) + 3 for n in keys]
            a_k, a_v = pe.keys[layer].weight[r], pe.values[layer].weight[r]
            e = torch.einsum("bhd,nbhd->bhn", q[:, :, m], (k[:, :, keys].permute(2, 0, 1, 3) + a_k[:, None, None]))
            alpha = (e / 8 ** 0.5).softmax(-1)
            expected[:, :, m] = torch.einsum("bhn,nbhd->bhd", alpha, v[:, :, keys].permute(2, 0, 1, 3)
                                             + a_v[:, None, None])
        expected = attn.out(expected.transpose(1, 2).reshape(2, 9, 16))
        got = attn(x, pos, is_causal=causal, layer=layer)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(attn(x, pos, is_causal=causal, layer=0), attn(x, pos, is_causal=causal, layer=1))
