"""Linear attention with RoPE (paper §3.3, Eq. 17-19).

Linear attention replaces exp(q . k) by a kernel phi(q) . varphi(k) with non-negative features (Eq. 18):

    Attention(Q, K, V)_m = sum_n phi(q_m)^T varphi(k_n) v_n / sum_n phi(q_m)^T varphi(k_n)

RoPE enters as Eq. 19: the rotation is applied to the *features* in the numerator only,

    Attention_m = sum_n (R_m phi(q_m))^T (R_n varphi(k_n)) v_n / sum_n phi(q_m)^T varphi(k_n),

the denominator staying un-rotated so that it remains positive (a rotated sum could reach zero). Both sums
factor through associativity: sum_n (R_n varphi(k_n)) v_n^T is a (features x value-dim) matrix, so the
non-causal form costs O(N) time and memory; the causal form uses prefix sums of that matrix, computed chunk
by chunk so that memory stays bounded (a chunk of C tokens is handled exactly in O(C^2), the past through
the running sums).

``rope_mode="before_feature_map"`` is the other variant found in the wild (performer-pytorch rotates q and k
and then applies the feature map in both sums); it is offered, clearly named, but it is not Eq. 19.

Feature maps: ``elu`` (phi(x) = elu(x) + 1, Katharopoulos et al.) and ``favor`` (Performer's positive
orthogonal random features, FAVOR+, with redraw).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import RotaryEmbedding

__all__ = ["linear_attention", "elu_feature_map", "FavorFeatures", "LinearAttention"]


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al., 2020)."""
    return F.elu(x) + 1.0


def _orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Rows from stacked random orthogonal blocks, each row rescaled to the norm of a Gaussian vector
    (Performer's orthogonal random features)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T)
    w = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1)
    return w * norms[:, None]


