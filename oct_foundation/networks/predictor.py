"""V-JEPA predictor: a narrow ViT that predicts target-token features from context tokens.

Context tokens (encoder output) are projected to ``predictor_embed_dim``; one learned mask token per target
position is appended; both carry their grid positions (RoPE angles from their token indices, or the sincos table
gathered at their indices, as the encoder); the blocks attend over the joint set and the target outputs are
projected back to the encoder width. Parameter names follow V-JEPA 2's predictor (``predictor_embed``,
``mask_tokens.i``, ``predictor_blocks.i.*``, ``predictor_norm``, ``predictor_proj``). V-JEPA 2 sorts the joint
sequence by position before the blocks; attention without a mask is permutation-equivariant, so keeping
``[context | targets]`` order gives the same result without the sort. V-JEPA 2's predictor splits token indices
into (t, h, w) with its square training grid (``img_size // patch``) whatever the input; here the actual grid is
used, which is the same on square inputs of the training size and correct on any other grid.

V-JEPA 2.1 predictor (facebookresearch/vjepa2 ``app/vjepa_2_1/models/predictor.py``, built by
``src/hub/backbones.py``), enabled by the options ``num_levels``, ``out_embed_dim``, ``context_proj``,
``modality_embedding`` and ``interpolate_rope``:

* input: the concatenation of the encoder's last ``L = num_levels`` hierarchical outputs ``[B, Nc, L*E]``;
  ``predictor_embed`` is ``Linear(E, P)`` for ``L = 1`` and ``Sequential(Linear(L*E, E), GELU, Linear(E, P))``
  (keys ``predictor_embed.0.*``, ``predictor_embed.2.*``) for ``L > 1``;
* ``video_mod_embed`` / ``img_mod_embed`` ``[1, 1, P]`` added to every token (context and mask tokens) before the
  blocks, the image one for single-frame inputs;
* RoPE as the 2.1 encoder (``rope_variant="rotary"``; ``interpolate_rope`` rescales height/width positions to the
  pretrained 16 x 16 grid, as the 2.1 training code builds the predictor);
* ``predictor_proj`` ``Linear(P, L*O)`` (``O = out_embed_dim``, default E; the distilled ViT-B/L files predict
  their ViT-G teacher's 1664 channels) on the target outputs and, with ``context_proj``, a separate
  ``predictor_proj_context`` ``Linear(P, L*O)`` on the context outputs (2.1's ``return_all_tokens``, used by the
  context / dense loss).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .vit3d import (
    Block,
    check_pos_options,
    gather_tokens,
    init_vit_weights,
    interpolate_rope_positions,
    rescale_blocks,
    rope_tables,
    sincos_pos_embed_3d,
    sincos_pos_embed_at,
    token_positions,
)

__all__ = ["Predictor3D"]


class Predictor3D(nn.Module):
    """Predict encoder features at target positions.

    Args:
        embed_dim: encoder width E (input and output).
        predictor_embed_dim: predictor width.
        depth, num_heads, mlp_ratio, qkv_bias: predictor transformer shape.
        pos_embed: ``"rope"`` or ``"sincos"`` (use the encoder's choice).
        rope_variant: ``"vjepa2"`` or ``"rotary"`` (see :mod:`oct_foundation.networks.vit3d`).
        use_sdpa: fused attention.
        num_mask_tokens: learned mask tokens (one per mask configuration, chosen by ``mask_index``).
        zero_init_mask_tokens: start the mask tokens at zero (V-JEPA default) instead of trunc-normal.
        init_std, drop_path_rate, use_activation_checkpointing, norm_eps, uniform_power: as the encoder.
        num_levels: V-JEPA 2.1: hierarchical levels ``L`` of the input (``[B, Nc, L*E]``) and of the output.
        out_embed_dim: width ``O`` of one output level (default ``embed_dim``); outputs are ``[B, N, L*O]``.
        context_proj: V-JEPA 2.1: a separate ``predictor_proj_context`` for the outputs at the context tokens.
        modality_embedding: V-JEPA 2.1: learned ``video_mod_embed`` / ``img_mod_embed`` added to every token.
        interpolate_rope, rope_pretrained_grid: V-JEPA 2.1: RoPE height/width positions rescaled to
            ``rope_pretrained_grid`` tokens (as :class:`~oct_foundation.networks.vit3d.VisionTransformer3D`).
    """

    def __init__(
        self,
        embed_dim: int,
        predictor_embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_embed: str = "rope",
        rope_variant: str = "vjepa2",
        use_sdpa: bool = True,
        num_mask_tokens: int = 1,
        zero_init_mask_tokens: bool = True,
        init_std: float = 0.02,
        drop_path_rate: float = 0.0,
        use_activation_checkpointing: bool = False,
        norm_eps: float = 1e-6,
        uniform_power: bool = False,
        num_levels: int = 1,
        out_embed_dim: Optional[int] = None,
        context_proj: bool = False,
        modality_embedding: bool = False,
        interpolate_rope: bool = False,
        rope_pretrained_grid: int = 16,
    ):
        super().__init__()
        check_pos_options(pos_embed, rope_variant)
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        if int(num_levels) < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if interpolate_rope and pos_embed != "rope":
            raise ValueError("interpolate_rope needs pos_embed='rope'")
        self.embed_dim = embed_dim
        self.predictor_embed_dim = predictor_embed_dim
        self.num_heads = num_heads
        self.head_dim = predictor_embed_dim // num_heads
        self.use_rope = pos_embed == "rope"
        self.rope_variant = rope_variant
        self.uniform_power = uniform_power
        self.use_activation_checkpointing = use_activation_checkpointing
        self.num_levels = int(num_levels)
        self.out_embed_dim = int(embed_dim if out_embed_dim is None else out_embed_dim)
        self.interpolate_rope = bool(interpolate_rope)
        self.rope_pretrained_grid = int(rope_pretrained_grid)
        self.modality_embedding = bool(modality_embedding)

        if self.num_levels == 1:
            self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        else:  # V-JEPA 2.1: the concatenated hierarchical outputs through a two-layer MLP
            self.predictor_embed = nn.Sequential(
                nn.Linear(self.num_levels * embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, predictor_embed_dim)
            )
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, 1, predictor_embed_dim)) for _ in range(num_mask_tokens)]
        )
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.predictor_blocks = nn.ModuleList(
            [
                Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, 0.0, 0.0, dpr[i], use_sdpa, norm_eps)
                for i in range(depth)
            ]
        )
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        out_dim = self.num_levels * self.out_embed_dim
        self.predictor_proj = nn.Linear(predictor_embed_dim, out_dim)
        self.predictor_proj_context = nn.Linear(predictor_embed_dim, out_dim) if context_proj else None
        if self.modality_embedding:
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))

        self.apply(lambda m: init_vit_weights(m, init_std))
        rescale_blocks(self.predictor_blocks)
        if self.modality_embedding:
            nn.init.normal_(self.video_mod_embed, std=1e-6)
            nn.init.normal_(self.img_mod_embed, std=1e-6)
        if not zero_init_mask_tokens:
            for token in self.mask_tokens:
                nn.init.trunc_normal_(token, std=init_std, a=-2 * init_std, b=2 * init_std)

    def forward(
        self,
        ctx_tokens: torch.Tensor,
        ctx_idx: torch.Tensor,
        tgt_idx: torch.Tensor,
        grid: Sequence[int],
        mask_index: int = 0,
        return_context: bool = False,
        depth_positions: Optional[torch.Tensor] = None,
        modality: str = "video",
    ) -> torch.Tensor:
        """Predict ``[B, Nt, L*O]`` target features (``return_context``: ``[B, Nc + Nt, L*O]``, context first).

        Args:
            ctx_tokens: encoder output at the context positions ``[B, Nc, L*E]`` (``L = num_levels``; the
                concatenated hierarchical outputs for ``L > 1``).
            ctx_idx: token indices of the context ``[B, Nc]`` (long, raster order of ``grid``).
            tgt_idx: token indices to predict ``[B, Nt]``.
            grid: token grid ``(T', H', W')``.
            mask_index: which learned mask token to use (modulo ``num_mask_tokens``).
            return_context: also return the predictor's outputs at the context positions (V-JEPA 2.1's dense
                predictive loss on all tokens), in the order ``[ctx_idx, tgt_idx]``.
            depth_positions: ``[B, T']`` depth positions of the token rows (the encoder's, see
                :func:`~oct_foundation.networks.vit3d.slice_token_positions`) instead of ``0..T'-1``.
            modality: ``"video"`` or ``"image"`` (single-frame input): which modality embedding is added.

        With ``context_proj`` the context outputs go through ``predictor_proj_context``, else through
        ``predictor_proj`` like the targets.
        """
        b, nc, _ = ctx_tokens.shape
        if ctx_idx.shape != (b, nc) or tgt_idx.ndim != 2 or tgt_idx.shape[0] != b:
            raise ValueError(
                f"ctx_idx must be [B={b}, Nc={nc}] and tgt_idx [B, Nt], got {tuple(ctx_idx.shape)}, "
                f"{tuple(tgt_idx.shape)}"
            )
        if modality not in ("video", "image"):
            raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
        in_dim = self.num_levels * self.embed_dim
        if ctx_tokens.shape[-1] != in_dim:
            raise ValueError(f"ctx_tokens must have {in_dim} channels ({self.num_levels} level(s) of "
                             f"{self.embed_dim}), got {ctx_tokens.shape[-1]}")
        nt = tgt_idx.shape[1]
        x = self.predictor_embed(ctx_tokens)
        token = self.mask_tokens[mask_index % len(self.mask_tokens)]
        pred = token.expand(b, nt, -1).to(x.dtype)
        if not self.use_rope:
            if depth_positions is not None:
                pos = token_positions(grid, None, x.device, depth_positions)
                table = sincos_pos_embed_at(self.predictor_embed_dim, pos, self.uniform_power).expand(b, -1, -1)
            else:
                table = sincos_pos_embed_3d(self.predictor_embed_dim, grid, self.uniform_power)
                table = table[None].to(device=x.device).expand(b, -1, -1)
            x = x + gather_tokens(table, ctx_idx)
            pred = pred + gather_tokens(table, tgt_idx)
        x = torch.cat([x, pred], dim=1)
        if self.modality_embedding:
            x = x + (self.img_mod_embed if modality == "image" else self.video_mod_embed).to(x.dtype)
        cos: Optional[torch.Tensor] = None
        sin: Optional[torch.Tensor] = None
        if self.use_rope:
            idx = torch.cat([ctx_idx, tgt_idx], dim=1)
            pos = token_positions(grid, idx, depth_positions=depth_positions)
            if self.interpolate_rope:
                pos = interpolate_rope_positions(pos, grid, self.rope_pretrained_grid)
            cos, sin = rope_tables(pos, self.head_dim, self.rope_variant)
        for blk in self.predictor_blocks:
            if self.use_activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, cos, sin, use_reentrant=False)
            else:
                x = blk(x, cos, sin)
        x = self.predictor_norm(x if return_context else x[:, nc:])
        if return_context and self.predictor_proj_context is not None:
            return torch.cat([self.predictor_proj_context(x[:, :nc]), self.predictor_proj(x[:, nc:])], dim=1)
        return self.predictor_proj(x)
