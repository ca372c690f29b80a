"""RoPE: the paper's properties (Eq. 11, 13-16, 34; §3.4.3), the API's position forms, autograd, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from roformer import RotaryEmbedding, apply_rotary, permute_rotary_layout, relative_upper_bound
from roformer.rope import rotary_cos_sin, rotary_frequencies


def dense_rotation(m: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The block-diagonal R^d_(Theta,m) of Eq. 15, built entry by entry in float64."""
    R = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(dim // 2):
        theta = base ** (-2 * i / dim)
        c, s = math.cos(m * theta), math.sin(m * theta)
        R[2 * i, 2 * i], R[2 * i, 2 * i + 1] = c, -s
        R[2 * i + 1, 2 * i], R[2 * i + 1, 2 * i + 1] = s, c
    return R


def rotate_at(x: torch.Tensor, m: int, interleaved: bool = True) -> torch.Tensor:
    """Rotate every row of x (seq, dim) as if it stood at position m."""
    rope = RotaryEmbedding(x.shape[-1], interleaved=interleaved)
    return rope.rotate(x[None, None], position_ids=torch.full((1, x.shape[0]), m))[0, 0]


def test_frequencies_are_eq15():
    theta = rotary_frequencies(8, base=10000.0)
    expected = torch.tensor([10000 ** (-2 * (i - 1) / 8) for i in range(1, 5)], dtype=torch.float64)
    torch.testing.assert_close(theta, expected)


@pytest.mark.parametrize("dim", [2, 8, 64])
@pytest.mark.parametrize("m", [0, 1, 7, 1000, 123456])
def test_equals_dense_block_diagonal_matrix(dim, m):
    x = torch.randn(5, dim, dtype=torch.float64)
    expected = x @ dense_rotation(m, dim).T  # R_m x for every row
    torch.testing.assert_close(rotate_at(x, m), expected, rtol=1e-6, atol=1e-6)


def test_half_split_layout_is_the_dense_rotation_of_the_permuted_features():
    dim, m = 16, 37
    x = torch.randn(3, dim, dtype=torch.float64)
    to_half = torch.cat((torch.arange(0, dim, 2), torch.arange(1, dim, 2)))
    expected = (x @ dense_rotation(m, dim).T)[:, to_half]
    torch.testing.assert_close(rotate_at(x[:, to_half], m, interleaved=False), expected)


@settings(max_examples=60, deadline=None)
@given(
    half_dim=st.integers(1, 48),
    m=st.integers(0, 5000),
    n=st.integers(0, 5000),
    shift=st.integers(-5000, 5000),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    interleaved=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_score_depends_only_on_relative_position(half_dim, m, n, shift, dtype, interleaved, seed):
    """<R_m q, R_n k> = <R_(m+s) q, R_(n+s) k> = q^T R_(n-m) k (Eq. 11 and 16)."""
    dim = 2 * half_dim
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, dim, generator=g).to(dtype)
    m2, n2 = max(m + shift, 0), max(n + shift, 0)
    shift = min(m2 - m, n2 - n)
    m2, n2 = m + shift, n + shift
    score = (rotate_at(q[None], m, interleaved).double() * rotate_at(k[None], n, interleaved).double()).sum()
    shifted = (rotate_at(q[None], m2, interleaved).double() * rotate_at(k[None], n2, interleaved).double()).sum()
    relative = (q.double()[None] * rotate_at(k[None], n - m, interleaved).double()).sum() if n >= m else (
        (rotate_at(q[None], m - n, interleaved).double() * k.double()[None]).sum()
    )
    scale = q.double().norm() * k.double().norm()
    # bf16 outputs are rounded to 8 bits of mantissa; float32 angles at position 5000 to ~1e-6 relative
    tol = {torch.float64: 1e-5, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert abs(score - shifted) <= tol * scale
    assert abs(score - relative) <= tol * scale


@settings(max_examples=30, deadline=None)
@given(half_dim=st.integers(1, 64), m=st.integers(0, 100000), interleaved=st.booleans())
def test_rotation_preserves_norm(half_dim, m, interleaved):
    x = torch.randn(4, 2 * half_dim, dtype=torch.float64)
    torch.testing.assert_close(rotate_at(x, m, interleaved).norm(dim=-1), x.norm(dim=-1))


def test_no_maximum_length():
    """Positions far past any training length (20000 .. 25000) are rotated exactly: no table caps them."""
    x = torch.randn(1, 1, 5000, 8, dtype=torch.float64)
    far = RotaryEmbedding(8).rotate(x, offset=20000)
    torch.testing.assert_close(far, RotaryEmbedding(8).rotate(x, position_ids=torch.arange(20000, 25000)))
    expected = x[0, 0, -1] @ dense_rotation(24999, 8).T
    torch.testing.assert_close(far[0, 0, -1], expected, rtol=1e-12, atol=1e-12)
    assert rotary_frequencies(8).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_rotated_in_float32_and_returned_in_its_dtype(dtype):
    rope = RotaryEmbedding(32)
    x = torch.randn(2, 3, 50, 32).to(dtype)
    out = rope.rotate(x, offset=1000)
    assert out.dtype == dtype
    exact = rope.rotate(x.float(), offset=1000)
    torch.testing.assert_close(out.float(), exact.to(dtype).float(), rtol=0, atol=0)


def test_partial_rotary_passes_the_rest_through():
    x = torch.randn(2, 2, 7, 24, dtype=torch.float64)
    out = RotaryEmbedding(16).rotate(x, offset=3)
    torch.testing.assert_close(out[..., 16:], x[..., 16:], rtol=0, atol=0)
    torch.testing.assert_close(out[..., :16], RotaryEmbedding(16).rotate(x[..., :16].contiguous(), offset=3))
    # a partial_rotary_factor in the parameters (transformers' form) rotates that fraction of the head, with the
    # frequencies of the rotated dim
    half = RotaryEmbedding(24, scaling={"partial_rotary_factor": 0.5})
    assert half.rotary_dim == 12
    torch.testing.assert_close(half.rotate(x, offset=3), RotaryEmbedding(12).rotate(x, offset=3), rtol=0, atol=0)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("rotary_dim", [8, 6])
def test_gradcheck_float64(interleaved, rotary_dim):
    x = torch.randn(2, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = rotary_cos_sin(torch.arange(3, 8), rotary_dim)
    cos, sin = cos.double(), sin.double()
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, cos, sin, interleaved), (x,))
    assert torch.autograd.gradgradcheck(lambda t: apply_rotary(t, cos, sin, interleaved), (x,))


def test_matches_huggingface_rotary():
    transformers = pytest.importorskip("transformers")
    mod = transformers.models.roformer.modeling_roformer
    seq, dim = 40, 16
    table = mod.RoFormerSinusoidalPositionalEmbedding(seq, dim)
    table.weight.data = table.create_weight()
    q, k, v = torch.randn(3, 2, 4, seq, dim).unbind(0)
    sinusoidal_pos = table((1, seq))[None, None]
    hf_q, hf_k, hf_v = mod.RoFormerSelfAttention.apply_rotary_position_embeddings(sinusoidal_pos, q, k, v)
    rope = RotaryEmbedding(dim)
    ours_q, ours_k = rope(q, k)
    for a, b in ((ours_q, hf_q), (ours_k, hf_k), (rope.rotate(v), hf_v)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_layout_permutation_keeps_every_attention_score():
    heads, head_dim, hidden, seq = 3, 8, 20, 11
    w_q, w_k = torch.randn(2, heads * head_dim, hidden, dtype=torch.float64).unbind(0)
    b_q = torch.randn(heads * head_dim, dtype=torch.float64)
    x = torch.randn(seq, hidden, dtype=torch.float64)

    def scores(wq, bq, wk, interleaved):
        q = (x @ wq.T + bq).view(seq, heads, head_dim).transpose(0, 1)[None]
        k = (x @ wk.T).view(seq, heads, head_dim).transpose(0, 1)[None]
        q, k = RotaryEmbedding(head_dim, interleaved=interleaved)(q, k)
        return q @ k.transpose(-1, -2)

    reference = scores(w_q, b_q, w_k, interleaved=True)
    half = [permute_rotary_layout(t, heads, to="half") for t in (w_q, b_q, w_k)]
    torch.testing.assert_close(scores(*half, interleaved=False), reference)
    back = [permute_rotary_layout(t, heads, to="interleaved") for t in half]
    for a, b in zip(back, (w_q, b_q, w_k), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the permutation is not the identity, so the test above could fail
    assert not torch.equal(half[0], w_q)
    assert not torch.allclose(scores(w_q, b_q, w_k, interleaved=False), reference)


def test_compiles_without_graph_breaks():
    rope = RotaryEmbedding(16)

    def f(q, k, offset: int, starts: torch.Tensor, cu: torch.Tensor):
        a = rope(q, k, offset=offset)
        b = rope(q, k, offset=starts)
        c = rope.rotate(q[0].transpose(0, 1), cu_seqlens=cu)
        return *a, *b, c

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    q, k = torch.randn(2, 2, 2, 300, 16).unbind(0)
    cu = torch.tensor([0, 100, 300], dtype=torch.int32)
    for offset in (0, 700):
        for got, want in zip(compiled(q, k, offset, torch.tensor([3, 9]), cu), f(q, k, offset, torch.tensor([3, 9]),
                                                                                  cu), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: RotaryEmbedding(7), "even"),
        (lambda: RotaryEmbedding(32).rotate(torch.randn(1, 1, 4, 16)), "larger than the head dim"),
        (lambda: RotaryEmbedding(8)(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 5, 8)), "differ"),
        (lambda: RotaryEmbedding(8).rotate(torch.randn(1, 1, 4, 8), position_ids=torch.zeros(2, 3, dtype=torch.long)),
         r"\(seq,\) or \(batch, seq\)"),
        (lambda: RotaryEmbedding(8).rotate(torch.randn(1, 1, 4, 8), position_ids=torch.zeros(4)), "integer"),
        (lambda: RotaryEmbedding(8).rotate(torch.randn(1, 1, 4, 8), offset=-1), ">= 0"),
        (lambda: RotaryEmbedding(8, base=0.0), "base"),
        (lambda: RotaryEmbedding(8, base=float("nan")), "base"),
        (lambda: RotaryEmbedding(8, base=-1), "base"),
        (lambda: RotaryEmbedding(8, scaling={"rope_theta": float("inf")}), "rope_theta"),
        (lambda: apply_rotary(torch.randn(4, 8), *rotary_cos_sin(torch.arange(4), 10)), "larger than the head"),
        (lambda: permute_rotary_layout(torch.randn(10, 3), 3), "heads"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_long_term_decay_bound():
    """§3.4.3: the bound equals its definition, starts at (d/2 + 1)/2 and decays with distance (Fig. 2)."""
    dim = 128
    bound = relative_upper_bound(dim, 256)
    assert bound.shape == (257,)
    assert bound[0].item() == pytest.approx((dim // 2 + 1) / 2)
    for r in (1, 17, 200):
        thetas = [10000 ** (-2 * i / dim) for i in range(dim // 2)]
        partial, total = 0j, 0.0
        for theta in thetas:
            partial += complex(math.cos(r * theta), math.sin(r * theta))
            total += abs(partial)
        assert bound[r].item() == pytest.approx(total / (dim // 2), rel=1e-9)
    assert bound[200:].max() < bound[:20].min() / 1.5
    assert bound[128:].mean() < bound[:128].mean()


def test_export_with_a_dynamic_sequence_length():
    """torch.export of the encoder with dynamic batch and sequence axes runs far past the length it was traced at
    equal to eager."""
    from roformer.models import RoFormerConfig, RoFormerForMaskedLM

    torch.manual_seed(0)
    model = RoFormerForMaskedLM(RoFormerConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64)).eval()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=8192)
    exported = torch.export.export(model, (torch.randint(0, 100, (2, 40)),), dynamic_shapes=({0: batch, 1: seq},))
    long = torch.randint(0, 100, (3, 1000))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(long).logits, model(long).logits, rtol=1e-5, atol=1e-5)


def test_compile_dynamic_does_not_recompile_as_lengths_grow():
    compilations = []

    def counting_backend(graph, example_inputs):
        compilations.append(graph)
        return graph.forward

    rope = RotaryEmbedding(16)
    compiled = torch.compile(lambda q, k: rope(q, k), backend=counting_backend, dynamic=True, fullgraph=True)
    for n in (100, 300, 700, 1500, 3000):
        q, k = torch.randn(2, 1, 2, n, 16).unbind(0)
        torch.testing.assert_close(compiled(q, k), rope(q, k))
    assert len(compilations) == 1


def test_xpos_scales_queries_and_keys_as_sun_et_al():
    """xPos: q_m -> zeta^(m/gamma) R_m q, k_n -> zeta^(-n/gamma) R_n k with zeta_i = (2i/d + 0.4) / 1.4 per pair,
    in float64 against the dense R of Eq. 15; a score then depends on m - n only."""
    dim, gamma = 8, 64.0
    rope = RotaryEmbedding(dim, xpos_scale_base=gamma)
    q, k = torch.randn(2, 1, 1, 6, dim, dtype=torch.float64).unbind(0)
    positions = torch.tensor([0, 3, 10, 100, 500, 1000])
    rq, rk = rope(q, k, position_ids=positions)
    zeta = torch.tensor([(2 * i / dim + 0.4) / 1.4 for i in range(dim // 2)], dtype=torch.float64)
    for t, m in enumerate(positions.tolist()):
        scale = (zeta ** (m / gamma)).repeat_interleave(2)
        torch.testing.assert_close(rq[0, 0, t], scale * (dense_rotation(m, dim) @ q[0, 0, t]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rk[0, 0, t], (dense_rotation(m, dim) @ k[0, 0, t]) / scale, rtol=1e-12,
                                   atol=1e-12)
    shifted_q, shifted_k = rope(q, k, position_ids=positions + 333)
    torch.testing.assert_close(shifted_q @ shifted_k.transpose(-1, -2), rq @ rk.transpose(-1, -2), rtol=1e-9,
                               atol=1e-12)


def test_xpos_cached_decoding_equals_a_full_causal_pass():
    """Queries and keys rotated step by step at their offsets (keys cached) give the causal attention of one full
    pass: the positions are not centred on the sequence length, so nothing depends on how much is decoded."""
    rope = RotaryEmbedding(16, xpos_scale_base=32.0)
    q, k, v = torch.randn(3, 2, 2, 20, 16, dtype=torch.float64).unbind(0)
    fq, fk = rope(q, k)
    full = torch.nn.functional.scaled_dot_product_attention(fq, fk, v, is_causal=True)
    keys, steps = [], []
    for t in range(20):
        sq, sk = rope(q[:, :, t : t + 1], k[:, :, t : t + 1], offset=t)
        keys.append(sk)
        steps.append(torch.nn.functional.scaled_dot_product_attention(sq, torch.cat(keys, 2), v[:, :, : t + 1]))
    torch.testing.assert_close(torch.cat(steps, 2), full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="xpos_cos_sin"):
        rope.cos_sin(4)
