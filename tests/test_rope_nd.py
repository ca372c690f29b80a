"""M-RoPE and 2-D image RoPE (roformer.rope_nd): against transformers' Qwen2-VL / Qwen3-VL rotary application and
position ids, torchtune's VisionRotaryPositionalEmbeddings (CLS token included), and dense float64 evaluations of
each paper's formula written here; relative dependence in each one's own sense (a 2-D shift changes no score),
norm preservation, gradients (RoPE-Mixed's learnt frequencies through autograd)."""

import math

import pytest
import torch

from roformer import RotaryEmbedding
from roformer.rope_nd import (
    AxialRotaryEmbedding,
    MixedRotaryEmbedding,
    MultimodalRotaryEmbedding,
    mrope_position_ids,
    patch_positions,
)

from .peers import torchtune_module


def dense_pairs(x: torch.Tensor, angles: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate each row x[t] (tokens, d) by the 2x2 blocks of angles[t] (tokens, d/2), entry by entry in float64."""
    out = x.double().clone()
    h = angles.shape[-1]
    for t in range(x.shape[0]):
        for i in range(h):
            j, k = (2 * i, 2 * i + 1) if interleaved else (i, i + h)
            c, s = math.cos(angles[t, i]), math.sin(angles[t, i])
            a, b = float(x[t, j]), float(x[t, k])
            out[t, j], out[t, k] = a * c - b * s, b * c + a * s
    return out


# -- M-RoPE ----------------------------------------------------------------------------------------------


def qwen_sequence():
    """Two sequences mixing text and image grids (token type 0 text, 1 image), the second left-padded."""
    grids = torch.tensor([[1, 4, 6], [1, 2, 2], [1, 6, 4]])  # (t, h, w) before a 2x2 spatial merge
    first = [0] * 3 + [1] * 6 + [0] * 4 + [1] * 1 + [0] * 2   # 16 tokens: images of 2x3 and 1x1 cells
    second = [0] * 2 + [0] * 5 + [1] * 6 + [0] * 3            # 2 padding, then text, a 3x2 image, text
    types = torch.tensor([first, second])
    mask = torch.ones_like(types)
    mask[1, :2] = 0
    return types, grids, mask


def test_mrope_position_ids_equal_transformers_get_rope_index():
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace

    qwen = transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLModel
    types, grids, mask = qwen_sequence()
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2)))
    fake.get_vision_position_ids = lambda *a, **k: qwen.get_vision_position_ids(fake, *a, **k)
    theirs, _ = qwen.get_rope_index(fake, torch.zeros_like(types), types, image_grid_thw=grids, attention_mask=mask)
    ours = mrope_position_ids(types, grids, spatial_merge_size=2, attention_mask=mask)
    assert torch.equal(ours[:, mask.bool()], theirs[:, mask.bool()])
    assert ours[:, 0, 3:9].tolist() == [[3] * 6, [3, 3, 3, 4, 4, 4], [3, 4, 5, 3, 4, 5]]  # written out by hand
    assert ours[:, 0, 9].tolist() == [6, 6, 6]  # text resumes at start + max(h, w) / merge


@pytest.mark.parametrize("mrope_interleaved", [False, True], ids=["qwen2-vl", "qwen3-vl"])
def test_mrope_equals_transformers_qwen_vl_rotary(mrope_interleaved):
    transformers = pytest.importorskip("transformers")
    dim, heads, section = 32, 2, [6, 5, 5]
    if mrope_interleaved:
        module = transformers.models.qwen3_vl.modeling_qwen3_vl
        config = transformers.Qwen3VLTextConfig(hidden_size=dim * heads, num_attention_heads=heads, head_dim=dim,
                                                rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                 "mrope_section": section, "mrope_interleaved": True})
        hf = module.Qwen3VLTextRotaryEmbedding(config)
    else:
        module = transformers.models.qwen2_vl.modeling_qwen2_vl
        config = transformers.Qwen2VLTextConfig(hidden_size=dim * heads, num_attention_heads=heads,
                                                rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                 "mrope_section": section})
        hf = module.Qwen2VLRotaryEmbedding(config)
    types, grids, mask = qwen_sequence()
    position_ids = mrope_position_ids(types, grids, spatial_merge_size=2, attention_mask=mask)
    q, k = torch.randn(2, 2, heads, 16, dim).unbind(0)
    cos, sin = hf(q, position_ids)
    hf_q, hf_k = module.apply_rotary_pos_emb(q, k, cos, sin)
    ours = MultimodalRotaryEmbedding(dim, section, base=1e4, mrope_interleaved=mrope_interleaved)
    our_q, our_k = ours(q, k, position_ids)
    torch.testing.assert_close(our_q, hf_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_k, hf_k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mrope_interleaved", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
def test_mrope_equals_its_formula_and_is_rope_over_text(mrope_interleaved, interleaved):
    dim, section = 24, (4, 4, 4)
    rope = MultimodalRotaryEmbedding(dim, section, interleaved=interleaved, mrope_interleaved=mrope_interleaved)
    position_ids = torch.randint(0, 3000, (3, 1, 9))
    x = torch.randn(1, 1, 9, dim, dtype=torch.float64)
    axis = [0] * 12
    if mrope_interleaved:
        for i in range(1, 12, 3):
            axis[i] = 1
        for i in range(2, 12, 3):
            axis[i] = 2
    else:
        axis = [0] * 4 + [1] * 4 + [2] * 4
    theta = [10000 ** (-2 * i / dim) for i in range(dim // 2)]
    angles = torch.tensor([[float(position_ids[axis[i], 0, t]) * theta[i] for i in range(dim // 2)]
                           for t in range(9)], dtype=torch.float64)
    torch.testing.assert_close(rope(x, x, position_ids)[0][0, 0], dense_pairs(x[0, 0], angles, interleaved),
                               rtol=1e-12, atol=1e-12)
    text = torch.arange(40, 49).expand(3, 1, -1)  # t = h = w
    plain = RotaryEmbedding(dim, interleaved=interleaved).rotate(x, offset=40)
    torch.testing.assert_close(rope(x, x, text)[0], plain, rtol=1e-12, atol=1e-12)


# -- 2-D RoPE --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls_token", ["last", "first"])
def test_axial_equals_torchtune_vision_rope_with_its_cls_token(cls_token):
    vision = torchtune_module("modules/position_embeddings.py").VisionRotaryPositionalEmbeddings
    head_dim, grid = 32, 4
    theirs = vision(patch_size=10, tile_size=10 * grid, max_num_tiles=1, dim=head_dim // 2,
                    append_cls_token=cls_token == "last")
    x = torch.randn(2, grid * grid + 1, 3, head_dim)  # (batch, seq, heads, head_dim)
    ours = AxialRotaryEmbedding(head_dim, seq_dim=-3)
    positions = patch_positions(grid, grid, cls_token=cls_token)
    got, _ = ours(x, x, positions)
    torch.testing.assert_close(got, theirs(x), rtol=1e-5, atol=1e-5)
    cls = -1 if cls_token == "last" else 0
    assert torch.equal(got[:, cls], x[:, cls])  # the CLS token is not rotated


@pytest.mark.parametrize("interleaved", [True, False])
def test_axial_formula_shift_invariance_and_norms(interleaved):
    dim = 16
    rope = AxialRotaryEmbedding(dim, interleaved=interleaved)
    xy = torch.tensor([[0, 0], [3, 1], [7, 7], [2, 9], [100, 5]])
    q, k = torch.randn(2, 1, 1, 5, dim, dtype=torch.float64).unbind(0)
    theta = [10000 ** (-4 * j / dim) for j in range(dim // 4)]
    angles = torch.tensor([[float(p[0]) * t for t in theta] + [float(p[1]) * t for t in theta] for p in xy],
                          dtype=torch.float64)
    rq, rk = rope(q, k, xy)
    torch.testing.assert_close(rq[0, 0], dense_pairs(q[0, 0], angles, interleaved), rtol=1e-12, atol=1e-12)
    shifted_q, shifted_k = rope(q, k, xy + torch.tensor([13, -4]))
    torch.testing.assert_close(shifted_q @ shifted_k.transpose(-1, -2), rq @ rk.transpose(-1, -2), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1), rtol=1e-12, atol=1e-12)
    # x and y are not interchangeable: a transposed grid gives other scores
    swapped_q, swapped_k = rope(q, k, xy.flip(-1))
    assert not torch.allclose(swapped_q @ swapped_k.transpose(-1, -2), rq @ rk.transpose(-1, -2))


def test_mixed_formula_and_shift_invariance():
    dim, heads = 16, 3
    rope = MixedRotaryEmbedding(dim, heads, generator=torch.Generator().manual_seed(0)).double()
    xy = patch_positions(3, 4)
    q, k = torch.randn(2, 2, heads, 12, dim, dtype=torch.float64).unbind(0)
    rq, rk = rope(q, k, xy)
    f = rope.freqs.detach()
    for h in range(heads):
        angles = xy[:, :1].double() * f[0, h] + xy[:, 1:].double() * f[1, h]
        torch.testing.assert_close(rq[1, h], dense_pairs(q[1, h], angles, True), rtol=1e-12, atol=1e-12)
    shifted = rope(q, k, xy + torch.tensor([5, 2]))
    torch.testing.assert_close(shifted[0] @ shifted[1].transpose(-1, -2), rq @ rk.transpose(-1, -2), rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1), rtol=1e-12, atol=1e-12)
    # heads differ (each has its own frequencies), so the module is not axial RoPE in disguise
    assert not torch.allclose(f[:, 0], f[:, 1])


def test_mixed_frequencies_are_learnt_through_autograd():
    """gradcheck / gradgradcheck in the frequencies and in q (the op differentiates its cos and sin), and a few
    optimiser steps on a toy objective lower it."""
    rope = MixedRotaryEmbedding(8, 2, generator=torch.Generator().manual_seed(1)).double()
    xy = patch_positions(2, 3).double()
    q = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)

    def rotated(freqs, q):  # the paper's formula written out, on the public apply_rotary
        angles = xy[..., 0, None, None] * freqs[0] + xy[..., 1, None, None] * freqs[1]
        from roformer.rope import apply_rotary

        return apply_rotary(q, angles.cos().transpose(-2, -3), angles.sin().transpose(-2, -3))

    freqs = rope.freqs.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(rotated, (freqs, q))
    assert torch.autograd.gradgradcheck(rotated, (freqs, q))
    (ours,) = torch.autograd.grad((rope(q, q, xy)[0] * q).sum(), rope.freqs)
    (reference,) = torch.autograd.grad((rotated(freqs, q) * q).sum(), freqs)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    k = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    goal = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    optimizer = torch.optim.SGD(rope.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        a, b = rope(q.detach(), k, xy)
        loss = ((a @ b.transpose(-1, -2)) / 8 - goal).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("call, message", [
    (lambda: MultimodalRotaryEmbedding(16, (2, 2, 2)), "adding up to dim/2 = 8"),
    (lambda: MultimodalRotaryEmbedding(16, (4, 2, 2))(torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16),
                                                      torch.zeros(1, 3, dtype=torch.long)), r"\(3, batch, seq\)"),
    (lambda: AxialRotaryEmbedding(6), "divisible by 4"),
    (lambda: AxialRotaryEmbedding(8)(torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8), torch.zeros(3, 3)),
     r"\(seq, 2\)"),
    (lambda: patch_positions(2, 2, cls_token="middle"), "cls_token"),
    (lambda: mrope_position_ids(torch.tensor([[0, 1, 1]]), torch.tensor([[1, 2, 2]]), 1), "does not match"),
])
def test_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_gradcheck_mrope_and_axial():
    mrope = MultimodalRotaryEmbedding(12, (2, 2, 2), interleaved=True, mrope_interleaved=True)
    axial = AxialRotaryEmbedding(8, interleaved=False)
    x = torch.randn(1, 2, 5, 12, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 50, (3, 1, 5))
    assert torch.autograd.gradcheck(lambda t: mrope(t, t, ids)[0], (x,))
    y = torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: axial(t, t, patch_positions(1, 5))[0], (y,))
