"""V-JEPA on 3D OCT volumes: context encoder, EMA target encoder and predictor.

Training step (see :meth:`VJEPA3D.jepa_forward`): the target encoder sees every token of ``x`` (no gradient),
its output is layer-normed over the feature dimension and gathered at the target indices; the context encoder
sees only the context tokens; the predictor maps context to predictions at the target positions; the loss is the
mean absolute error (V-JEPA 2's ``loss_exp = 1``). After each optimiser step call :meth:`ema_update`.

V-JEPA 2.1 (``predictor_kwargs`` with ``num_levels``, ``context_proj``; facebookresearch/vjepa2
``app/vjepa_2_1/train.py``): deep self-supervision feeds the predictor the concatenation of the context
encoder's last ``L`` hierarchical outputs (each through its ``norms_block``) and predicts the target encoder's
hierarchical outputs, each layer-normed on its own (no affine) and concatenated (``[B, N, L*E]``); the dense
predictive loss adds the predictor's outputs at the context tokens (``predictor_proj_context``) against the
targets there, weighted by ``context_loss_weight``: ``loss = mean_m |pred_t - target_t| + lambda * mean_m
|pred_c - target_c|`` (means over the mask configurations ``m``).
"""
from __future__ import annotations

import copy
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .model_files import records_init_args
from .predictor import Predictor3D
from .vit3d import VisionTransformer3D, gather_tokens

__all__ = ["VJEPA3D", "JEPAObjective"]

TensorOrList = Union[torch.Tensor, List[torch.Tensor]]


