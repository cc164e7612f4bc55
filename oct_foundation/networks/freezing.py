"""Which encoder parameters train: the one place that sets ``requires_grad`` on a ViT encoder.

Units from the input side: ``patch_embed`` (with a learned ``pos_embed`` if any), then ``blocks.0`` ...
``blocks.{depth-1}``; the final ``norm`` is frozen only when asked (downstream heads freeze it with every block).
Pretraining (``freeze_first_n``, progressive unfreezing) and the downstream heads (``freeze``) both go through
:func:`freeze_encoder`.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

__all__ = ["Freeze", "encoder_units", "freeze_encoder", "set_encoder_trainable"]

Freeze = Union[str, bool, int]


def encoder_units(encoder: nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """Freezable units of a ``VisionTransformer3D`` from the input side: ``patch_embed`` (with a learned
    ``pos_embed`` if any), then ``blocks.0`` ... ``blocks.{depth-1}``."""
    first = list(encoder.patch_embed.parameters())
    pos = getattr(encoder, "pos_embed", None)
    if isinstance(pos, torch.nn.Parameter):
        first.append(pos)
    units = [("patch_embed", first)]
    for i, blk in enumerate(encoder.blocks):
        units.append((f"blocks.{i}", list(blk.parameters())))
    return units


def freeze_encoder(encoder: nn.Module, freeze_first_n: int, freeze_patch_embed: bool | None = None,
                   freeze_norm: bool = False) -> list[str]:
    """Freeze the patch embedding and the first ``freeze_first_n`` blocks (``requires_grad=False``).

    ``freeze_patch_embed`` defaults to ``freeze_first_n > 0``; ``freeze_norm`` also freezes the final ``norm``.
    Returns the frozen unit names; every other unit is made trainable.
    """
    n = int(freeze_first_n or 0)
    depth = len(encoder.blocks)
    if n < 0 or n > depth:
        raise ValueError(f"freeze_first_n must be in [0, {depth}], got {n}")
    pe = (n > 0) if freeze_patch_embed is None else bool(freeze_patch_embed)
    frozen = []
    for name, params in encoder_units(encoder):
        freeze = (name == "patch_embed" and pe) or (name.startswith("blocks.") and int(name.split(".")[1]) < n)
        for p in params:
            p.requires_grad_(not freeze)
        if freeze:
            frozen.append(name)
    norm = getattr(encoder, "norm", None)
    if isinstance(norm, nn.Module):
        for p in norm.parameters():
            p.requires_grad_(not freeze_norm)
        if freeze_norm:
            frozen.append("norm")
    return frozen


def _normalise_freeze(freeze: Freeze) -> Union[str, int]:
    if isinstance(freeze, str) and freeze.strip().lower() in ("true", "false", "yes", "no"):
        freeze = freeze.strip().lower() in ("true", "yes")  # a command-line spelling of a boolean
    if freeze is True or freeze == "all":
        return "all"
    if freeze is False or freeze in ("none", None):
        return "none"
    if isinstance(freeze, int) or (isinstance(freeze, str) and freeze.isdigit()):
        n = int(freeze)
        if n < 0:
            raise ValueError(f"freeze must be 'all', 'none' or a number of blocks >= 0, got {freeze!r}")
        return n
    raise ValueError(f"freeze must be 'all', 'none', True/False or a number of blocks, got {freeze!r}")


def set_encoder_trainable(encoder: nn.Module, freeze: Freeze) -> Union[str, int]:
    """Set ``requires_grad`` on the encoder: ``"all"`` (or True) freezes every parameter, ``"none"`` (False)
    none, an int N the patch embedding and the first N blocks (:func:`freeze_encoder`; the final ``norm`` stays
    trainable unless N covers every block). Returns the normalised setting."""
    mode = _normalise_freeze(freeze)
    for p in encoder.parameters():
        p.requires_grad_(mode != "all")
    if isinstance(mode, int):
        depth = len(getattr(encoder, "blocks"))
        if mode > depth:
            raise ValueError(f"freeze={mode} blocks but the encoder has {depth}")
        freeze_encoder(encoder, mode, freeze_patch_embed=True, freeze_norm=mode == depth)
    return mode
