"""Supervised segmentation baseline and the segmentation bundle's network choice.

* :class:`UNetBaseline`: MONAI's ``monai.networks.nets.UNet`` (residual units, no pretraining), trained from
  scratch on the same data as the ViT heads: the baseline a reviewer asks for next to a foundation encoder.
  Inputs of any ``D, H, W`` are padded up to the product of the strides per axis and cropped back, so it scores
  full-depth volumes exactly like :class:`~oct_foundation.networks.heads.SegmentationNet`.
* :func:`build_segmentation_network`: ``model="vit"`` builds ``SegmentationNet`` from the bundle's keys,
  ``model="unet"`` builds :class:`UNetBaseline` (the encoder keys then only give the input channels).
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn

from oct_foundation.networks.heads import pad_to_patch
from oct_foundation.networks.model_files import records_init_args

__all__ = ["UNetBaseline", "build_segmentation_network", "SEGMENTATION_MODELS", "encoder_parameter_names",
           "class_weight_tensor", "saved_head_arg", "saved_segmentation_model", "saved_unet_arg"]

SEGMENTATION_MODELS = ("vit", "unet")
Strides = Sequence[Union[int, Sequence[int]]]


def _stride_tuple(s, i: int) -> tuple[int, int, int]:
    t = (int(s),) * 3 if isinstance(s, (int, float)) else tuple(int(v) for v in s)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"unet_strides[{i}] must be a positive int or three positive ints (D, H, W), got {s!r}")
    return t  # type: ignore[return-value]


@records_init_args
class UNetBaseline(nn.Module):
    """``monai.networks.nets.UNet`` for ``[B, C, D, H, W] -> [B, K, D, H, W]``, any ``D, H, W``.

    Args:
        num_classes: output channels K (layers + background).
        in_chans: input channels.
        channels: feature channels per level (``len(strides) + 1`` of them).
        strides: downsampling per level, an int or ``(sd, sh, sw)``; the default keeps the slice axis at full
            resolution in the first level (OCT volumes have few slices).
        num_res_units: residual units per block (MONAI's UNet argument).
        norm: MONAI norm name.
        dropout: dropout of every unit.
        img_size: the ``[D, H, W]`` input it is trained on. The UNet takes any size; the value is recorded in its
            model file so that inference and evaluation preprocess as training did.
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 1, channels: Sequence[int] = (16, 32, 64, 128),
                 strides: Strides = ((1, 2, 2), 2, 2), num_res_units: int = 1, norm: str = "instance",
                 dropout: float = 0.0, img_size: Sequence[int] | None = None):
        super().__init__()
        self.img_size = [int(v) for v in img_size] if img_size is not None else None
        from monai.networks.nets import UNet

        channels = [int(c) for c in channels]
        st = [_stride_tuple(s, i) for i, s in enumerate(strides)]
        if len(channels) != len(st) + 1:
            raise ValueError(f"unet_channels needs one more entry than unet_strides, got {len(channels)} channels "
                             f"for {len(st)} strides")
        self.num_classes = int(num_classes)
        self.kernel = tuple(int(torch.tensor([s[a] for s in st]).prod()) for a in range(3))
        self.unet = UNet(spatial_dims=3, in_channels=int(in_chans), out_channels=self.num_classes,
                         channels=channels, strides=st, num_res_units=int(num_res_units), norm=norm,
                         dropout=float(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, D, H, W], got shape {tuple(x.shape)}")
        xp, size = pad_to_patch(x, self.kernel)
        return self.unet(xp)[:, :, : size[0], : size[1], : size[2]]


def build_segmentation_network(model: str = "vit", num_classes: int = 2, unet_channels: Sequence[int] = (16, 32, 64, 128),
                               unet_strides: Strides = ((1, 2, 2), 2, 2), unet_num_res_units: int = 1,
                               **vit_kwargs) -> nn.Module:
    """The segmentation bundle's ``network_def``: ``model`` ``"vit"`` -> ``SegmentationNet(num_classes=...,
    **vit_kwargs)``; ``"unet"`` -> :class:`UNetBaseline` (no encoder, random init; ``in_chans`` is read from
    ``vit_kwargs`` or its ``encoder`` dict, the other ViT keys are not used)."""
    from oct_foundation.networks.heads import SegmentationNet

    model = str(model).strip().lower()
    if model not in SEGMENTATION_MODELS:
        raise ValueError(f"model must be one of {SEGMENTATION_MODELS}, got {model!r}")
    if model == "vit":
        return SegmentationNet(num_classes=num_classes, **vit_kwargs)
    enc = vit_kwargs.get("encoder")
    enc = enc if isinstance(enc, dict) else {}
    in_chans = vit_kwargs.get("in_chans", enc.get("in_chans", 1))
    img = enc.get("img_size")
    return UNetBaseline(num_classes=num_classes, in_chans=int(in_chans), channels=unet_channels,
                        strides=unet_strides, num_res_units=unet_num_res_units,
                        img_size=[int(v) for v in img] if isinstance(img, (list, tuple)) else None)


def encoder_parameter_names(network: nn.Module) -> list[str]:
    """Names (as in ``network.named_parameters()``) of the parameters under ``network.encoder``; empty for a
    network without an encoder (the UNet baseline)."""
    net = getattr(network, "module", network)
    return [n for n, _ in net.named_parameters() if n.startswith("encoder.")]


def class_weight_tensor(class_weights: Sequence[float] | None, num_classes: int, key: str = "class_weights"):
    """The segmentation loss's per-class weights (``DiceCELoss(weight=...)``) as a float tensor, or None.

    ``class_weights``: None (every class 1) or one non-negative number per class, background first. The bundle's
    default up-weights the rare fluid class (label 9), which a plain DiceCE leaves unlearnt at the demo's budget.
    """
    if class_weights is None:
        return None
    w = [float(v) for v in class_weights]
    if len(w) != int(num_classes):
        raise ValueError(f"{key} has {len(w)} values for num_classes={num_classes} (one per class, background "
                         "first), or use null")
    if min(w) < 0 or not any(w):
        raise ValueError(f"{key} must be non-negative and not all zero, got {w}")
    return torch.tensor(w, dtype=torch.float32)



def saved_head_arg(model_path, key: str, default: Any = None):
    """A ``SegmentationNet`` constructor argument as recorded in the ``model.json`` beside ``model_path``, else
    ``default``.

    Inference and evaluation build the head to match a trained file: ``image_skip_levels`` of a file written
    before that option existed (no ``model.json``, or one without the key) is 1, the layout those files have,
    while a file trained with the current default records its own value.
    """
    from oct_foundation.networks.model_files import read_model_spec

    if not model_path:
        return default
    spec = read_model_spec(model_path, verify=False, required=False)
    if not spec or not str(spec.get("_target_", "")).endswith("heads.SegmentationNet"):
        return default
    return spec["args"].get(key, default)


UNET_TARGET = f"{UNetBaseline.__module__}.{UNetBaseline.__qualname__}"


def _spec(model_path):
    from oct_foundation.networks.model_files import read_model_spec

    return read_model_spec(model_path, verify=False, required=False) if model_path else None


def saved_segmentation_model(model_path, default: str = "vit") -> str:
    """``"unet"`` when the ``model.json`` beside ``model_path`` describes a :class:`UNetBaseline`, ``"vit"`` when it
    describes a ``SegmentationNet``, else ``default``: inference and evaluation build what was trained."""
    spec = _spec(model_path)
    target = str((spec or {}).get("_target_", ""))
    if target == UNET_TARGET:
        return "unet"
    return "vit" if target.endswith("heads.SegmentationNet") else default


def saved_unet_arg(model_path, key: str, default: Any = None):
    """A :class:`UNetBaseline` constructor argument (``channels``, ``strides``, ``num_res_units``) as recorded in
    the ``model.json`` beside ``model_path``, else ``default``."""
    spec = _spec(model_path)
    if not spec or spec.get("_target_") != UNET_TARGET:
        return default
    return spec["args"].get(key, default)
