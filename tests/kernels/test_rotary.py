"""The op roformer::rotary (and rotary_): its registration checked by torch.library.opcheck, its CPU kernel and
its reference formula against each other and a float64 complex evaluation, autograd (x, and cos/sin for learnt
frequencies), half precision, and one op seen by torch.compile and torch.export."""

import pytest
import torch

from roformer.kernels import cpu
from roformer.kernels.rotary import rotary, rotary_, rotary_into, rotary_reference
from roformer.rope import rotary_cos_sin

from .test_cpu import reference


def inputs(shape=(2, 3, 11, 16), rotary_dim=16, dtype=torch.float64, per_batch=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    positions = torch.randint(0, 5000, (shape[0], 1, shape[-2]), generator=g) if per_batch else torch.arange(
        shape[-2])
    cos, sin = rotary_cos_sin(positions, rotary_dim)
    return x, cos.to(torch.float64 if dtype == torch.float64 else torch.float32), sin.to(cos.dtype if dtype ==
                                                                                            torch.float64 else
                                                                                            torch.float32)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("conjugate", [False, True])
@pytest.mark.parametrize("case", [dict(), dict(rotary_dim=8), dict(per_batch=True), dict(dtype=torch.float32),
                                  dict(shape=(5, 16))])
def test_opcheck(interleaved, conjugate, case):
    """torch.library.opcheck: schema, fake (meta) implementation, autograd registration and its compile/export
    view (aot dispatch) agree with the real kernel."""
    x, cos, sin = inputs(**case)
    torch.library.opcheck(rotary, (x.requires_grad_(), cos, sin, interleaved, conjugate))
    torch.library.opcheck(rotary_, (x.detach().clone(), cos, sin, interleaved, conjugate))
    torch.library.opcheck(rotary_into, (x.detach(), cos, sin, torch.empty_like(x), interleaved, conjugate))


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("conjugate", [False, True])
def test_kernel_and_reference_formula_agree_with_eq34(interleaved, conjugate, monkeypatch):
    x, cos, sin = inputs(per_batch=True, rotary_dim=12)
    expected = reference(x, cos, sin, interleaved, -1.0 if conjugate else 1.0)
    fused = rotary(x, cos, sin, interleaved, conjugate)
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rotary_reference(x, cos, sin, interleaved, conjugate), expected, rtol=1e-12, atol=1e-12)
    calls = []
    monkeypatch.setattr(cpu, "_library", lambda: calls.append(1))  # as on a machine without a compiler
    torch.testing.assert_close(rotary(x, cos, sin, interleaved, conjugate), expected, rtol=1e-12, atol=1e-12)
    assert calls, "the op did not try the compiled kernel"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("interleaved", [True, False])
def test_half_precision_is_rotated_in_float32_and_rounded_once(dtype, interleaved):
    x, cos, sin = inputs(dtype=torch.float32, per_batch=True)
    x = x.to(dtype)
    out = rotary(x, cos, sin, interleaved, False)
    assert out.dtype == dtype
    torch.testing.assert_close(out, rotary(x.float(), cos, sin, interleaved, False).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("interleaved", [True, False])
def test_gradients_in_x_and_in_cos_sin(interleaved):
    """gradcheck and gradgradcheck in float64, with respect to x and to cos and sin (learnt frequencies)."""
    x, cos, sin = inputs(shape=(2, 2, 5, 10), rotary_dim=8, per_batch=True)
    args = (x.requires_grad_(), cos.requires_grad_(), sin.requires_grad_())
    for conjugate in (False, True):
        def f(a, c, s, conjugate=conjugate):
            return rotary(a, c, s, interleaved, conjugate)

        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)


def test_backward_saves_no_activation():
    """The backward rotates by -theta: only cos/sin (seq x dim/2) are kept, never x itself."""
    x = torch.randn(4, 8, 64, 32, requires_grad=True)
    cos, sin = rotary_cos_sin(torch.arange(64), 32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = rotary(x * 1.0, cos.float(), sin.float(), True, False)
    assert saved and all(shape.numel() <= 64 * 16 for shape in saved), saved
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(g, 2 * x.detach(), rtol=1e-5, atol=1e-5)  # (R^T R) x = x


def _ops(graph_module) -> list[str]:
    return [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("interleaved", [True, False])
def test_compile_and_export_run_the_one_op(interleaved):
    """torch.compile (through AOT autograd, forward and backward) and torch.export put the op itself in their graph:
    the same kernel as eager, not another formula."""
    from roformer import RotaryEmbedding

    rope = RotaryEmbedding(16, interleaved=interleaved)
    graphs = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def record(g, _):
            graphs.append(_ops(g))
            return make_boxed_func(g.forward)

        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)

    q = torch.randn(2, 3, 300, 16, requires_grad=True)
    k = torch.randn(2, 3, 300, 16, requires_grad=True)
    compiled = torch.compile(lambda q, k: rope(q, k, offset=700), backend=backend, fullgraph=True)
    got, want = compiled(q, k), rope(q, k, offset=700)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sum(t.sum() for t in got).backward()
    assert len(graphs) == 2 and all(any("roformer.rotary" in op for op in ops) for ops in graphs), graphs

    class Rotate(torch.nn.Module):
        def forward(self, x):
            return rope.rotate(x)

    exported = torch.export.export(Rotate(), (q.detach(),), dynamic_shapes=({2: torch.export.Dim("seq", max=8192)},))
    assert any("roformer.rotary" in op for op in _ops(exported.graph_module))
    longer = torch.randn(2, 3, 900, 16)
    torch.testing.assert_close(exported.module()(longer), rope.rotate(longer), rtol=0, atol=0)
