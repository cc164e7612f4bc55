"""The public V-JEPA 2.1 RoPE attention block, written out for the tests that rebuild the released encoder and
predictor (``test_pretrained_vjepa21``, ``test_vjepa21_predictor``): the reference the package is checked against."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RefBlock(nn.Module):
    """The public block's parameter layout (``norm1``, ``attn.qkv`` / ``proj``, ``norm2``, ``mlp.fc1`` / ``fc2``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)


def rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """2.1 rotation (pairs of channels, ``repeat_interleave``) of ``x [B, h, N, D]`` by positions ``pos [N]`` or
    ``[B, N]``."""
    d = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=x.dtype) / (d / 2.0))
    freq = pos[..., None] * omega
    if pos.ndim == 2:
        freq = freq[:, None]  # [B, 1, N, D/2]: the same positions for every head
    sin, cos = freq.sin().repeat_interleave(2, -1), freq.cos().repeat_interleave(2, -1)
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    return x * cos + turned * sin


def rope_block(blk, x: torch.Tensor, heads: int, positions) -> torch.Tensor:
    """One pre-norm block (``blk.norm1``, ``blk.attn.qkv`` / ``proj``, ``blk.norm2``, ``blk.mlp.fc1`` / ``fc2``) with
    the depth, height and width ``positions`` rotating three equal chunks of each head (the rest unrotated)."""
    b, n, width = x.shape
    hd = width // heads
    a = 2 * ((hd // 3) // 2)
    q, k, v = blk.attn.qkv(blk.norm1(x)).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
    rq, rk = [], []
    for j, pos in enumerate(positions):
        rq.append(rotate(q[..., j * a:(j + 1) * a], pos))
        rk.append(rotate(k[..., j * a:(j + 1) * a], pos))
    q, k = torch.cat(rq + [q[..., 3 * a:]], -1), torch.cat(rk + [k[..., 3 * a:]], -1)
    att = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
    x = x + blk.attn.proj((att @ v).transpose(1, 2).reshape(b, n, width))
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