@records_init_args
class VJEPA3D(nn.Module):
    """Context encoder ``encoder``, EMA copy ``target_encoder`` (frozen) and ``predictor``.

    Encoder arguments are those of :class:`VisionTransformer3D`; ``predictor_*`` those of :class:`Predictor3D`
    (same ``pos_embed`` and ``rope_variant`` as the encoder). ``num_mask_tokens`` should equal the number of
    mask configurations used in training (V-JEPA: 2, short and long range).
    ``predictor_mlp_ratio`` (default: ``mlp_ratio``) sets the predictor's MLP width on its own (V-JEPA 2's
    predictor is 4 whatever the encoder, e.g. ViT-g's 48/11); ``encoder_kwargs`` passes further
    :class:`VisionTransformer3D` options to both encoders (e.g. the V-JEPA 2.1 ones: ``interpolate_rope``,
    ``modality_embedding``, ``img_temporal_dim_size``, ``hierarchical_norms``). ``dense_loss=True`` makes
    :meth:`jepa_forward` return predictions and targets at the context tokens too (V-JEPA 2.1's dense predictive
    loss on all tokens), so any loss over its outputs covers every token.
    ``predictor_kwargs`` passes further :class:`Predictor3D` options (the V-JEPA 2.1 predictor: ``num_levels``,
    ``out_embed_dim``, ``context_proj``, ``modality_embedding``, ``interpolate_rope``). With ``num_levels = L > 1``
    the predictor reads and predicts the concatenated last ``L`` hierarchical outputs (the encoder needs
    ``hierarchical_norms``). ``context_loss_weight`` (V-JEPA 2.1's ``lambda``; needs ``context_proj``): with the
    dense loss, the context predictions get their own mean absolute error, weighted by it, instead of sharing
    one mean with the targets (see :meth:`jepa_forward` for the outputs).
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
        pos_embed: str = "rope",
        predictor_embed_dim: int = 384,
        predictor_depth: int = 6,
        predictor_num_heads: int = 12,
        use_sdpa: bool = True,
        rope_variant: str = "vjepa2",
        qkv_bias: bool = True,
        num_mask_tokens: int = 2,
        zero_init_mask_tokens: bool = True,
        drop_path_rate: float = 0.0,
        init_std: float = 0.02,
        use_activation_checkpointing: bool = False,
        uniform_power: bool = False,
        predictor_mlp_ratio: Optional[float] = None,
        encoder_kwargs: Optional[Mapping[str, Any]] = None,
        dense_loss: bool = False,
        predictor_kwargs: Optional[Mapping[str, Any]] = None,
        context_loss_weight: Optional[float] = None,
    ):
        super().__init__()
        from oct_foundation.config import parse_bool

        self.dense_loss = parse_bool(dense_loss, "network_def#dense_loss")  # "false" from a command line is False
        enc_extra = dict(encoder_kwargs or {})
        self.encoder = VisionTransformer3D(
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            tubelet_size=tubelet_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            pos_embed=pos_embed,
            rope_variant=rope_variant,
            use_sdpa=use_sdpa,
            drop_path_rate=drop_path_rate,
            init_std=init_std,
            use_activation_checkpointing=use_activation_checkpointing,
            uniform_power=uniform_power,
            **enc_extra,
        )
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)
        self.predictor = Predictor3D(
            embed_dim=embed_dim,
            predictor_embed_dim=predictor_embed_dim,
            depth=predictor_depth,
            num_heads=predictor_num_heads,
            mlp_ratio=mlp_ratio if predictor_mlp_ratio is None else predictor_mlp_ratio,
            qkv_bias=qkv_bias,
            pos_embed=pos_embed,
            rope_variant=rope_variant,
            use_sdpa=use_sdpa,
            num_mask_tokens=num_mask_tokens,
            zero_init_mask_tokens=zero_init_mask_tokens,
            init_std=init_std,
            use_activation_checkpointing=use_activation_checkpointing,
            uniform_power=uniform_power,
            **dict(predictor_kwargs or {}),
        )
        self.embed_dim = embed_dim
        levels = self.predictor.num_levels
        if levels > 1 and (not self.encoder.hierarchical_norms or len(self.encoder.hierarchical_layers) < levels):
            raise ValueError(f"a predictor on {levels} hierarchical levels needs an encoder with hierarchical_norms "
                             f"and at least {levels} hierarchical layers (encoder_kwargs hierarchical_norms=True)")
        self.context_loss_weight = None if context_loss_weight is None else float(context_loss_weight)
        if self.context_loss_weight is not None and self.predictor.predictor_proj_context is None:
            raise ValueError("context_loss_weight needs the predictor's context projection "
                             "(predictor_kwargs context_proj=True)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Context-encoder tokens of ``x [B, C, T, H, W]`` -> ``[B, N, E]``."""
        return self.encoder(x)

    def grid_size(self, t: int, h: int, w: int) -> Tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a ``(t, h, w)`` volume."""
        return self.encoder.grid_size(t, h, w)

    @torch.no_grad()
    def target_features(self, x: torch.Tensor, depth_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Layer-normed target-encoder tokens of all positions ``[B, N, E]`` (no gradient).

        With a predictor on ``L > 1`` hierarchical levels: ``[B, N, L*E]``, the target encoder's last ``L``
        hierarchical outputs, each layer-normed on its own, concatenated (V-JEPA 2.1's deep self-supervision).
        """
        levels = self.predictor.num_levels
        if levels == 1:
            h = self.target_encoder(x, depth_positions=depth_positions)
            return F.layer_norm(h, (h.shape[-1],))
        hier = self.target_encoder.hierarchical_outputs(x, depth_positions=depth_positions)[-levels:]
        return torch.cat([F.layer_norm(h, (h.shape[-1],)) for h in hier], dim=-1)

    def context_features(self, x: torch.Tensor, ctx_idx: torch.Tensor,
                         depth_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Context-encoder output at ``ctx_idx`` as the predictor reads it: ``[B, Nc, E]``, or with ``L > 1``
        predictor levels the concatenated last ``L`` hierarchical outputs ``[B, Nc, L*E]``."""
        levels = self.predictor.num_levels
        if levels == 1:
            return self.encoder(x, masks=ctx_idx, depth_positions=depth_positions)
        hier = self.encoder.hierarchical_outputs(x, masks=ctx_idx, depth_positions=depth_positions)[-levels:]
        return torch.cat(hier, dim=-1)

    def jepa_forward(
        self, x: torch.Tensor, ctx_idx: TensorOrList, tgt_idx: TensorOrList, dense: Optional[bool] = None,
        depth_positions: Optional[torch.Tensor] = None,
    ) -> Tuple[TensorOrList, TensorOrList]:
        """Predictions and targets of one V-JEPA step.

        Args:
            x: volumes ``[B, C, T, H, W]``.
            ctx_idx: context token indices ``[B, Nc]``, or a list of them (one per mask configuration).
            tgt_idx: target token indices ``[B, Nt]``, or a list matching ``ctx_idx``.
            dense: predictions and targets at the context tokens too (``[B, Nc + Nt, E]``, context first);
                default ``self.dense_loss``.
            depth_positions: ``[B, T']`` depth positions of the token rows for the encoders and the predictor
                (:func:`~oct_foundation.networks.vit3d.slice_token_positions` of the kept slices).

        Returns:
            ``(pred [B, Nt, E], target [B, Nt, E])``, or two lists when lists were given; the target encoder runs
            once for all mask configurations. With ``L > 1`` predictor levels the width is ``L*E``.
            With ``context_loss_weight`` and ``dense`` (V-JEPA 2.1's context loss) always two lists: ``pred`` =
            ``[target predictions of mask 0..m-1, context predictions of mask 0..m-1]``, ``target`` the matching
            targets plus one last entry, the weights ``[m + m]`` of the entries' mean absolute errors (``1/m``
            for the targets, ``lambda/m`` for the context), which :meth:`jepa_loss` applies.
        """
        grid = self.encoder.grid_size(x.shape[2], x.shape[3], x.shape[4])
        out_dim = self.predictor.num_levels * self.predictor.out_embed_dim
        h_dim = self.predictor.num_levels * self.embed_dim
        if out_dim != h_dim:
            raise ValueError(
                f"the predictor predicts {out_dim} channels but the target encoder gives {h_dim}: its "
                f"out_embed_dim={self.predictor.out_embed_dim} is another network's width (the distilled "
                f"V-JEPA 2.1 ViT-B/L predictors predict their ViT-G teacher's 1664 channels, which the file does "
                f"not hold); for JEPA training build the predictor with out_embed_dim=None (new projections: presets "
                f"vjepa2_1_vitb_384_jepa, vjepa2_1_vitl_384_jepa)")
        h = self.target_features(x, depth_positions)
        modality = "image" if self.encoder.is_image_input(x.shape[2]) else "video"
        single = isinstance(ctx_idx, torch.Tensor)
        ctx_list = [ctx_idx] if isinstance(ctx_idx, torch.Tensor) else list(ctx_idx)
        tgt_list = [tgt_idx] if isinstance(tgt_idx, torch.Tensor) else list(tgt_idx)
        if len(ctx_list) != len(tgt_list):
            raise ValueError(f"got {len(ctx_list)} context masks but {len(tgt_list)} target masks")
        preds: List[torch.Tensor] = []
        targets: List[torch.Tensor] = []
        dense = self.dense_loss if dense is None else bool(dense)
        for i, (ci, ti) in enumerate(zip(ctx_list, tgt_list)):
            z = self.context_features(x, ci, depth_positions)
            preds.append(self.predictor(z, ci, ti, grid, mask_index=i, return_context=dense,
                                        depth_positions=depth_positions, modality=modality))
            targets.append(gather_tokens(h, torch.cat([ci, ti], dim=1) if dense else ti))
        if dense and self.context_loss_weight is not None:  # V-JEPA 2.1: separate, weighted context loss
            m = len(preds)
            ncs = [ci.shape[1] for ci in ctx_list]
            pred_out = [p[:, nc:] for p, nc in zip(preds, ncs)] + [p[:, :nc] for p, nc in zip(preds, ncs)]
            tgt_out = [t[:, nc:] for t, nc in zip(targets, ncs)] + [t[:, :nc] for t, nc in zip(targets, ncs)]
            weights = torch.tensor([1.0 / m] * m + [self.context_loss_weight / m] * m, device=x.device)
            return pred_out, tgt_out + [weights]
        if single:
            return preds[0], targets[0]
        return preds, targets

    @staticmethod
    def jepa_loss(pred: TensorOrList, target: TensorOrList) -> torch.Tensor:
        """Mean absolute error between predictions and targets (averaged over mask configurations for lists).

        When ``target`` has one entry more than ``pred`` (V-JEPA 2.1's context loss, see :meth:`jepa_forward`),
        that entry holds the weights of the entries' errors and the loss is their weighted sum. Computed in
        float32 also under autocast.
        """
        if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor):
            return (pred.float() - target.float()).abs().mean()
        pred, target = list(pred), list(target)
        losses = torch.stack([(p.float() - t.float()).abs().mean() for p, t in zip(pred, target)])
        if len(target) == len(pred) + 1:
            weights = target[-1].float().to(losses.device)
            if weights.shape != losses.shape:
                raise ValueError(f"{len(pred)} prediction entries but {tuple(weights.shape)} loss weights")
            return (losses * weights).sum()
        if len(target) != len(pred):
            raise ValueError(f"{len(pred)} prediction entries but {len(target)} targets")
        return losses.mean()

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """``target = momentum * target + (1 - momentum) * context`` for every parameter (buffers copied)."""
        t_params = list(self.target_encoder.parameters())
        c_params = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, c_params, alpha=1.0 - momentum)
        for tb, cb in zip(self.target_encoder.buffers(), self.encoder.buffers()):
            tb.copy_(cb)

    def encode(self, x: torch.Tensor, pool: Optional[str] = "mean", target: bool = False) -> torch.Tensor:
        """Embeddings of ``x [B, C, T, H, W]``: ``[B, E]`` with ``pool="mean"``, tokens ``[B, N, E]`` with None.

        ``target=True`` uses the EMA target encoder (V-JEPA evaluates with it) instead of the context encoder.
        """
        tokens = (self.target_encoder if target else self.encoder)(x)
        if pool is None:
            return tokens
        if pool == "mean":
            return tokens.mean(dim=1)
        raise ValueError(f"pool must be 'mean' or None, got {pool!r}")


class JEPAObjective(torch.nn.Module):
    """``forward(x, ctx_idx, tgt_idx) -> (pred, target)``: the JEPA forward as a module ``forward`` so that it can
    be wrapped by ``DistributedDataParallel`` (DDP only synchronises gradients of calls through ``forward``)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x, ctx_idx, tgt_idx, depth_positions=None):
        return self.network.jepa_forward(x, ctx_idx, tgt_idx, depth_positions=depth_positions)
