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

Feature maps: ``elu`` (phi(x) = elu(x) + 1, Katharopoulos et al.), ``favor`` (Performer's positive
orthogonal random features, FAVOR+, with redraw), or any callable returning positive features.

Exactness. Eq. 19 is invariant to a positive constant per query in phi(q_m) and to a common constant in
varphi(k_n); FAVOR+ uses this to keep exp() in range: each query's features are divided by their largest one,
and each key's by exp(g_n), where g_n is the running maximum of the key exponents over positions <= n. A
running maximum differs between keys, so the sums carry the factor exp(g_n - g_m) <= 1 between key n and
query m (as online softmax rescales its running sums): every output depends on its prefix only, exactly,
whatever the later tokens are. The denominator is a sum of positive terms, so it keeps its relative precision
at any scale; only an exact zero (every term underflowed) is replaced, unless a relative floor ``eps`` is
asked for. The causal sums have their own backward (:class:`CausalProduct`): the gradient of a prefix sum is a
suffix sum, recomputed chunk by chunk instead of stored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import RotaryEmbedding

__all__ = ["linear_attention", "elu_feature_map", "FavorFeatures", "LinearAttention", "causal_product"]


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
    E[phi(q) . phi(k)] = exp(q . k / sqrt(d)). ``log_features(x)`` is the exponent (what
    :func:`linear_attention` stabilises), ``forward(x)`` the features themselves. ``redraw()`` draws a new
    projection (Performer redraws every so many training steps: ``redraw_interval``)."""

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

    def log_features(self, x: Tensor) -> Tensor:
        x = x * self.head_dim ** -0.25
        return x @ self.projection.to(x.dtype).T - x.square().sum(-1, keepdim=True) / 2 \
            - 0.5 * math.log(self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(self.log_features(x))

    def step(self) -> None:
        """Count a training forward pass; redraw the projection every ``redraw_interval`` of them."""
        self.calls += 1
        if self.redraw_interval and int(self.calls) % self.redraw_interval == 0:
            self.redraw()


def _chunk_weights(g: Tensor | None, s: int, e: int, upper: Tensor) -> Tensor | None:
    """exp(g_n - g_m) for key n <= query m within the chunk [s, e), zero above the diagonal (None: no scales)."""
    if g is None:
        return None
    gc = g[..., s:e]
    return torch.exp((gc[..., None, :] - gc[..., :, None]).masked_fill(upper, -math.inf))


def _causal_forward(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, chunk: int) -> Tensor:
    b, h, n, f = q.shape
    out = v.new_empty(b, h, n, v.shape[-1])
    state = v.new_zeros(b, h, f, v.shape[-1])  # sum over past n of exp(g_n - g_end) k_n v_n^T
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        qc, kc, vc, mask = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], upper[: e - s, : e - s]
        scores = qc @ kc.transpose(-1, -2)
        weights = _chunk_weights(g, s, e, mask)
        past = qc @ state
        if weights is None:
            out[:, :, s:e] = scores.masked_fill_(mask, 0.0) @ vc + past
            state += kc.transpose(-1, -2) @ vc
        else:
            gc, g_prev, g_end = g[..., s:e], g[..., max(s - 1, 0)], g[..., e - 1]
            out[:, :, s:e] = (scores * weights) @ vc + past * torch.exp(g_prev[..., None] - gc)[..., None]
            state = state * torch.exp(g_prev - g_end)[..., None, None] \
                + (kc * torch.exp(gc - g_end[..., None])[..., None]).transpose(-1, -2) @ vc
    return out


def _causal_backward(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, grad: Tensor, chunk: int):
    b, h, n, f = q.shape
    gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    starts = range(0, n, chunk)
    # d q_m = sum_{n <= m} exp(g_n - g_m) (dout_m . v_n) k_n: a prefix sum, in forward order
    state = k.new_zeros(b, h, v.shape[-1], f)  # sum over past n of exp(g_n - g_end) v_n k_n^T
    for s in starts:
        e = min(s + chunk, n)
        kc, vc, dc, mask = k[:, :, s:e], v[:, :, s:e], grad[:, :, s:e], upper[: e - s, : e - s]
        dv_scores = dc @ vc.transpose(-1, -2)
        weights = _chunk_weights(g, s, e, mask)
        if weights is None:
            gq[:, :, s:e] = dv_scores.masked_fill_(mask, 0.0) @ kc + dc @ state
            state += vc.transpose(-1, -2) @ kc
        else:
            gc, g_prev, g_end = g[..., s:e], g[..., max(s - 1, 0)], g[..., e - 1]
            gq[:, :, s:e] = (dv_scores * weights) @ kc + (dc @ state) * torch.exp(g_prev[..., None] - gc)[..., None]
            state = state * torch.exp(g_prev - g_end)[..., None, None] \
                + (vc * torch.exp(gc - g_end[..., None])[..., None]).transpose(-1, -2) @ kc
    # d k_n and d v_n: sums over m >= n, in reverse order; later = sum_{m >= e} exp(g_e - g_m) q_m dout_m^T
    later = q.new_zeros(b, h, f, v.shape[-1])
    for s in reversed(starts):
        e = min(s + chunk, n)
        qc, kc, vc, dc, mask = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], grad[:, :, s:e], upper[: e - s, : e - s]
        scores, dv_scores = qc @ kc.transpose(-1, -2), dc @ vc.transpose(-1, -2)
        weights = _chunk_weights(g, s, e, mask)
        if weights is None:
            gk[:, :, s:e] = dv_scores.masked_fill_(mask, 0.0).transpose(-1, -2) @ qc + vc @ later.transpose(-1, -2)
            gv[:, :, s:e] = scores.masked_fill_(mask, 0.0).transpose(-1, -2) @ dc + kc @ later
            later += qc.transpose(-1, -2) @ dc
        else:
            gc, g_start = g[..., s:e], g[..., s]
            to_later = torch.exp(gc - g[..., min(e, n - 1)][..., None])[..., None]  # exp(g_n - g_e) <= 1
            gk[:, :, s:e] = (dv_scores * weights).transpose(-1, -2) @ qc + (vc @ later.transpose(-1, -2)) * to_later
            gv[:, :, s:e] = (scores * weights).transpose(-1, -2) @ dc + (kc @ later) * to_later
            later = later * torch.exp(g_start - g[..., min(e, n - 1)])[..., None, None] \
                + (qc * torch.exp(g_start[..., None] - gc)[..., None]).transpose(-1, -2) @ dc
    return gq, gk, gv


class CausalProduct(torch.autograd.Function):
    """out_m = sum_{n <= m} exp(g_n - g_m) (q_m . k_n) v_n over ``(batch, heads, seq, dim)`` tensors, chunk by
    chunk: a chunk of C tokens exactly in O(C^2), the past through a running (features x value-dim) sum. ``g``
    (batch, heads, seq), non-decreasing, or None for zeros: the log-scale of the keys' stabiliser, a constant
    that the attention output does not depend on, so it gets no gradient. The backward recomputes the running
    sums (forward order for dq, reverse order for dk and dv) and saves only the inputs."""

    @staticmethod
    def forward(ctx, q, k, v, g, chunk):
        ctx.save_for_backward(q, k, v, g)
        ctx.chunk = chunk
        return _causal_forward(q, k, v, g, chunk)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, g = ctx.saved_tensors
        return *_causal_backward(q, k, v, g, grad.contiguous(), ctx.chunk), None, None


def causal_product(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, chunk_size: int = 64) -> Tensor:
    """sum_{n <= m} exp(g_n - g_m) (q_m . k_n) v_n for every m (see :class:`CausalProduct`)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return CausalProduct.apply(q, k, v, None if g is None else g.detach(), chunk_size)