class FavorFeatures(nn.Module):
    """FAVOR+ positive random features: phi(x) = exp(w_i . x' - |x'|^2 / 2) / sqrt(m), x' = x / d^(1/4), so that
    E[phi(q) . phi(k)] = exp(q . k / sqrt(d)). ``redraw()`` draws a new projection (Performer redraws every
    so many training steps: ``redraw_interval``)."""

    def __init__(self, head_dim: int, num_features: int | None = None, redraw_interval: int = 1000):
        super().__init__()
        self.head_dim = head_dim
        self.num_features = num_features or head_dim
        if self.num_features % 2:
            raise ValueError(f"the number of random features must be even for RoPE, got {self.num_features}")
        self.redraw_interval = redraw_interval
        self.register_buffer("projection", _orthogonal_gaussian(self.num_features, head_dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def redraw(self) -> None:
        self.projection.copy_(_orthogonal_gaussian(self.num_features, self.head_dim).to(self.projection))

    def forward(self, x: Tensor, is_query: bool) -> Tensor:
        x = x * self.head_dim ** -0.25
        proj = x @ self.projection.to(x.dtype).T
        sq = x.square().sum(-1, keepdim=True) / 2
        # a per-query constant cancels between numerator and denominator; for keys one constant per head
        stab = proj.amax(-1, keepdim=True) if is_query else proj.amax(dim=(-1, -2), keepdim=True)
        return (torch.exp(proj - sq - stab.detach()) + 1e-6) / math.sqrt(self.num_features)

    def step(self) -> None:
        """Count a training forward pass; redraw the projection every ``redraw_interval`` of them."""
        self.calls += 1
        if self.redraw_interval and int(self.calls) % self.redraw_interval == 0:
            self.redraw()


def _noncausal(rq: Tensor, rk: Tensor, pq: Tensor, pk: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    kv = torch.einsum("bhnf,bhnd->bhfd", rk, v)
    num = torch.einsum("bhnf,bhfd->bhnd", rq, kv)
    den = torch.einsum("bhnf,bhf->bhn", pq, pk.sum(-2))
    return num, den


def _causal(rq: Tensor, rk: Tensor, pq: Tensor, pk: Tensor, v: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    b, h, n, f = rq.shape
    state = rq.new_zeros(b, h, f, v.shape[-1])  # sum over past n of (R_n varphi(k_n)) v_n^T
    k_sum = pq.new_zeros(b, h, f)  # sum over past n of varphi(k_n)
    nums, dens = [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        mask = torch.ones(e - s, e - s, dtype=torch.bool, device=rq.device).tril()
        scores = (rq[:, :, s:e] @ rk[:, :, s:e].transpose(-1, -2)).masked_fill(~mask, 0.0)
        nums.append(scores @ v[:, :, s:e] + rq[:, :, s:e] @ state)
        plain = (pq[:, :, s:e] @ pk[:, :, s:e].transpose(-1, -2)).masked_fill(~mask, 0.0)
        dens.append(plain.sum(-1) + torch.einsum("bhnf,bhf->bhn", pq[:, :, s:e], k_sum))
        state = state + rk[:, :, s:e].transpose(-1, -2) @ v[:, :, s:e]
        k_sum = k_sum + pk[:, :, s:e].sum(-2)
    return torch.cat(nums, dim=2), torch.cat(dens, dim=2)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map="elu",
    causal: bool = False,
    rope: RotaryEmbedding | None = None,
    positions=None,
    rope_mode: str = "eq19",
    eps: float = 1e-6,
    chunk_size: int = 128,
) -> Tensor:
    """Linear attention over ``(batch, heads, seq, head_dim)`` tensors, in O(seq) time and memory.

    ``feature_map``: "elu", a :class:`FavorFeatures`, or any callable ``f(x) -> positive features`` (it is
    then used for both q and k). ``rope``: a :class:`RotaryEmbedding` whose dim is the feature dim, applied as
    Eq. 19 (``rope_mode="eq19"``, the default) or to q and k before the feature map
    (``rope_mode="before_feature_map"``). ``positions``: as for ``RotaryEmbedding``. The denominator is
    clamped to at least ``eps``.
    """
    if q.ndim != 4 or k.shape != q.shape[:-1] + (k.shape[-1],) or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"q, k, v must be (batch, heads, seq, dim) with matching batch/heads/seq, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if rope_mode not in ("eq19", "before_feature_map"):
        raise ValueError(f"rope_mode must be 'eq19' or 'before_feature_map', got {rope_mode!r}")
    if feature_map == "elu":
        fq = fk = elu_feature_map
    elif isinstance(feature_map, FavorFeatures):
        fq, fk = (lambda x: feature_map(x, True)), (lambda x: feature_map(x, False))
    elif callable(feature_map):
        fq = fk = feature_map
    else:
        raise ValueError(f"unknown feature map {feature_map!r}; use 'elu', a FavorFeatures or a callable")
    dtype = q.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # sums over the sequence: >= float32
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    if rope is not None and rope_mode == "before_feature_map":
        q, k = rope(q, k, positions)
    pq, pk = fq(q), fk(k)
    rq, rk = pq, pk
    if rope is not None and rope_mode == "eq19":
        if rope.dim > pq.shape[-1]:
            raise ValueError(f"rotary dim {rope.dim} exceeds the feature dim {pq.shape[-1]}")
        rq, rk = rope(pq, pk, positions)
    num, den = _causal(rq, rk, pq, pk, v, chunk_size) if causal else _noncausal(rq, rk, pq, pk, v)
    return (num / den.clamp(min=eps)[..., None]).to(dtype)


class LinearAttention(nn.Module):
    """Multi-head linear attention with the same outside interface as ``MultiHeadAttention`` (no KV cache,
    no padding mask: used for language modelling on unpadded windows)."""

    def __init__(self, hidden_size: int, num_heads: int, feature_map: str = "favor", num_features: int | None = None,
                 redraw_interval: int = 1000, rope_mode: str = "eq19", rope_theta: float = 10000.0,
                 chunk_size: int = 128, bias: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)
        if feature_map == "favor":
            self.features = FavorFeatures(self.head_dim, num_features, redraw_interval)
            feature_dim = self.features.num_features
        elif feature_map == "elu":
            self.features, feature_dim = None, self.head_dim
        else:
            raise ValueError(f"unknown feature map {feature_map!r}; use 'elu' or 'favor'")
        self.rope_mode, self.chunk_size = rope_mode, chunk_size
        rope_dim = self.head_dim if rope_mode == "before_feature_map" else feature_dim
        self.rotary = RotaryEmbedding(rope_dim, rope_theta)

    def forward(self, x: Tensor, pos=None, bias: Tensor | None = None, is_causal: bool = False, kv_cache=None,
                layer: int = 0) -> Tensor:
        if kv_cache is not None or bias is not None:
            raise ValueError("linear attention here takes neither a KV cache nor a padding mask")
        if pos is not None and (pos.bias is not None or pos.shaw_keys is not None):
            raise ValueError("linear attention has no score matrix to add a relative bias to: use rope, an "
                             "absolute encoding or none")
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(2)
        if self.features is not None and self.training:
            self.features.step()
        use_rope = pos is not None and pos.rope is not None
        y = linear_attention(q, k, v, self.features if self.features is not None else "elu", causal=is_causal,
                             rope=self.rotary if use_rope else None, positions=pos.offset if use_rope else None,
                             rope_mode=self.rope_mode, chunk_size=self.chunk_size)
        return self.out(y.transpose(1, 2).reshape(batch, seq, -1))
