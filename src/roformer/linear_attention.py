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
asked for. The causal sums have their own backward (:class:`CausalEq19`, which also rotates each chunk as it
uses it): the gradient of a prefix sum is a suffix sum, recomputed chunk by chunk instead of stored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InvalidArgument
from .rope import RotaryEmbedding, apply_rotary

__all__ = ["linear_attention", "elu_feature_map", "FavorFeatures", "LinearAttention", "causal_product", "CausalEq19"]


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
        for name, value, low in (("head_dim", head_dim, 1), ("num_features", num_features, 1),
                                 ("redraw_interval", redraw_interval, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InvalidArgument(f"FavorFeatures {name} must be an integer >= {low}, got {value!r}")
        self.head_dim = head_dim
        self.num_features = num_features or head_dim
        if self.num_features % 2:
            raise InvalidArgument(f"the number of random features must be even for RoPE, got {self.num_features}")
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


class _Chunks:
    """The per-chunk views and helpers shared by the forward and backward passes of :class:`CausalEq19`."""

    def __init__(self, pq, pk, v, cos, sin, interleaved, g, chunk):
        self.pq, self.pk, self.v, self.cos, self.sin, self.g = pq, pk, v, cos, sin, g
        self.interleaved, self.chunk, self.n = interleaved, chunk, pq.shape[2]
        self.upper = torch.ones(chunk, chunk, dtype=torch.bool, device=pq.device).triu(1)

    def starts(self):
        return range(0, self.n, self.chunk)

    def rotate(self, x: Tensor, s: int, e: int, inverse: bool = False) -> Tensor:
        """R_m x for the chunk's positions (R_m^T x when ``inverse``); x itself without RoPE."""
        if self.cos is None:
            return x
        cos, sin = self.cos[..., s:e, :], self.sin[..., s:e, :]
        return apply_rotary(x, cos, sin, self.interleaved, inverse=inverse)

    def weights(self, s: int, e: int) -> Tensor:
        """exp(g_n - g_m) for n <= m inside the chunk, zero above the diagonal (a 0/1 mask without scales)."""
        mask = self.upper[: e - s, : e - s]
        if self.g is None:
            return (~mask).to(self.pq.dtype)
        return _chunk_weights(self.g, s, e, mask)

    def carry(self, s: int, e: int) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        """(exp(g_prev - g_m) per query m of the chunk, exp(g_n - g_end) per key n, exp(g_prev - g_end)): how the
        running sums, kept at the scale of the last position before / in the chunk, enter and leave it."""
        if self.g is None:
            return 1.0, 1.0, 1.0
        gc, prev, end = self.g[..., s:e], self.g[..., max(s - 1, 0)], self.g[..., e - 1]
        return (torch.exp(prev[..., None] - gc)[..., None], torch.exp(gc - end[..., None])[..., None],
                torch.exp(prev - end)[..., None, None])


def _eq19_forward(c: _Chunks, with_denominator: bool) -> tuple[Tensor, Tensor | None]:
    b, h, n, f = c.pq.shape
    num = c.v.new_empty(b, h, n, c.v.shape[-1])
    den = c.pq.new_empty(b, h, n) if with_denominator else None
    state = c.v.new_zeros(b, h, f, c.v.shape[-1])  # sum over past n of exp(g_n - g_prev) (R_n k_n) v_n^T
    key_sum = c.pq.new_zeros(b, h, 1, f)  # sum over past n of exp(g_n - g_prev) k_n
    for s in c.starts():
        e = min(s + c.chunk, n)
        qc, kc, vc = c.pq[:, :, s:e], c.pk[:, :, s:e], c.v[:, :, s:e]
        rq, rk = c.rotate(qc, s, e), c.rotate(kc, s, e)
        w = c.weights(s, e)
        into, out_of, across = c.carry(s, e)
        num[:, :, s:e] = ((rq @ rk.transpose(-1, -2)) * w) @ vc + (rq @ state) * into
        if with_denominator:  # the un-rotated sums of Eq. 19's denominator
            den[:, :, s:e] = ((qc @ kc.transpose(-1, -2)) * w).sum(-1) + (qc * key_sum).sum(-1) * into[..., 0] \
                if c.g is not None else (qc * (kc.cumsum(-2) + key_sum)).sum(-1)
            key_sum = key_sum * across + (kc * out_of).sum(-2, keepdim=True)
        state = state * across + (rk * out_of).transpose(-1, -2) @ vc
    return num, den


def _eq19_backward(c: _Chunks, d_num: Tensor, d_den: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    b, h, n, f = c.pq.shape
    dq, dk, dv = torch.empty_like(c.pq), torch.empty_like(c.pk), torch.empty_like(c.v)
    # prefix sums, forward order: d q_m = sum_{n <= m} w_mn [(dnum_m . v_n) R_m^T R_n k_n + dden_m k_n]
    state = c.v.new_zeros(b, h, c.v.shape[-1], f)  # sum over past n of exp(g_n - g_prev) v_n (R_n k_n)^T
    key_sum = c.pq.new_zeros(b, h, 1, f)
    for s in c.starts():
        e = min(s + c.chunk, n)
        kc, vc, dc = c.pk[:, :, s:e], c.v[:, :, s:e], d_num[:, :, s:e]
        rk = c.rotate(kc, s, e)
        w = c.weights(s, e)
        into, out_of, across = c.carry(s, e)
        d_rq = ((dc @ vc.transpose(-1, -2)) * w) @ rk + (dc @ state) * into
        dq[:, :, s:e] = c.rotate(d_rq, s, e, inverse=True)
        if d_den is not None:
            keys = w @ kc + key_sum * into if c.g is not None else kc.cumsum(-2) + key_sum
            dq[:, :, s:e] += d_den[:, :, s:e, None] * keys
            key_sum = key_sum * across + (kc * out_of).sum(-2, keepdim=True)
        state = state * across + (vc * out_of).transpose(-1, -2) @ rk
    # suffix sums, reverse order: d k_n and d v_n over m >= n; ``later`` is kept at the scale of g_e
    later = c.pq.new_zeros(b, h, f, c.v.shape[-1])  # sum over m >= e of exp(g_e - g_m) (R_m q_m) dnum_m^T
    later_den = c.pq.new_zeros(b, h, 1, f)  # sum over m >= e of exp(g_e - g_m) dden_m q_m
    for s in reversed(c.starts()):
        e = min(s + c.chunk, n)
        qc, kc, vc, dc = c.pq[:, :, s:e], c.pk[:, :, s:e], c.v[:, :, s:e], d_num[:, :, s:e]
        rq, rk = c.rotate(qc, s, e), c.rotate(kc, s, e)
        w = c.weights(s, e)
        if c.g is None:
            to_later, back = 1.0, 1.0
        else:
            g_next = c.g[..., min(e, n - 1)]
            to_later = torch.exp(c.g[..., s:e] - g_next[..., None])[..., None]  # exp(g_n - g_e) <= 1
            back = torch.exp(c.g[..., s] - g_next)[..., None, None]
            from_start = torch.exp(c.g[..., s, None] - c.g[..., s:e])[..., None]  # exp(g_s - g_m)
        d_rk = ((dc @ vc.transpose(-1, -2)) * w).transpose(-1, -2) @ rq + (vc @ later.transpose(-1, -2)) * to_later
        dv[:, :, s:e] = ((rq @ rk.transpose(-1, -2)) * w).transpose(-1, -2) @ dc + (rk @ later) * to_later
        dk[:, :, s:e] = c.rotate(d_rk, s, e, inverse=True)
        weighted_q = rq if c.g is None else rq * from_start
        if d_den is not None:
            dq_den = d_den[:, :, s:e, None] * qc
            if c.g is None:
                dk[:, :, s:e] += dq_den.flip(-2).cumsum(-2).flip(-2) + later_den
            else:
                dk[:, :, s:e] += w.transpose(-1, -2) @ dq_den + later_den * to_later
            later_den = later_den * back + (dq_den if c.g is None else dq_den * from_start).sum(-2, keepdim=True)
        later = later * back + weighted_q.transpose(-1, -2) @ dc
    return dq, dk, dv


class CausalEq19(torch.autograd.Function):
    """The two causal sums of Eq. 19 over ``(batch, heads, seq, dim)`` features, chunk by chunk:
    num_m = sum_{n <= m} w_mn (R_m q_m)^T (R_n k_n) v_n and den_m = sum_{n <= m} w_mn q_m^T k_n, with
    w_mn = exp(g_n - g_m) (1 without stabiliser scales ``g``). A chunk of C tokens is exact in O(C^2), the past
    enters through running (features x value-dim) sums. The rotation (cos/sin of the positions, or none) is
    applied to each chunk as it is used and never stored; the backward recomputes rotations and running sums
    (forward order for dq, reverse order for dk and dv: the gradient of a prefix sum is a suffix sum) and saves
    only the inputs. ``g`` is a constant the attention output does not depend on: it gets no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, cos, sin, interleaved, g, chunk, with_denominator):
        ctx.save_for_backward(q, k, v, cos, sin, g)
        ctx.interleaved, ctx.chunk = interleaved, chunk
        num, den = _eq19_forward(_Chunks(q, k, v, cos, sin, interleaved, g, chunk), with_denominator)
        return (num, den) if with_denominator else num

    @staticmethod
    def backward(ctx, d_num, d_den=None):
        q, k, v, cos, sin, g = ctx.saved_tensors
        c = _Chunks(q, k, v, cos, sin, ctx.interleaved, g, ctx.chunk)
        dq, dk, dv = _eq19_backward(c, d_num.contiguous(), None if d_den is None else d_den.contiguous())
        return dq, dk, dv, None, None, None, None, None, None


def causal_product(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, chunk_size: int = 64) -> Tensor:
    """sum_{n <= m} exp(g_n - g_m) (q_m . k_n) v_n for every m (the numerator of :class:`CausalEq19`)."""
    if chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be at least 1, got {chunk_size}")
    return CausalEq19.apply(q, k, v, None, None, True, None if g is None else g.detach(), chunk_size, False)


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
    raise InvalidArgument(f"unknown feature map {feature_map!r}; use 'elu', a FavorFeatures or a callable")


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map="elu",
    causal: bool = False,
    rope: RotaryEmbedding | None = None,
    offset: int | Tensor = 0,
    position_ids: Tensor | None = None,
    rope_mode: str = "eq19",
    eps: float | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """Linear attention over ``(batch, heads, seq, head_dim)`` tensors, in O(seq) time and memory.

    ``feature_map``: "elu", a :class:`FavorFeatures`, or any callable ``f(x) -> positive features`` (it is
    then used for both q and k). ``rope``: a :class:`RotaryEmbedding` whose dim is the feature dim, applied as
    Eq. 19 (``rope_mode="eq19"``, the default) or to q and k before the feature map
    (``rope_mode="before_feature_map"``). ``offset``, ``position_ids``: the positions, as for ``RotaryEmbedding``.
    ``eps``: None (default) computes Eq. 19 exactly, replacing only a denominator that underflowed to zero; a number
    keeps every denominator at least ``eps`` times the scale of its terms, max_i phi(q_m)_i * max_{n, i}
    varphi(k_n)_i (n <= m when causal). ``chunk_size``: tokens per chunk of the causal sums (memory O(chunk^2) per
    head).
    """
    if q.ndim != 4 or k.shape != q.shape[:-1] + (k.shape[-1],) or v.shape[:-1] != k.shape[:-1]:
        raise InvalidArgument(f"q, k, v must be (batch, heads, seq, dim) with matching batch/heads/seq, got "
                              f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if rope_mode not in ("eq19", "before_feature_map"):
        raise InvalidArgument(f"rope_mode must be 'eq19' or 'before_feature_map', got {rope_mode!r}")
    if eps is not None and not eps >= 0:
        raise InvalidArgument(f"eps must be None or a number >= 0, got {eps!r}")
    dtype = q.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # sums over the sequence: >= float32
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    if rope is not None and rope_mode == "before_feature_map":
        q, k = rope(q, k, offset=offset, position_ids=position_ids)
    if causal and chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be at least 1, got {chunk_size}")
    pq, pk, g = _positive_features(feature_map, q, k, causal)
    eq19 = rope is not None and rope_mode == "eq19"
    if eq19 and rope.dim > pq.shape[-1]:
        raise InvalidArgument(f"rotary dim {rope.dim} exceeds the feature dim {pq.shape[-1]}")
    if causal:  # rotation and both sums in one pass over the chunks (CausalEq19)
        cos = sin = None
        if eq19:
            # (a partial rotary dim rotates the first rope.dim features; the rest pass through)
            cos, sin = (t.to(compute) for t in rope.cos_sin(pq.shape[-2], offset=offset, position_ids=position_ids,
                                                            device=pq.device))
        num, den = CausalEq19.apply(pq, pk, v, cos, sin, rope.interleaved if eq19 else True, g, chunk_size, True)
    else:
        rq, rk = rope(pq, pk, offset=offset, position_ids=position_ids) if eq19 else (pq, pk)
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
            raise InvalidArgument(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)
        if feature_map == "favor":
            self.features = FavorFeatures(self.head_dim, num_features, redraw_interval)
            feature_dim = self.features.num_features
        elif feature_map == "elu":
            self.features, feature_dim = None, self.head_dim
        else:
            raise InvalidArgument(f"unknown feature map {feature_map!r}; use 'elu' or 'favor'")
        self.rope_mode, self.chunk_size = rope_mode, chunk_size
        rope_dim = self.head_dim if rope_mode == "before_feature_map" else feature_dim
        self.rotary = RotaryEmbedding(rope_dim, rope_theta)

    def forward(self, x: Tensor, pos=None, bias: Tensor | None = None, is_causal: bool = False, kv_cache=None,
                layer: int = 0) -> Tensor:
        if kv_cache is not None or bias is not None:
            raise InvalidArgument("linear attention here takes neither a KV cache nor a padding mask")
        if pos is not None and (pos.bias is not None or pos.shaw is not None):
            raise InvalidArgument("linear attention has no score matrix to add a relative bias to: use rope, an "
                                  "absolute encoding or none")
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(2)
        if self.features is not None and self.training:
            self.features.step()
        use_rope = pos is not None and pos.rope is not None
        y = linear_attention(q, k, v, self.features if self.features is not None else "elu", causal=is_causal,
                             rope=self.rotary if use_rope else None, offset=pos.offset if use_rope else 0,
                             position_ids=pos.position_ids if use_rope else None,
                             rope_mode=self.rope_mode, chunk_size=self.chunk_size)
        return self.out(y.transpose(1, 2).reshape(batch, seq, -1))
