"""RoPE beyond a 1-D sequence: multimodal M-RoPE and 2-D RoPE for images, on the same rotation op as 1-D RoPE.

The rotation is always Eq. 34 pair by pair; what changes is the angle of pair i at a token:

- **M-RoPE** (Qwen2-VL, Wang et al. 2024): a token has three positions (t, h, w) and the d/2 frequency pairs are
  split in sections, ``mrope_section = (s_t, s_h, s_w)`` with s_t + s_h + s_w = d/2; pair i in the t section turns
  by t * theta_i, in the h section by h * theta_i, in the w section by w * theta_i (theta_i of Eq. 15 over the whole
  head). Contiguous sections as in Qwen2-VL and Qwen2.5-VL; ``mrope_interleaved=True`` is Qwen3-VL's layout, pairs
  i = 1, 4, 7, ... (up to 3 s_h) on h, i = 2, 5, 8, ... (up to 3 s_w) on w and the rest on t. Text tokens have
  t = h = w, so over text M-RoPE is RoPE. :func:`mrope_position_ids` gives the positions of a sequence mixing text
  and image grids.
- **Axial 2-D RoPE** (Heo et al. 2024, "Rotary Position Embedding for Vision Transformer"; torchtune, EVA): half
  the pairs turn by the patch's x and half by its y, each half with the frequencies of a d/2-dim RoPE,
  theta_j = base^(-4j/d). A 2-D shift of every patch changes no score.
- **RoPE-Mixed** (same paper): learnt frequency vectors per head, the angle of pair i of head h at (x, y) is
  x f^x_(h,i) + y f^y_(h,i), so axes can mix; trained through autograd (the op differentiates its cos and sin).
  A 2-D shift again changes no score.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import InvalidArgument
from .rope import _for_layout, _rotate, angle_dtype, rotary_frequencies

__all__ = ["MultimodalRotaryEmbedding", "mrope_position_ids", "AxialRotaryEmbedding", "MixedRotaryEmbedding",
           "patch_positions"]


def _angles_cos_sin(angles: Tensor) -> tuple[Tensor, Tensor]:
    with torch.autocast(angles.device.type, enabled=False):
        return angles.cos(), angles.sin()


# --------------------------------------------------------------------------------------------------------
# M-RoPE
# --------------------------------------------------------------------------------------------------------


class MultimodalRotaryEmbedding(nn.Module):
    """M-RoPE for q and k ``(batch, heads, seq, head_dim)`` (``seq_dim=-3``: ``(batch, seq, heads, head_dim)``) with
    position ids ``(3, batch, seq)`` (t, h, w), as transformers' Qwen2-VL takes them.

    >>> rope = MultimodalRotaryEmbedding(128, mrope_section=(16, 24, 24), base=1e6)   # Qwen2-VL
    >>> q, k = rope(q, k, position_ids)
    ``interleaved`` is the feature pairing (False, the half split, is Qwen's); ``mrope_interleaved`` the section
    layout (False: Qwen2-VL's contiguous sections, True: Qwen3-VL's interleaved ones)."""

    def __init__(self, dim: int, mrope_section, base: float = 10000.0, interleaved: bool = False,
                 mrope_interleaved: bool = False, seq_dim: int = -2):
        super().__init__()
        theta = rotary_frequencies(dim, base)
        sections = tuple(int(s) for s in mrope_section)
        if len(sections) != 3 or any(s < 0 for s in sections) or sum(sections) != dim // 2:
            raise InvalidArgument(f"mrope_section must be three counts of frequency pairs (t, h, w) adding up to "
                                  f"dim/2 = {dim // 2}, got {tuple(mrope_section)}")
        if mrope_interleaved and (3 * sections[1] > dim // 2 + 1 or 3 * sections[2] > dim // 2 + 2):
            raise InvalidArgument(f"interleaved sections {sections} do not fit in {dim // 2} pairs")
        if seq_dim not in (-2, -3):
            raise InvalidArgument(f"seq_dim must be -2 or -3, got {seq_dim}")
        self.dim, self.base, self.sections, self.seq_dim = dim, float(base), sections, seq_dim
        self.interleaved, self.mrope_interleaved = interleaved, mrope_interleaved
        if mrope_interleaved:  # Qwen3-VL: h on pairs 1, 4, 7, .. < 3 s_h; w on 2, 5, 8, .. < 3 s_w; t elsewhere
            axis = torch.zeros(dim // 2, dtype=torch.long)
            axis[1 : 3 * sections[1] : 3] = 1
            axis[2 : 3 * sections[2] : 3] = 2
        else:
            axis = torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
        self._axis, self._theta = axis, theta  # not buffers: .to(bfloat16) must not round the frequencies

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, mrope_section={self.sections}, base={self.base:g}, interleaved={self.interleaved}, "
                f"mrope_interleaved={self.mrope_interleaved}")

    def cos_sin(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin ``(batch, 1, seq, dim/2)`` (``(batch, seq, 1, dim/2)`` with ``seq_dim=-3``) for ``(3, batch, seq)``
        position ids."""
        if position_ids.ndim != 3 or position_ids.shape[0] != 3 or position_ids.is_floating_point():
            raise InvalidArgument(f"M-RoPE position_ids must be an integer (3, batch, seq) tensor of (t, h, w) "
                                  f"positions, got {position_ids.dtype} {tuple(position_ids.shape)}")
        device = position_ids.device
        dtype = angle_dtype(device)
        axis = self._axis.to(device)
        # position of each token on the axis of each pair: (batch, seq, dim/2)
        per_pair = position_ids.permute(1, 2, 0).to(dtype).index_select(-1, axis)
        cos, sin = _angles_cos_sin(per_pair * self._theta.to(device=device, dtype=dtype))
        return _for_layout(cos, self.seq_dim), _for_layout(sin, self.seq_dim)

    def forward(self, q: Tensor, k: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.cos_sin(position_ids)
        return _rotate(q, cos, sin, self.interleaved), _rotate(k, cos, sin, self.interleaved)


def mrope_position_ids(token_types: Tensor, grids: Tensor, spatial_merge_size: int = 1,
                       attention_mask: Tensor | None = None) -> Tensor:
    """The (t, h, w) position ids ``(3, batch, seq)`` of sequences that mix text (type 0) and image or video tokens
    (type 1 or 2), as Qwen2-VL numbers them: text tokens count up with t = h = w; the tokens of the next grid
    ``(T, H, W)`` of ``grids`` (one row per image/video, in order of appearance; H and W before the spatial merge)
    are at (s + t, s + y, s + x) over its ``T x H/m x W/m`` cells, s being the next free position; after it, text
    resumes at s + max(H, W) / m. Padding (``attention_mask`` 0) gets position 0."""
    if token_types.ndim != 2:
        raise InvalidArgument(f"token_types must be (batch, seq), got {tuple(token_types.shape)}")
    out = torch.zeros(3, *token_types.shape, dtype=torch.long, device=token_types.device)
    grid_rows = iter(grids.tolist() if grids is not None else [])
    for b in range(token_types.shape[0]):
        keep = torch.ones_like(token_types[b], dtype=torch.bool) if attention_mask is None else attention_mask[b].bool()
        types = token_types[b][keep].tolist()
        columns, start, i = [], 0, 0
        while i < len(types):
            j = i
            while j < len(types) and types[j] == types[i]:
                j += 1
            if types[i] == 0:
                columns.append(torch.arange(start, start + j - i).expand(3, -1))
                start += j - i
            else:
                t, h, w = next(grid_rows)
                h, w = h // spatial_merge_size, w // spatial_merge_size
                grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
                columns.append(grid.reshape(3, -1) + start)
                if grid.shape[1] * h * w != j - i:
                    raise InvalidArgument(f"an image of {j - i} tokens does not match its grid {(t, h, w)} "
                                          f"(after a spatial merge of {spatial_merge_size})")
                start += max(h, w)
            i = j
        out[:, b, keep] = torch.cat(columns, dim=1).to(out.device) if columns else out[:, b, keep]
    return out


# --------------------------------------------------------------------------------------------------------
# 2-D RoPE for images
# --------------------------------------------------------------------------------------------------------


def patch_positions(height: int, width: int, cls_token: str | None = None, device=None) -> Tensor:
    """The (x, y) position ``(seq, 2)`` of the patches of a ``height x width`` grid in row-major order. With a
    CLS token (``"first"`` or ``"last"`` in the sequence), patches count from 1 and the CLS token sits at (0, 0),
    unrotated, as in torchtune's VisionRotaryPositionalEmbeddings."""
    if cls_token not in (None, "first", "last"):
        raise InvalidArgument(f"cls_token must be None, 'first' or 'last', got {cls_token!r}")
    y, x = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    xy = torch.stack((x.flatten(), y.flatten()), -1)
    if cls_token is None:
        return xy
    cls = torch.zeros(1, 2, dtype=xy.dtype, device=device)
    return torch.cat((cls, xy + 1) if cls_token == "first" else (xy + 1, cls))


def _check_xy(positions: Tensor) -> Tensor:
    if positions.ndim not in (2, 3) or positions.shape[-1] != 2 or positions.is_complex():
        raise InvalidArgument(f"2-D positions must be (seq, 2) or (batch, seq, 2) (x, y), got {tuple(positions.shape)}")
    return positions


class AxialRotaryEmbedding(nn.Module):
    """Axial 2-D RoPE over ``dim`` features of q and k ``(batch, heads, seq, head_dim)`` (``seq_dim=-3``: ``(batch,
    seq, heads, head_dim)``): the first dim/4 pairs turn by x, the next dim/4 by y, each with theta_j = base^(-4j/d).
    ``positions``: (x, y) per token, ``(seq, 2)`` or ``(batch, seq, 2)`` (see :func:`patch_positions`)."""

    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = True, seq_dim: int = -2):
        super().__init__()
        if dim % 4 or dim <= 0:
            raise InvalidArgument(f"axial 2-D RoPE needs a dim divisible by 4 (half the pairs per axis), got {dim}")
        if seq_dim not in (-2, -3):
            raise InvalidArgument(f"seq_dim must be -2 or -3, got {seq_dim}")
        self.dim, self.base, self.interleaved, self.seq_dim = dim, float(base), interleaved, seq_dim
        self._theta = rotary_frequencies(dim // 2, base)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        xy = _check_xy(positions)
        dtype = angle_dtype(xy.device)
        theta = self._theta.to(device=xy.device, dtype=dtype)
        angles = torch.cat((xy[..., :1].to(dtype) * theta, xy[..., 1:].to(dtype) * theta), dim=-1)
        cos, sin = _angles_cos_sin(angles)
        return _for_layout(cos, self.seq_dim), _for_layout(sin, self.seq_dim)

    def forward(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.cos_sin(positions)
        return _rotate(q, cos, sin, self.interleaved), _rotate(k, cos, sin, self.interleaved)


class MixedRotaryEmbedding(nn.Module):
    """RoPE-Mixed: learnt frequencies ``freqs`` ``(2, heads, dim/2)`` (x and y per head and pair); the angle of pair i
    of head h at (x, y) is x freqs[0, h, i] + y freqs[1, h, i]. Initialised as in Heo et al.: magnitudes
    base^(-4j/d) (base 10), each head's (f^x, f^y) pointing in a random direction, its two halves at right angles.
    q and k ``(batch, heads, seq, head_dim)``; ``positions`` ``(seq, 2)`` or ``(batch, seq, 2)``."""

    def __init__(self, dim: int, num_heads: int, base: float = 10.0, interleaved: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        if dim % 4 or dim <= 0:
            raise InvalidArgument(f"RoPE-Mixed needs a dim divisible by 4, got {dim}")
        self.dim, self.num_heads, self.interleaved = dim, num_heads, interleaved
        magnitude = rotary_frequencies(dim // 2, base, dtype=torch.float32)  # (dim/4,)
        direction = torch.rand(num_heads, 1, generator=generator) * 2 * math.pi
        fx = torch.cat((magnitude * direction.cos(), magnitude * (direction + math.pi / 2).cos()), dim=-1)
        fy = torch.cat((magnitude * direction.sin(), magnitude * (direction + math.pi / 2).sin()), dim=-1)
        self.freqs = nn.Parameter(torch.stack((fx, fy)))  # (2, heads, dim/2)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin ``(heads, seq, dim/2)`` or ``(batch, heads, seq, dim/2)``, differentiable in ``freqs``."""
        xy = _check_xy(positions).to(self.freqs.dtype)
        # (..., seq, 1, 1) * (heads, dim/2) -> (..., seq, heads, dim/2) -> (..., heads, seq, dim/2)
        angles = xy[..., 0, None, None] * self.freqs[0] + xy[..., 1, None, None] * self.freqs[1]
        return _angles_cos_sin(angles.transpose(-2, -3))

    def forward(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.cos_sin(positions)
        return _rotate(q, cos, sin, self.interleaved), _rotate(k, cos, sin, self.interleaved)
