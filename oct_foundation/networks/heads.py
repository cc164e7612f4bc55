"""Downstream heads on the 3D ViT encoder: layer segmentation and disease classification.

* :class:`SegmentationNet`: encoder tokens ``[B, N, E]`` -> grid ``[B, E, T', H', W']`` -> a light UNETR-style
  decoder (transposed-conv upsampling stages with residual conv blocks from MONAI) back to the input grid, where
  a conv skip from the input image joins before the output conv. Logits ``[B, num_classes, D, H, W]``, the
  input's size for any D, H, W (padded to the patch grid and cropped back).
* :class:`ClassificationNet`: linear probe on mean-pooled tokens, attentive probe (a learned query
  cross-attending to the tokens, as V-JEPA's attentive probe), frozen or fine-tuned encoder. Logits
  ``[B, num_classes]``.

Pretrained weights go into ``net.encoder`` through :func:`oct_foundation.networks.weights.load_weights`
(``source="model_pt"``, ``"checkpoint"``, ``"vjepa2"`` or ``"random"``).

Both nets are built from flat JSON kwargs (encoder kwargs next to head kwargs) or around a given encoder, expose
``.encoder`` and return a single tensor.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from oct_foundation.networks.freezing import Freeze, set_encoder_trainable
from oct_foundation.networks.model_files import records_init_args
from oct_foundation.networks.vit3d import MLP, VisionTransformer3D

__all__ = [
    "SegmentationNet",
    "ClassificationNet",
    "AttentivePooler",
    "build_encoder",
    "set_encoder_trainable",
    "SegmentationHead",
    "ClassificationProbe",
]



# ---------------------------------------------------------------------------------------------------- helpers
def build_encoder(encoder: nn.Module | dict | None = None, **encoder_kwargs) -> nn.Module:
    """The encoder module: a given ``VisionTransformer3D`` (or a ``VJEPA3D``, whose context ``.encoder`` is
    taken), a kwargs dict, or ``VisionTransformer3D(**encoder_kwargs)``."""
    if isinstance(encoder, nn.Module):
        if encoder_kwargs:
            raise ValueError(f"pass either an encoder module or encoder kwargs, not both ({sorted(encoder_kwargs)})")
        inner = getattr(encoder, "encoder", None)
        return inner if isinstance(inner, nn.Module) and hasattr(encoder, "predictor") else encoder
    kwargs = dict(encoder or {})
    kwargs.update(encoder_kwargs)
    return VisionTransformer3D(**kwargs)


def _patch_kernel(encoder: nn.Module) -> tuple[int, int, int]:
    k = encoder.patch_embed.proj.kernel_size
    return int(k[0]), int(k[1]), int(k[2])


def pad_to_patch(x: torch.Tensor, kernel: Sequence[int], mode: str = "constant") -> tuple[torch.Tensor, tuple]:
    """Pad ``x [B, C, D, H, W]`` at the far end of each axis to multiples of ``kernel`` (kt, kh, kw).

    Returns the padded tensor and the original ``(D, H, W)``.
    """
    size = tuple(x.shape[2:])
    pads = [(-s) % k for s, k in zip(size, kernel)]
    if any(pads):
        # F.pad order: last axis first, (before, after) per axis
        flat = [0, pads[2], 0, pads[1], 0, pads[0]]
        x = F.pad(x, flat, mode=mode)
    return x, size


class _EncoderMixin:
    """Runs the encoder under ``no_grad`` and in eval mode when fully frozen (no dropout, no wasted graph)."""

    encoder: nn.Module
    freeze: Union[str, int]

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if self.freeze == "all":
            self.encoder.eval()
        return self

    def _encode(self, x: torch.Tensor):
        if self.freeze == "all":
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)


# --------------------------------------------------------------------------------------------- segmentation
def _upsample_stages(kernel: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per-stage upsampling factors that multiply to the patch kernel: x2 per axis while divisible by 2, the odd
    remainder in one step. (2, 16, 16) -> [(2,2,2), (1,2,2), (1,2,2), (1,2,2)]."""
    rem = [int(k) for k in kernel]
    stages = []
    while any(r > 1 for r in rem):
        step = tuple(2 if r % 2 == 0 else r for r in rem)
        stages.append(step)
        rem = [r // s for r, s in zip(rem, step)]
    return stages or [(1, 1, 1)]


@records_init_args
class SegmentationNet(_EncoderMixin, nn.Module):
    """ViT encoder + light UNETR-style decoder with an image skip. ``[B, C, D, H, W] -> [B, K, D, H, W]``.

    Args:
        encoder: a ``VisionTransformer3D`` / ``VJEPA3D`` module or kwargs dict; else built from ``encoder_kwargs``
            (flat: ``in_chans, img_size, patch_size, tubelet_size, embed_dim, depth, num_heads, pos_embed, ...``).
        num_classes: output channels K (layers + background).
        decoder_channels: channels per upsampling stage (an int for all stages; a shorter list repeats its last).
        freeze: ``"all"`` | ``"none"`` | N (patch embedding and first N blocks) | True/False.
        image_skip: concatenate a conv feature of the input image at full resolution before the output block.
        image_skip_levels: how many decoder stages, finest first, receive a conv feature of the input image at
            their own resolution (a small strided conv path from the image: full, 1/2, 1/4 ... in-plane). 1 (the
            default) joins the image only at full resolution; ``None`` or a number >= the stages: every stage.
            The deeper levels give the decoder image context that the patch tokens lack (thin layers, small
            fluid pockets) while the encoder stays frozen. Needs ``image_skip``.
        feature_layers: block indices whose normed outputs are concatenated (channels) as decoder input; None
            uses the encoder's final output.
        norm_name: decoder normalisation (MONAI name, e.g. ``"instance"``, ``"batch"``).
        pad_mode: how inputs are padded up to the patch grid (``F.pad`` mode).
    """

    def __init__(
        self,
        encoder: nn.Module | dict | None = None,
        num_classes: int = 2,
        decoder_channels: Union[int, Sequence[int]] = (64, 32, 32, 16),
        freeze: Freeze = "none",
        image_skip: bool = True,
        image_skip_levels: int | None = 1,
        feature_layers: Sequence[int] | None = None,
        norm_name: str = "instance",
        pad_mode: str = "constant",
        **encoder_kwargs,
    ):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetrBasicBlock, UnetrUpBlock
        from monai.networks.blocks.dynunet_block import get_conv_layer

        self.encoder = build_encoder(encoder, **encoder_kwargs)
        self.num_classes = int(num_classes)
        self.kernel = _patch_kernel(self.encoder)
        self.pad_mode = pad_mode
        self.feature_layers = list(feature_layers) if feature_layers is not None else None
        if self.feature_layers is not None:
            depth = len(self.encoder.blocks)
            bad = [i for i in self.feature_layers if not 0 <= i < depth]
            if bad:
                raise ValueError(f"feature_layers {bad} outside the encoder's {depth} blocks")
            self.encoder.out_layers = self.feature_layers
        n_feat = len(self.feature_layers) if self.feature_layers else 1
        embed_dim = int(self.encoder.embed_dim)
        in_chans = int(self.encoder.patch_embed.proj.in_channels)

        stages = _upsample_stages(self.kernel)
        chans = [decoder_channels] if isinstance(decoder_channels, int) else list(decoder_channels)
        if not chans:
            raise ValueError("decoder_channels must not be empty")
        chans = [int(chans[min(i, len(chans) - 1)]) for i in range(len(stages))]
        self.stages = stages
        self.decoder_channels = chans

        n_stages = len(stages)
        if image_skip_levels is not None and int(image_skip_levels) < 1:
            raise ValueError(f"image_skip_levels must be >= 1 or None (every stage), got {image_skip_levels!r}")
        n_skip = (n_stages if image_skip_levels is None else min(int(image_skip_levels), n_stages)) if image_skip else 0
        self.image_skip_levels = n_skip
        skip_from = n_stages - n_skip  # stages skip_from .. n_stages-1 get an image feature

        self.proj = nn.Conv3d(embed_dim * n_feat, chans[0], kernel_size=1)
        ups = []
        c_in = chans[0]
        for i, (s, c) in enumerate(zip(stages, chans)):
            if i >= skip_from:
                ups.append(UnetrUpBlock(3, c_in, c, kernel_size=3, upsample_kernel_size=s, norm_name=norm_name,
                                        res_block=True))
            else:
                ups.append(nn.Sequential(
                    get_conv_layer(3, c_in, c, kernel_size=s, stride=s, conv_only=True, is_transposed=True),
                    UnetResBlock(3, c, c, kernel_size=3, stride=1, norm_name=norm_name),
                ))
            c_in = c
        self.up = nn.ModuleList(ups)
        self.image_skip = (
            UnetrBasicBlock(3, in_chans, chans[-1], kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
            if image_skip else None
        )
        # image pyramid for the coarser skips: stage i's output is stage i+1's input grid, so the feature for
        # stage i is the feature for stage i+1 downsampled by stage i+1's factor (finest first)
        pyramid = []
        for i in range(n_stages - 2, skip_from - 1, -1):
            pyramid.append(UnetResBlock(3, chans[i + 1], chans[i], kernel_size=3, stride=stages[i + 1],
                                        norm_name=norm_name))
        self.image_pyramid = nn.ModuleList(pyramid)
        self.out = UnetOutBlock(3, chans[-1], self.num_classes)
        self.freeze = set_encoder_trainable(self.encoder, freeze)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, D, H, W]`` -> logits ``[B, num_classes, D, H, W]``."""
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, D, H, W], got shape {tuple(x.shape)}")
        xp, size = pad_to_patch(x, self.kernel, self.pad_mode)
        grid = self.encoder.grid_size(*xp.shape[2:])
        tokens = self._encode(xp)
        if isinstance(tokens, (list, tuple)):
            tokens = torch.cat(list(tokens), dim=-1)
        b, n, e = tokens.shape
        feat = tokens.transpose(1, 2).reshape(b, e, *grid)  # (t, h, w) raster order -> grid
        h = self.proj(feat)
        skips: dict[int, torch.Tensor] = {}
        if self.image_skip is not None:
            n = len(self.up)
            s = self.image_skip(xp)
            skips[n - 1] = s
            for k, down in enumerate(self.image_pyramid):
                s = down(s)
                skips[n - 2 - k] = s
        for i, up in enumerate(self.up):
            h = up(h, skips[i]) if i in skips else up(h)
        logits = self.out(h)
        return logits[:, :, : size[0], : size[1], : size[2]]


# ------------------------------------------------------------------------------------------- classification
class AttentivePooler(nn.Module):
    """Cross-attention pooling: learned queries attend to the tokens, then a residual MLP.

    ``tokens [B, N, E] -> [B, E]`` (mean over ``num_queries`` query outputs). Pre-norm on the tokens and the
    queries' MLP input; MLP named as the encoder's.
    """

    def __init__(self, embed_dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, num_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm1 = nn.LayerNorm(embed_dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        kv = self.norm1(tokens)
        q = q + self.attn(q, kv, kv, need_weights=False)[0]
        q = q + self.mlp(self.norm2(q))
        return q.mean(1)


@records_init_args
class ClassificationNet(_EncoderMixin, nn.Module):
    """ViT encoder + probe. ``[B, C, D, H, W] -> logits [B, num_classes]``.

    Args:
        encoder: module or kwargs dict; else built from flat ``encoder_kwargs``.
        num_classes: classes.
        probe: ``"linear"`` (one linear layer on mean-pooled tokens) or ``"attentive"`` (:class:`AttentivePooler`
            then a linear layer).
        freeze: True/``"all"`` (frozen features), False/``"none"`` (full fine-tune), or N first blocks.
        probe_heads: attention heads of the attentive probe (default: the encoder's).
        pad_mode: inputs are padded up to the patch grid (``F.pad`` mode); padded tokens are pooled too.
    """

    def __init__(
        self,
        encoder: nn.Module | dict | None = None,
        num_classes: int = 2,
        probe: str = "linear",
        freeze: Freeze = True,
        probe_heads: int | None = None,
        probe_mlp_ratio: float = 4.0,
        pad_mode: str = "constant",
        **encoder_kwargs,
    ):
        super().__init__()
        if probe not in ("linear", "attentive"):
            raise ValueError(f"probe must be 'linear' or 'attentive', got {probe!r}")
        self.encoder = build_encoder(encoder, **encoder_kwargs)
        self.num_classes = int(num_classes)
        self.kernel = _patch_kernel(self.encoder)
        self.pad_mode = pad_mode
        self.probe = probe
        e = int(self.encoder.embed_dim)
        if probe == "attentive":
            heads = int(probe_heads or getattr(self.encoder, "num_heads", 1))
            self.pooler: nn.Module = AttentivePooler(e, heads, probe_mlp_ratio)
        else:
            self.pooler = nn.Identity()
        self.head = nn.Linear(e, self.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # Pooled features are standardised with these before the head: identity until fit_feature_scaler().
        # Part of the state_dict, so a saved probe carries the statistics it was trained with.
        self.register_buffer("feature_mean", torch.zeros(e))
        self.register_buffer("feature_std", torch.ones(e))
        self.freeze = set_encoder_trainable(self.encoder, freeze)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, not yet standardised features ``[B, E]`` for ``x [B, C, D, H, W]``."""
        xp, _ = pad_to_patch(x, self.kernel, self.pad_mode)
        tokens = self._encode(xp)
        if isinstance(tokens, (list, tuple)):
            tokens = tokens[-1]
        return tokens.mean(1) if self.probe == "linear" else self.pooler(tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, standardised features ``[B, E]`` for ``x [B, C, D, H, W]`` (the head's input)."""
        return (self.pooled(x) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def fit_feature_scaler(self, data_loader, device=None, image_key: str = "image", eps: float = 1e-6) -> dict:
        """Set ``feature_mean`` / ``feature_std`` to the per-dimension mean and standard deviation of the pooled
        features over ``data_loader`` (batches ``{image_key: [B, C, D, H, W]}``), as scikit-learn's
        ``StandardScaler`` does for a linear probe on frozen features.

        A frozen V-JEPA encoder's pooled features can be very anisotropic (a few directions carry nearly all
        the variance when the representation has collapsed dimensionally); a linear head trained by gradient
        descent for a few epochs then uses only those directions. Standardising first removes that dependence
        on scale. With a trainable encoder the statistics are those of the initial encoder. Returns
        ``{"n": volumes, "mean_std": mean of the std}``.
        """
        from oct_foundation.data.batch import prepare_batch_image

        device = torch.device(device) if device is not None else self.feature_mean.device
        was_training = self.training
        self.eval()
        feats = []
        for batch in data_loader:
            x = prepare_batch_image(batch, device, image_key=image_key)
            feats.append(self.pooled(x).float().cpu())
        self.train(was_training)
        if not feats:
            raise ValueError("fit_feature_scaler: the data loader yielded no batch")
        f = torch.cat(feats)
        if f.shape[0] < 2:
            raise ValueError(f"fit_feature_scaler needs at least 2 volumes, got {f.shape[0]}")
        self.feature_mean.copy_(f.mean(0).to(self.feature_mean))
        self.feature_std.copy_(f.std(0).clamp_min(eps).to(self.feature_std))
        return {"n": int(f.shape[0]), "mean_std": float(f.std(0).mean())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, D, H, W], got shape {tuple(x.shape)}")
        return self.head(self.features(x))


# other names under which the package exports the two nets
SegmentationHead = SegmentationNet
ClassificationProbe = ClassificationNet
