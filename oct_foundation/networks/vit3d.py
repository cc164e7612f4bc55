"""3D Vision Transformer for OCT volumes (time-as-depth V-JEPA encoder).

A volume batch ``[B, C, T, H, W]`` (T = slice index D, H = axial, W = lateral) is cut into tubelets of
``tubelet_size x patch_h x patch_w`` voxels by a strided ``Conv3d``; tokens are ordered in (t, h, w) raster order
with t slowest, so token ``n`` sits at ``t = n // (H'W')``, ``h = (n // W') % H'``, ``w = n % W'``.

Positional information is either

* ``"sincos"``: a fixed 3D sine-cosine table added to the tokens (V-JEPA 1 layout: half of the channels encode
  the depth index, a quarter each height and width). The table is a function of the integer grid position, so
  the table of any other grid is computed exactly rather than resampled; or
* ``"rope"``: 3D rotary embeddings applied to queries and keys in every attention layer, computed as the public
  V-JEPA 2 encoder computes them: the head dimension is split into three equal even chunks (depth, height,
  width; any remainder is left unrotated), and every chunk is rotated with angles ``pos * 10000**(-2i/d)`` at the
  integer token position along that axis. V-JEPA 2 repeats the ``d/2`` angles as ``[f, f]`` (tiled) instead of
  ``[f0, f0, f1, f1, ...]`` (interleaved) while rotating adjacent pairs, so its map is not an exact rotation;
  ``rope_variant="vjepa2"`` (default) reproduces it so that public weights give the public features, and
  ``rope_variant="rotary"`` gives the exact rotation (norm preserving, purely relative) for training from scratch.
  Angles are computed in float32 also under autocast (V-JEPA 2 uses the activation dtype); in float32 the two
  agree exactly.

V-JEPA 2.1 options (``app/vjepa_2_1``): ``rope_variant="rotary"`` is 2.1's RoPE (interleaved angles, a true
rotation); ``interpolate_rope=True`` rescales height/width token positions to the pretrained grid
(``h * (G - 1) / (H' - 1)``, ``G = rope_pretrained_grid``, 16 for 256 px at patch 16); ``modality_embedding=True``
adds a learned ``video_mod_embed`` (or ``img_mod_embed`` for single-frame input) after the patch embedding;
``img_temporal_dim_size=1`` embeds single-frame input through ``patch_embed_img`` (tubelet 1);
``hierarchical_norms=True`` replaces ``norm`` by four ``norms_block`` LayerNorms after the hierarchical layers
(final norm = ``norms_block[-1]``) and :meth:`VisionTransformer3D.hierarchical_outputs` returns the normed
outputs of those layers (for dense heads and deep supervision).

Parameter names follow V-JEPA 2 (``patch_embed.proj``, ``blocks.i.norm1``, ``blocks.i.attn.qkv``,
``blocks.i.attn.proj``, ``blocks.i.norm2``, ``blocks.i.mlp.fc1``/``fc2``, ``norm``) so its checkpoints map 1:1.
The transformer pieces are written here rather than taken from MONAI's ``ViT`` because MONAI's blocks use other
parameter names, have no rotary embeddings and cannot run on a gathered (masked) subset of tokens.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .model_files import records_init_args

__all__ = [
    "VisionTransformer3D",
    "PatchEmbed3D",
    "Attention",
    "Block",
    "MLP",
    "sincos_pos_embed_3d",
    "sincos_pos_embed_at",
    "slice_token_positions",
    "token_positions",
    "rope_tables",
    "interpolate_rope_positions",
    "apply_rope",
    "rope_axis_dim",
    "gather_tokens",
]

Grid = Tuple[int, int, int]
POS_EMBED_TYPES = ("rope", "sincos")
ROPE_VARIANTS = ("vjepa2", "rotary")


# ----------------------------------------------------------------------------------------------------------------
# positional encodings
# ----------------------------------------------------------------------------------------------------------------
def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[M] -> [M, dim]``: ``[sin(pos * w_i), cos(pos * w_i)]`` with ``w_i = 10000**(-2i/dim)`` (float64)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def _sincos_dims(embed_dim: int, uniform_power: bool) -> Tuple[int, int, int]:
    if uniform_power:
        d_dim = h_dim = w_dim = int(math.ceil(embed_dim / 6) * 2)
    else:
        d_dim, h_dim, w_dim = embed_dim // 2, embed_dim // 4, embed_dim // 4
    if d_dim % 2 or h_dim % 2 or d_dim + h_dim + w_dim < embed_dim:
        raise ValueError(f"sincos position embedding needs embed_dim divisible by 8, got {embed_dim}")
    return d_dim, h_dim, w_dim


def sincos_pos_embed_at(embed_dim: int, positions: torch.Tensor, uniform_power: bool = False) -> torch.Tensor:
    """The 3D sine-cosine embedding of :func:`sincos_pos_embed_3d` at (possibly fractional) token positions
    ``[..., 3]`` (t, h, w) -> ``[..., embed_dim]`` (float32)."""
    d_dim, h_dim, w_dim = _sincos_dims(embed_dim, uniform_power)
    flat = positions.reshape(-1, 3).cpu()
    table = torch.cat([_sincos_1d(d_dim, flat[:, 0]), _sincos_1d(h_dim, flat[:, 1]), _sincos_1d(w_dim, flat[:, 2])],
                      dim=1)
    return table[:, :embed_dim].float().reshape(*positions.shape[:-1], embed_dim).to(positions.device)


def sincos_pos_embed_3d(embed_dim: int, grid: Sequence[int], uniform_power: bool = False) -> torch.Tensor:
    """Fixed 3D sine-cosine table for a token grid ``(T', H', W')`` -> ``[T'*H'*W', embed_dim]`` (float32).

    Channel layout as V-JEPA 1: ``[depth (E/2) | height (E/4) | width (E/4)]``, each ``[sin | cos]``; with
    ``uniform_power`` every axis gets ``2*ceil(E/6)`` channels and the result is cut to ``E``. Rows follow the
    token raster order (t, h, w), so the table of any grid is exact, never interpolated.
    """
    t, h, w = (int(g) for g in grid)
    d_dim, h_dim, w_dim = _sincos_dims(embed_dim, uniform_power)
    gd, gh, gw = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    table = torch.cat(
        [_sincos_1d(d_dim, gd.reshape(-1)), _sincos_1d(h_dim, gh.reshape(-1)), _sincos_1d(w_dim, gw.reshape(-1))],
        dim=1,
    )
    return table[:, :embed_dim].float()


def token_positions(grid: Sequence[int], idx: Optional[torch.Tensor] = None, device=None,
                    depth_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(t, h, w) coordinates of tokens as float32.

    ``idx`` None -> all tokens ``[1, N, 3]``; ``idx [B, K]`` (token indices in raster order) -> ``[B, K, 3]``.
    ``depth_positions [B, T']`` (e.g. :func:`slice_token_positions`) replaces the integer depth coordinate ``t``
    of every token by the position of its slices in the full volume (fractional; result ``[B, K, 3]``).
    """
    _, h, w = (int(g) for g in grid)
    if idx is None:
        idx = torch.arange(int(grid[0]) * h * w, device=device)[None]
    hw = h * w
    pos = torch.stack([idx // hw, (idx % hw) // w, idx % w], dim=-1).float()
    if depth_positions is None:
        return pos
    depth = torch.as_tensor(depth_positions, dtype=torch.float32, device=pos.device)
    if depth.ndim != 2 or depth.shape[1] != int(grid[0]):
        raise ValueError(f"depth_positions must be [B, T'={int(grid[0])}], got {tuple(depth.shape)}")
    b = max(depth.shape[0], pos.shape[0])
    t_idx = (idx // hw).long().expand(b, -1)
    pos = pos.expand(b, -1, -1).clone()
    pos[..., 0] = depth.expand(b, -1).gather(1, t_idx)
    return pos


def slice_token_positions(slice_indices, tubelet_size: int) -> torch.Tensor:
    """Depth positions ``[B, T']`` of the tokens of depth-subsampled volumes, in the full volume's token units.

    ``slice_indices [B, d]`` (or ``[d]``): the kept slices of each volume (``DepthSubsampled`` records them in the
    meta). A token covers ``tubelet_size`` consecutive kept slices; its position is the mean of their indices,
    shifted and scaled so that the full volume (indices ``0..D-1``) gets the integer positions ``0..D/k-1`` it has
    without this option: a subsampled training volume and the full volume then place each B-scan at the same
    depth position (RoPE takes fractional positions; the sin-cos table is evaluated at them).
    """
    idx = torch.as_tensor(slice_indices, dtype=torch.float64)
    if idx.ndim == 1:
        idx = idx[None]
    if idx.ndim != 2:
        raise ValueError(f"slice_indices must be [B, d] or [d], got shape {tuple(idx.shape)}")
    k = int(tubelet_size)
    n = idx.shape[1] // k
    if n < 1:
        raise ValueError(f"{idx.shape[1]} slice indices are fewer than one tubelet of {k}")
    mean = idx[:, : n * k].reshape(idx.shape[0], n, k).mean(-1)
    return ((mean - (k - 1) / 2.0) / k).float()


def interpolate_rope_positions(pos: torch.Tensor, grid: Sequence[int], pretrained_grid: int = 16) -> torch.Tensor:
    """V-JEPA 2.1's ``interpolate_rope``: height/width positions ``pos [..., 3]`` of ``grid`` rescaled by
    ``(G - 1) / (H' - 1)`` and ``(G - 1) / (W' - 1)`` (``G = pretrained_grid``; a single row/column maps to 0)."""
    g = float(int(pretrained_grid) - 1)
    scale = [1.0] + [g / (n - 1) if n > 1 else 0.0 for n in (int(grid[1]), int(grid[2]))]
    return pos * torch.tensor(scale, device=pos.device, dtype=pos.dtype)


def rope_axis_dim(head_dim: int) -> int:
    """Channels of one head rotated per axis (V-JEPA 2): ``2 * ((head_dim // 3) // 2)``."""
    return 2 * ((head_dim // 3) // 2)


#: hierarchical layers of the public V-JEPA 2.1 encoders by depth (ViT-B 12, L 24, g 40, G 48)
VJEPA21_HIERARCHICAL_LAYERS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39), 48: (11, 23, 37, 47)}


def default_hierarchical_layers(depth: int) -> Tuple[int, ...]:
    """V-JEPA 2.1's four hierarchical layers for its depths; other depths: the last block of each quarter."""
    if depth in VJEPA21_HIERARCHICAL_LAYERS:
        return VJEPA21_HIERARCHICAL_LAYERS[depth]
    if depth < 4:
        raise ValueError(f"hierarchical norms need depth >= 4 (or explicit hierarchical_layers), got {depth}")
    return tuple(int(round(depth * (i + 1) / 4)) - 1 for i in range(4))


def rope_tables(
    pos: torch.Tensor, head_dim: int, variant: str = "vjepa2"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of 3D RoPE for positions ``pos [B|1, N, 3]`` -> two ``[B|1, 1, N, 3*a]`` tensors.

    ``a = rope_axis_dim(head_dim)``; channels ``[0, a)`` encode depth, ``[a, 2a)`` height, ``[2a, 3a)`` width.
    Angles per axis: ``pos * omega_j``, ``omega_j = 1 / 10000**(j / (a/2))``, ``j < a/2``; ``"vjepa2"`` lays
    them out tiled ``[f, f]`` (as the public V-JEPA 2 code), ``"rotary"`` interleaved ``[f0, f0, f1, f1, ...]``.
    Computed in float32 whatever the autocast dtype.
    """
    if variant not in ROPE_VARIANTS:
        raise ValueError(f"rope_variant must be one of {ROPE_VARIANTS}, got {variant!r}")
    a = rope_axis_dim(head_dim)
    omega = torch.arange(a // 2, dtype=torch.float32, device=pos.device) / (a / 2.0)
    omega = 1.0 / 10000**omega
    freqs = []
    for axis in range(3):
        f = pos[..., axis].float()[..., None] * omega  # [B, N, a/2]
        f = torch.cat([f, f], dim=-1) if variant == "vjepa2" else f.repeat_interleave(2, dim=-1)
        freqs.append(f)
    freq = torch.cat(freqs, dim=-1).unsqueeze(-3)  # [B, 1, N, 3a]
    return freq.cos(), freq.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, N, head_dim]``: ``x*cos + swap(x)*sin`` on the first ``cos.shape[-1]`` channels.

    ``swap`` maps each adjacent pair ``(x0, x1) -> (-x1, x0)``; remaining channels pass unchanged.
    """
    r = cos.shape[-1]
    if r == 0:
        return x
    xr = x[..., :r].float()
    x1, x2 = xr.unflatten(-1, (-1, 2)).unbind(-1)
    swapped = torch.stack((-x2, x1), dim=-1).flatten(-2)
    out = (xr * cos + swapped * sin).to(x.dtype)
    return torch.cat([out, x[..., r:]], dim=-1)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [B, N, E]``, ``idx [B, K]`` (long) -> ``[B, K, E]`` (tokens at the given indices)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------------------------
class PatchEmbed3D(nn.Module):
    """Tubelet embedding: ``[B, C, T, H, W] -> [B, T'*H'*W', E]``, the strided ``Conv3d`` named ``proj``.

    The weights live in ``proj`` (the public layout ``[E, C, t, p, p]``), but the embedding is computed as what
    that convolution is when its stride equals its kernel: the input cut into non-overlapping tubelets
    (:meth:`patches`, a reshape) times the flattened kernel (:meth:`embed`, one matmul). The two give the same
    numbers (to float rounding); the matmul is faster where it matters: under bfloat16 autocast on CPU the
    backward of the convolution took about 9x its float32 time (oneDNN), the matmul's takes less than its float32
    time; and a masked encoder embeds only the kept tubelets (:meth:`embed` after gathering) instead of all of
    them. Input sizes must be multiples of the kernel (the encoder checks this in ``grid_size``).
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel: Tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W] -> [B, T'*H'*W', C*t*p*p]``: the tubelets in token order (T', then H', then W'),
        each flattened in the kernel's ``(C, t, p, p)`` order."""
        b, c, t, h, w = x.shape
        kt, kh, kw = self.proj.kernel_size
        if t % kt or h % kh or w % kw:
            raise ValueError(f"input size (T={t}, H={h}, W={w}) is not a multiple of the patch ({kt}, {kh}, {kw})")
        x = x.reshape(b, c, t // kt, kt, h // kh, kh, w // kw, kw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (t // kt) * (h // kh) * (w // kw), c * kt * kh * kw)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, K, C*t*p*p]`` tubelets (:meth:`patches`, any subset) -> ``[B, K, E]``."""
        w = self.proj.weight
        return F.linear(patches, w.reshape(w.shape[0], -1), self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.patches(x))


class MLP(nn.Module):
    """Two-layer GELU MLP named ``fc1``/``fc2`` (V-JEPA names; MONAI's ``MLPBlock`` uses other names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with optional 3D RoPE on queries and keys.

    ``use_sdpa=True`` uses ``F.scaled_dot_product_attention``; ``False`` the explicit softmax(QK^T/sqrt(d))V
    (same result, kept as a reference path).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_sdpa: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.use_sdpa = use_sdpa

    def forward(
        self, x: torch.Tensor, rope_cos: Optional[torch.Tensor] = None, rope_sin: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``x [B, N, dim]``; ``rope_cos/sin [B|1, 1, N, r]`` from :func:`rope_tables` or None -> ``[B, N, dim]``."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        if rope_cos is not None and rope_sin is not None:
            q = apply_rope(q, rope_cos, rope_sin)
            k = apply_rope(k, rope_cos, rope_sin)
        drop = self.attn_drop if self.training else 0.0
        if self.use_sdpa:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = F.dropout(attn, drop, self.training) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_sdpa: bool = True,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, use_sdpa)
        if drop_path > 0:
            # imported here: importing MONAI costs seconds, and stochastic depth is off by default (as V-JEPA 2)
            from monai.networks.layers import DropPath

            self.drop_path = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)

    def forward(
        self, x: torch.Tensor, rope_cos: Optional[torch.Tensor] = None, rope_sin: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope_cos, rope_sin))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module, std: float = 0.02) -> None:
    """V-JEPA initialisation: truncated normal(std) for Linear/Conv weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv3d, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def rescale_blocks(blocks: nn.ModuleList) -> None:
    """Divide each block's residual output projections by ``sqrt(2 * layer)`` (layer counted from 1)."""
    with torch.no_grad():
        for layer_id, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _triple(v: Union[int, Sequence[int]]) -> Tuple[int, int, int]:
    return (int(v),) * 3 if isinstance(v, int) else (int(v[0]), int(v[1]), int(v[2]))


def check_pos_options(pos_embed: str, rope_variant: str) -> None:
    """Raise a clear ``ValueError`` for an unknown positional-encoding type or RoPE variant."""
    if pos_embed not in POS_EMBED_TYPES:
        raise ValueError(f"pos_embed must be one of {POS_EMBED_TYPES}, got {pos_embed!r}")
    if rope_variant not in ROPE_VARIANTS:
        raise ValueError(f"rope_variant must be one of {ROPE_VARIANTS}, got {rope_variant!r}")


@records_init_args
class VisionTransformer3D(nn.Module):
    """3D ViT encoder: tubelet embedding, sincos or RoPE positions, pre-norm blocks, final ``norm``.

    Args:
        in_chans: input channels C.
        img_size: nominal volume size ``(T, H, W)`` in voxels (int = cube); sets the stored sincos table; any
            other size divisible by the patch works at run time.
        patch_size: spatial patch ``p`` or ``(p_h, p_w)``.
        tubelet_size: patch extent along T (slices).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer shape.
        pos_embed: ``"rope"`` (V-JEPA 2) or ``"sincos"`` (V-JEPA 1, buffer ``pos_embed [1, N, E]``).
        rope_variant: ``"vjepa2"`` (public V-JEPA 2 numerics) or ``"rotary"`` (exact rotation).
        use_sdpa: fused attention; False uses the explicit reference attention.
        out_layers: block indices whose (normed) outputs ``forward`` returns as a list instead of one tensor.
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (0 by default, as V-JEPA 2).
        init_std: std of the truncated-normal initialisation.
        use_activation_checkpointing: recompute blocks in backward (training only) to save memory.
        norm_eps: LayerNorm epsilon (1e-6 as V-JEPA).
        uniform_power: sincos channel split (see :func:`sincos_pos_embed_3d`).
        interpolate_rope: V-JEPA 2.1: rescale RoPE height/width positions to ``rope_pretrained_grid`` tokens
            (a grid of one row/column keeps position 0).
        rope_pretrained_grid: the pretrained grid side for ``interpolate_rope`` (16: 256 px at patch 16).
        modality_embedding: V-JEPA 2.1 learned ``video_mod_embed`` / ``img_mod_embed`` ``[1, 1, E]``.
        img_temporal_dim_size: V-JEPA 2.1: inputs with this many slices (1) go through ``patch_embed_img``
            (tubelet 1) and get ``img_mod_embed``; None: no image branch.
        hierarchical_norms: V-JEPA 2.1: ``norms_block`` (one LayerNorm per hierarchical layer) instead of
            ``norm``; the output is ``norms_block[-1]`` of the last block.
        hierarchical_layers: block indices of the hierarchical outputs (default
            :func:`default_hierarchical_layers`; the last one must be the last block).
    """

    def __init__(
        self,
        in_chans: int = 1,
        img_size: Union[int, Sequence[int]] = (16, 64, 64),
        patch_size: Union[int, Sequence[int]] = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_embed: str = "rope",
        rope_variant: str = "vjepa2",
        use_sdpa: bool = True,
        out_layers: Optional[Sequence[int]] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_std: float = 0.02,
        use_activation_checkpointing: bool = False,
        norm_eps: float = 1e-6,
        uniform_power: bool = False,
        interpolate_rope: bool = False,
        rope_pretrained_grid: int = 16,
        modality_embedding: bool = False,
        img_temporal_dim_size: Optional[int] = None,
        hierarchical_norms: bool = False,
        hierarchical_layers: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        check_pos_options(pos_embed, rope_variant)
        if interpolate_rope and pos_embed != "rope":
            raise ValueError("interpolate_rope needs pos_embed='rope'")
        self.in_chans = in_chans
        self.img_size = _triple(img_size)
        self.patch_hw = _pair(patch_size)
        self.patch_size = patch_size if isinstance(patch_size, int) else self.patch_hw
        self.tubelet_size = int(tubelet_size)
        self.img_temporal_dim_size = None if img_temporal_dim_size is None else int(img_temporal_dim_size)
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.pos_embed_type = pos_embed
        self.use_rope = pos_embed == "rope"
        self.rope_variant = rope_variant
        self.uniform_power = uniform_power
        self.out_layers = list(out_layers) if out_layers is not None else None
        self.use_activation_checkpointing = use_activation_checkpointing

        self.patch_embed = PatchEmbed3D(in_chans, embed_dim, (self.tubelet_size, *self.patch_hw))
        self.native_grid = self.grid_size(*self.img_size)
        if self.use_rope:
            self.pos_embed = None
        else:
            table = sincos_pos_embed_3d(embed_dim, self.native_grid, uniform_power)
            self.register_buffer("pos_embed", table[None])
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], use_sdpa, norm_eps)
                for i in range(depth)
            ]
        )
        self.interpolate_rope = bool(interpolate_rope)
        self.rope_pretrained_grid = int(rope_pretrained_grid)
        if self.img_temporal_dim_size is not None:
            self.patch_embed_img = PatchEmbed3D(in_chans, embed_dim, (1, *self.patch_hw))
        else:
            self.patch_embed_img = None
        self.hierarchical_norms = bool(hierarchical_norms)
        if self.hierarchical_norms:
            layers = tuple(int(i) for i in (hierarchical_layers if hierarchical_layers is not None
                                             else default_hierarchical_layers(depth)))
            if not layers or layers[-1] != depth - 1 or any(i < 0 or i >= depth for i in layers) or \
                    list(layers) != sorted(set(layers)):
                raise ValueError(f"hierarchical_layers must be increasing block indices ending at the last block "
                                 f"{depth - 1}, got {list(layers)}")
            self.hierarchical_layers = layers
            self.norms_block = nn.ModuleList([nn.LayerNorm(embed_dim, eps=norm_eps) for _ in layers])
            if self.out_layers is not None and any(i not in layers for i in self.out_layers):
                raise ValueError(f"out_layers {self.out_layers} must be among hierarchical_layers {list(layers)}")
        else:
            self.hierarchical_layers = ()
            self.norms_block = None
            self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

        self.init_std = init_std
        self.apply(lambda m: init_vit_weights(m, init_std))
        rescale_blocks(self.blocks)
        self.modality_embedding = bool(modality_embedding)
        if self.modality_embedding:
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.normal_(self.video_mod_embed, std=1e-6)
            nn.init.normal_(self.img_mod_embed, std=1e-6)

    @property
    def norm(self) -> nn.LayerNorm:
        """The final LayerNorm: ``norm``, or ``norms_block[-1]`` with hierarchical norms (not stored twice)."""
        if "norm" in self._modules:
            return self._modules["norm"]
        return self._modules["norms_block"][-1]

    @property
    def use_sdpa(self) -> bool:
        return all(blk.attn.use_sdpa for blk in self.blocks)

    @use_sdpa.setter
    def use_sdpa(self, value: bool) -> None:
        for blk in self.blocks:
            blk.attn.use_sdpa = bool(value)

    def is_image_input(self, t: int) -> bool:
        """True when ``t`` slices go through the single-frame branch ``patch_embed_img`` (V-JEPA 2.1)."""
        return self.img_temporal_dim_size is not None and int(t) == self.img_temporal_dim_size

    def grid_size(self, t: int, h: int, w: int) -> Grid:
        """Token grid ``(T', H', W')`` of a ``(t, h, w)`` volume; sizes must be multiples of the patch."""
        kt, kh, kw = (1 if self.is_image_input(t) else self.tubelet_size), *self.patch_hw
        if t % kt or h % kh or w % kw or t < kt or h < kh or w < kw:
            raise ValueError(
                f"input size (T={t}, H={h}, W={w}) must be positive multiples of the patch ({kt}, {kh}, {kw})"
            )
        return (t // kt, h // kh, w // kw)

    def pos_table_is_exact(self) -> bool:
        """Whether the stored table is the exact sin-cos table of the nominal grid (as built; a loaded table may be
        another grid's table interpolated to it, or learned). Cached per buffer version."""
        key = (self.pos_embed.data_ptr(), self.pos_embed._version, str(self.pos_embed.device))
        if getattr(self, "_exact_key", None) != key:
            exact = sincos_pos_embed_3d(self.embed_dim, self.native_grid, self.uniform_power)[None]
            self._exact = bool(torch.allclose(self.pos_embed.detach().float().cpu(), exact, atol=1e-5))
            self._exact_key = key
        return self._exact

    def interpolate_pos_encoding(self, grid: Sequence[int]) -> torch.Tensor:
        """sincos table for ``grid`` ``[1, N, E]``, one rule for every grid so that training and inference at
        different depths encode positions alike: the stored buffer at the nominal grid; elsewhere the exact
        table when the buffer is exact, else the buffer resampled trilinearly (``align_corners``) to ``grid``."""
        if self.pos_embed is None:
            raise RuntimeError("this encoder uses RoPE and has no additive position embedding")
        grid = tuple(int(g) for g in grid)
        if grid == tuple(self.native_grid):
            return self.pos_embed
        if self.pos_table_is_exact():
            table = sincos_pos_embed_3d(self.embed_dim, grid, self.uniform_power)[None]
            return table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        from oct_foundation.networks.pretrained import interpolate_pos_table

        return interpolate_pos_table(self.pos_embed, self.native_grid, grid)

    def rope(self, grid: Sequence[int], idx: Optional[torch.Tensor], device,
             depth_positions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for tokens ``idx [B, K]`` (None: all tokens) of ``grid`` (``depth_positions``: see
        :func:`token_positions`)."""
        pos = token_positions(grid, idx, device, depth_positions)
        if self.interpolate_rope:
            pos = interpolate_rope_positions(pos, grid, self.rope_pretrained_grid)
        return rope_tables(pos, self.head_dim, self.rope_variant)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def _norm_at(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.hierarchical_norms:
            return self.norms_block[self.hierarchical_layers.index(i)](x)
        return self.norm(x)

    def forward(
        self, x: torch.Tensor, masks: Optional[torch.Tensor] = None, depth_positions: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Encode ``x [B, C, T, H, W]`` -> tokens ``[B, N, E]`` (or ``[B, K, E]`` with ``masks``).

        ``masks [B, K]`` (long): indices of the tokens to keep (context); only those pass through the blocks and
        their positions follow the kept indices. ``depth_positions [B, T']``: depth positions of the token rows
        (:func:`slice_token_positions` of the kept slices) instead of ``0..T'-1``. With ``out_layers`` returns the
        list of normed block outputs.
        """
        return self._run(x, masks, hierarchical=False, depth_positions=depth_positions)

    def hierarchical_outputs(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None,
                             depth_positions: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Normed outputs ``[B, N|K, E]`` of the hierarchical layers (``norms_block``), shallowest first.

        V-JEPA 2.1 concatenates them along the channels for its deep self-supervision; the last equals
        ``forward``'s output.
        """
        if not self.hierarchical_norms:
            raise RuntimeError("hierarchical_outputs needs hierarchical_norms=True")
        return self._run(x, masks, hierarchical=True, depth_positions=depth_positions)

    def _run(self, x: torch.Tensor, masks: Optional[torch.Tensor], hierarchical: bool,
             depth_positions: Optional[torch.Tensor] = None):
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, T, H, W], got shape {tuple(x.shape)}")
        image = self.is_image_input(x.shape[2])
        grid = self.grid_size(x.shape[2], x.shape[3], x.shape[4])
        embedder = self.patch_embed_img if image else self.patch_embed
        if masks is not None and (masks.ndim != 2 or masks.shape[0] != x.shape[0]):
            raise ValueError(f"masks must be [B={x.shape[0]}, K] token indices, got {tuple(masks.shape)}")
        # the kept tubelets are gathered before the embedding matmul (a per-token map: same tokens, less work)
        patches = embedder.patches(x)
        x = embedder.embed(patches if masks is None else gather_tokens(patches, masks))
        if self.modality_embedding:
            x = x + (self.img_mod_embed if image else self.video_mod_embed).to(x.dtype)
        if self.pos_embed is not None:
            if depth_positions is not None:
                if not self.pos_table_is_exact():
                    raise ValueError("depth positions need RoPE or the exact sin-cos table; this encoder's table "
                                     "was loaded from another grid (a fractional position has no entry in it)")
                pos = token_positions(grid, None, x.device, depth_positions)
                table = sincos_pos_embed_at(self.embed_dim, pos, self.uniform_power)
            else:
                table = self.interpolate_pos_encoding(grid)
            if masks is not None:
                table = gather_tokens(table.expand(x.shape[0], -1, -1), masks)
            x = x + table.to(x.dtype)
        cos: Optional[torch.Tensor] = None
        sin: Optional[torch.Tensor] = None
        if self.use_rope:
            cos, sin = self.rope(grid, masks, x.device, depth_positions)
        outs: List[torch.Tensor] = []
        hier: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if self.use_activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, cos, sin, use_reentrant=False)
            else:
                x = blk(x, cos, sin)
            if hierarchical and i in self.hierarchical_layers:
                hier.append(self._norm_at(i, x))
            elif not hierarchical and self.out_layers is not None and i in self.out_layers:
                outs.append(self._norm_at(i, x))
        if hierarchical:
            return hier
        if self.out_layers is not None:
            return outs
        return self._final_norm(x)