def _positive_features(feature_map, q: Tensor, k: Tensor, causal: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """phi(q), varphi(k) and the keys' log-scale g (None: unscaled). FAVOR+ features are computed from their
    exponents: each query's divided by its largest feature, each key's by exp(running max of the exponents)
    when causal, by exp(the max over the sequence) otherwise (both are constants Eq. 19 cancels)."""
    if feature_map == "elu":
        return elu_feature_map(q), elu_feature_map(k), None
    if isinstance(feature_map, FavorFeatures):
        lq, lk = feature_map.log_features(q), feature_map.log_features(k)
        pq = torch.exp(lq - lq.detach().amax(-1, keepdim=True))
        key_max = lk.detach().amax(-1)  # (b, h, n)
        if not causal:
            return pq, torch.exp(lk - key_max.amax(-1)[..., None, None]), None
        g = key_max.cummax(-1).values
        return pq, torch.exp(lk - g[..., None]), g
    if callable(feature_map):
        return feature_map(q), feature_map(k), None
    raise ValueError(f"unknown feature map {feature_map!r}; use 'elu', a FavorFeatures or a callable")


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map="elu",
    causal: bool = False,
    rope: RotaryEmbedding | None = None,
    positions=None,
    rope_mode: str = "eq19",
    eps: float | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """Linear attention over ``(batch, heads, seq, head_dim)`` tensors, in O(seq) time and memory.

    ``feature_map``: "elu", a :class:`FavorFeatures`, or any callable ``f(x) -> positive features`` (it is
    then used for both q and k). ``rope``: a :class:`RotaryEmbedding` whose dim is the feature dim, applied as
    Eq. 19 (``rope_mode="eq19"``, the default) or to q and k before the feature map
    (``rope_mode="before_feature_map"``). ``positions``: as for ``RotaryEmbedding``. ``eps``: None (default)
    computes Eq. 19 exactly, replacing only a denominator that underflowed to zero; a number keeps every
    denominator at least ``eps`` times the scale of its terms, max_i phi(q_m)_i * max_{n, i} varphi(k_n)_i
    (n <= m when causal). ``chunk_size``: tokens per chunk of the causal sums (memory O(chunk^2) per head).
    """
    if q.ndim != 4 or k.shape != q.shape[:-1] + (k.shape[-1],) or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"q, k, v must be (batch, heads, seq, dim) with matching batch/heads/seq, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if rope_mode not in ("eq19", "before_feature_map"):
        raise ValueError(f"rope_mode must be 'eq19' or 'before_feature_map', got {rope_mode!r}")
    if eps is not None and not eps >= 0:
        raise ValueError(f"eps must be None or a number >= 0, got {eps!r}")
    dtype = q.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # sums over the sequence: >= float32
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    if rope is not None and rope_mode == "before_feature_map":
        q, k = rope(q, k, positions)
    pq, pk, g = _positive_features(feature_map, q, k, causal)
    rq, rk = pq, pk
    if rope is not None and rope_mode == "eq19":
        if rope.dim > pq.shape[-1]:
            raise ValueError(f"rotary dim {rope.dim} exceeds the feature dim {pq.shape[-1]}")
        rq, rk = rope(pq, pk, positions)
    if causal:
        num = causal_product(rq, rk, v, g, chunk_size)
        if g is None:  # un-scaled keys: the denominator's key sums are a plain prefix sum
            den = (pq * pk.cumsum(-2)).sum(-1)
        else:
            den = causal_product(pq, pk, pk.new_ones(*pk.shape[:-1], 1), g, chunk_size)[..., 0]
    else:
        num = rq @ (rk.transpose(-1, -2) @ v)
        den = (pq @ pk.sum(-2)[..., None])[..., 0]
    if eps is None:
        den = torch.where(den > 0, den, torch.finfo(compute).tiny)
    else:
        if g is not None:  # keys scaled by exp(-g_n) count with exp(g_n - g_m) at m: their largest feature is 1
            key_scale = pk.new_ones(())
        else:
            key_scale = pk.detach().amax(-1)
            key_scale = key_scale.cummax(-1).values if causal else key_scale.amax(-1, keepdim=True)
        den = torch.maximum(den, (eps * pq.detach().amax(-1) * key_scale).clamp_min(torch.finfo(compute).tiny))
    return (num / den[..., None]).to(dtype)


class LinearAttention(nn.Module):
    """Multi-head linear attention with the same outside interface as ``MultiHeadAttention`` (no KV cache,
    no padding mask: used for language modelling on unpadded windows)."""

    def __init__(self, hidden_size: int, num_heads: int, feature_map: str = "favor", num_features: int | None = None,
                 redraw_interval: int = 1000, rope_mode: str = "eq19", rope_theta: float = 10000.0,
                 chunk_size: int = 64, bias: bool = True):
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
