"""RoPE's position forms (offset | position_ids | cu_seqlens) and shapes (q/k with GQA, packed qkv and kv, in
place), each against a dense float64 evaluation of Eq. 15 written here, token by token, with the positions
written out by hand. The cases follow the parametrizations of flash-attention's tests/test_rotary.py (rotary
fraction, pairing, int and tensor seqlen offsets, varlen, packed qkv with GQA, in-place), translated to our API."""

import math

import pytest
import torch

from roformer import RotaryEmbedding, apply_rotary
from roformer.rope import rotary_cos_sin, rotary_positions

BASE = 10000.0


def dense(x: torch.Tensor, positions: list[int], interleaved: bool, rotary_dim: int | None = None) -> torch.Tensor:
    """R_m x for rows x[t] (shape (tokens, d)) at positions[t]: the block-diagonal R of Eq. 15 built entry by entry
    in float64 (half split: the same blocks on features (i, i + r/2)); features past rotary_dim unchanged."""
    d = x.shape[-1]
    r = rotary_dim or d
    out = x.double().clone()
    for t, m in enumerate(positions):
        R = torch.eye(d, dtype=torch.float64)
        for i in range(r // 2):
            a = m * BASE ** (-2 * i / r)
            j, k = (2 * i, 2 * i + 1) if interleaved else (i, i + r // 2)
            R[j, j], R[j, k], R[k, j], R[k, k] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        out[t] = R @ x[t].double()
    return out


def dense_bhsd(x, positions_per_batch, interleaved, rotary_dim=None):
    """(batch, heads, seq, d) with one list of positions per batch row."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for b, positions in enumerate(positions_per_batch):
        for h in range(x.shape[1]):
            out[b, h] = dense(x[b, h], positions, interleaved, rotary_dim)
    return out


PER_ROW = [[0, 1, 2, 3, 4, 5], [9, 8, 7, 6, 5, 4], [2, 2, 2, 3000, 3001, 3002]]
FORMS = {  # name -> (keyword arguments, positions of batch row b for seq tokens)
    "default": ({}, lambda b, s: list(range(s))),
    "int offset": ({"offset": 1000}, lambda b, s: list(range(1000, 1000 + s))),
    "tensor offset": ({"offset": torch.tensor([0, 7, 4321])}, lambda b, s: [[0, 7, 4321][b] + t for t in range(s)]),
    "position_ids (seq,)": ({"position_ids": torch.tensor([5, 0, 3, 3, 900, 1])}, lambda b, s: [5, 0, 3, 3, 900, 1]),
    "position_ids (batch, seq)": ({"position_ids": torch.tensor(PER_ROW)}, lambda b, s: PER_ROW[b]),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half"])
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
@pytest.mark.parametrize("seq_dim", [-2, -3])
def test_every_position_form_equals_the_dense_rotation(form, interleaved, rotary_fraction, seq_dim):
    kwargs, positions = FORMS[form]
    batch, heads, seq, d = 3, 2, 6, 16
    rotary_dim = int(rotary_fraction * d)
    rope = RotaryEmbedding(rotary_dim, interleaved=interleaved, seq_dim=seq_dim)
    q = torch.randn(batch, heads, seq, d, dtype=torch.float64)
    k = torch.randn(batch, 1, seq, d, dtype=torch.float64)  # grouped-query attention: one key head
    expected_q = dense_bhsd(q, [positions(b, seq) for b in range(batch)], interleaved, rotary_dim)
    expected_k = dense_bhsd(k, [positions(b, seq) for b in range(batch)], interleaved, rotary_dim)
    if seq_dim == -3:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    got_q, got_k = rope(q, k, **kwargs)
    if seq_dim == -3:
        got_q, got_k = got_q.transpose(1, 2), got_k.transpose(1, 2)
    torch.testing.assert_close(got_q, expected_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_k, expected_k, rtol=1e-12, atol=1e-12)
    # float32 and bfloat16: the same rotation to their rounding
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        low, _ = rope(q.to(dtype), k.to(dtype), **kwargs)
        reference = rope(q.to(dtype).double(), k, **kwargs)[0]
        torch.testing.assert_close(low.double(), reference, rtol=tol, atol=tol)


def test_offsets_as_many_as_tokens_are_still_one_start_per_sequence():
    """The silent error of shape-based dispatch: a (batch,) offset tensor with batch == seq was read as per-token
    positions. Now an offset is always one start per sequence."""
    rope = RotaryEmbedding(8)
    x = torch.randn(4, 2, 4, 8, dtype=torch.float64)
    starts = torch.tensor([0, 10, 20, 30])
    expected = dense_bhsd(x, [[s + t for t in range(4)] for s in starts.tolist()], True)
    torch.testing.assert_close(rope.rotate(x, offset=starts), expected, rtol=1e-12, atol=1e-12)
    per_token = rope.rotate(x, position_ids=starts)  # the same tensor as every token's position: another rotation
    assert (per_token - expected).abs().max() > 1.0


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half"])
@pytest.mark.parametrize("with_offsets", [False, True])
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
def test_varlen_cu_seqlens_restarts_positions_in_each_sequence(interleaved, with_offsets, rotary_fraction):
    lengths = [3, 1, 7, 0, 5]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total, heads, d = sum(lengths), 3, 16
    rotary_dim = int(rotary_fraction * d)
    offsets = torch.tensor([0, 100, 5, 9, 2000]) if with_offsets else 0
    x = torch.randn(total, heads, d, dtype=torch.float64)
    positions = []
    for i, n in enumerate(lengths):
        positions += [(offsets[i].item() if with_offsets else 0) + t for t in range(n)]
    assert rotary_positions(total, cu_seqlens=cu, offset=offsets).tolist() == positions
    expected = torch.stack([dense(x[:, h], positions, interleaved, rotary_dim) for h in range(heads)], 1)
    rope = RotaryEmbedding(rotary_dim, interleaved=interleaved)
    torch.testing.assert_close(rope.rotate(x, cu_seqlens=cu, offset=offsets), expected, rtol=1e-12, atol=1e-12)
    q, k = rope(x, x[:, :1], cu_seqlens=cu, offset=offsets)
    torch.testing.assert_close(k, expected[:, :1], rtol=1e-12, atol=1e-12)
    # the functional form takes a cos/sin table indexed by position, as flash-attention's apply_rotary_emb
    cos, sin = rotary_cos_sin(torch.arange(2100), rotary_dim)
    got = apply_rotary(x, cos, sin, interleaved, cu_seqlens=cu, offset=offsets)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half"])
@pytest.mark.parametrize("form", ["int offset", "tensor offset", "position_ids (batch, seq)"])
def test_functional_form_with_a_table_indexed_by_position(interleaved, form):
    kwargs, positions = FORMS[form]
    x = torch.randn(3, 6, 2, 16, dtype=torch.float64)  # (batch, seq, heads, dim), flash-attention's layout
    cos, sin = rotary_cos_sin(torch.arange(5000), 16)
    got = apply_rotary(x, cos, sin, interleaved, seq_dim=-3, **kwargs)
    expected = dense_bhsd(x.transpose(1, 2), [positions(b, 6) for b in range(3)], interleaved).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half"])
@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("varlen", [False, True])
def test_packed_qkv_rotates_q_and_k_and_passes_v(interleaved, gqa, inplace, varlen):
    heads_q, heads_kv, d, rope = 4, (2 if gqa else 4), 16, RotaryEmbedding(8, interleaved=interleaved)
    cu = torch.tensor([0, 5, 9], dtype=torch.int32)
    lead = (9,) if varlen else (2, 7)
    qkv = torch.randn(*lead, heads_q + 2 * heads_kv, d, dtype=torch.float64) if gqa else torch.randn(
        *lead, 3, heads_q, d, dtype=torch.float64)
    positions = dict(cu_seqlens=cu) if varlen else dict(offset=torch.tensor([3, 50]))
    heads = dict(num_heads_q=heads_q) if gqa else {}
    original = qkv.clone()
    out = rope.rotate_qkv(qkv, inplace=inplace, **heads, **positions)
    assert (out is qkv) == inplace and out.shape == original.shape
    flat = original.flatten(-3, -2) if not gqa else original
    out_flat = out.flatten(-3, -2) if not gqa else out
    rotated = heads_q + heads_kv
    tokens = flat if varlen else flat.transpose(1, 2)  # (.., heads, ..) as rope.rotate takes it
    if varlen:
        expected = rope.rotate(tokens[..., :rotated, :].contiguous(), cu_seqlens=cu)
        torch.testing.assert_close(out_flat[..., :rotated, :], expected, rtol=1e-12, atol=1e-12)
    else:
        expected = rope.rotate(tokens[:, :rotated], offset=positions["offset"]).transpose(1, 2)
        torch.testing.assert_close(out_flat[..., :rotated, :], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out_flat[..., rotated:, :], flat[..., rotated:, :])  # v untouched
    # packed kv: k rotated, v passed through
    if not gqa:
        kv = original[..., 1:, :, :].clone()
        out_kv = rope.rotate_kv(kv, inplace=inplace, **positions)
        torch.testing.assert_close(out_kv[..., 0, :, :], out[..., 1, :, :], rtol=0, atol=0)
        assert torch.equal(out_kv[..., 1, :, :], original[..., 2, :, :])


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_inplace_equals_out_of_place_with_the_same_gradients(interleaved, dtype):
    rope = RotaryEmbedding(16, interleaved=interleaved, seq_dim=-3)
    w = torch.randn(16, 2 * 16, dtype=dtype, requires_grad=True)
    x = torch.randn(2, 9, 16, dtype=dtype)
    g = torch.randn(2, 9, 2, 16, dtype=dtype)
    grads = []
    for inplace in (False, True):
        h = (x @ w).view(2, 9, 2, 16)  # a projection's output, as in attention
        out = rope.rotate(h, offset=5, inplace=inplace)
        assert (out is h) == inplace
        (grad,) = torch.autograd.grad(out, w, g)
        grads.append((out.detach(), grad))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)
    # a strided view (q of a packed projection) is rotated in place inside its parent
    parent = torch.randn(2, 9, 3, 2, 16, dtype=dtype)
    before = parent.clone()
    rope.rotate(parent[:, :, 0], inplace=True)
    torch.testing.assert_close(parent[:, :, 0], rope.rotate(before[:, :, 0]), rtol=0, atol=0)
    assert torch.equal(parent[:, :, 1:], before[:, :, 1:])
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        rope.rotate(torch.randn(2, 9, 2, 16, requires_grad=True), inplace=True)


@pytest.mark.parametrize("interleaved", [True, False])
def test_inverse_undoes_the_rotation(interleaved):
    rope = RotaryEmbedding(32, interleaved=interleaved)
    x = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    offsets = torch.tensor([0, 123456])
    back = rope.rotate(rope.rotate(x, offset=offsets), offset=offsets, inverse=True)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)
    cos, sin = rope.cos_sin(40, offset=7)
    torch.testing.assert_close(apply_rotary(apply_rotary(x, cos, sin, interleaved), cos, sin, interleaved,
                                            inverse=True), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call, error, message", [
    (lambda r, x: r.rotate(x, offset=3, position_ids=torch.arange(4)), ValueError, "position_ids alone"),
    (lambda r, x: r.rotate(x, offset=torch.zeros(2, 4, dtype=torch.long)), ValueError, "one start per sequence"),
    (lambda r, x: r.rotate(x, offset=torch.zeros(3, dtype=torch.long)), ValueError, "batch size"),
    (lambda r, x: r.rotate(x, position_ids=torch.zeros(3, 4, dtype=torch.long)), ValueError, "batch size"),
    (lambda r, x: r.rotate(x, position_ids=torch.zeros(5, dtype=torch.long)), ValueError, r"\(seq,\) or \(batch"),
    (lambda r, x: r.rotate(x, position_ids=torch.zeros(4)), TypeError, "integer tensor"),
    (lambda r, x: r.rotate(x, offset=-1), ValueError, "offset must be an int >= 0"),
    (lambda r, x: r.rotate(x, offset=2.0), ValueError, "offset must be an int >= 0"),
    (lambda r, x: r.rotate(x[0], cu_seqlens=torch.tensor([0, 2], dtype=torch.int32)), ValueError, "rise from 0"),
    (lambda r, x: r.rotate(x[0, 0], cu_seqlens=torch.tensor([0, 2, 4])), ValueError, r"\(total_tokens, heads"),
    (lambda r, x: r.rotate(x, positions=3), TypeError, "positions"),
    (lambda r, x: r.rotate_qkv(x), ValueError, "qkv must be shaped"),
    (lambda r, x: r.rotate_qkv(torch.randn(2, 4, 7, 8), num_heads_q=4), ValueError, "heads_q \\+ 2"),
])
def test_position_and_shape_errors_name_the_problem(call, error, message):
    x = torch.randn(2, 3, 4, 8)
    with pytest.raises(error, match=message):
        call(RotaryEmbedding(8), x)


@pytest.mark.parametrize("interleaved", [True, False])
def test_packed_qkv_gradients_and_compile(interleaved):
    """The packed path has its own one-pass autograd: gradcheck in float64, and torch.compile (AOT autograd,
    fullgraph) gives the same values and gradients as eager."""
    rope = RotaryEmbedding(8, interleaved=interleaved)
    qkv = torch.randn(2, 5, 3, 2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rope.rotate_qkv(t, offset=3), (qkv,))
    gqa = torch.randn(2, 5, 4 + 2 * 2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rope.rotate_qkv(t, num_heads_q=4), (gqa,))
    compiled = torch.compile(lambda t: rope.rotate_qkv(t, offset=3), backend="aot_eager", fullgraph=True)
    out = compiled(qkv)
    torch.testing.assert_close(out, rope.rotate_qkv(qkv, offset=3), rtol=0, atol=0)
    (g1,) = torch.autograd.grad(out.square().sum(), qkv)
    (g2,) = torch.autograd.grad(rope.rotate_qkv(qkv, offset=3).square().sum(), qkv)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
