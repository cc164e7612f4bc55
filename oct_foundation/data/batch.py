"""Collated batches -> the tensors engines, heads and handlers compute on."""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["prepare_batch_image"]


def prepare_batch_image(batchdata, device, non_blocking: bool = False, image_key: str = "image") -> torch.Tensor:
    """The image tensor ``[B, C, D, H, W]`` of a collated batch (dict or tensor), on ``device``, as a plain tensor."""
    x = batchdata[image_key] if isinstance(batchdata, Mapping) else batchdata
    if isinstance(x, (list, tuple)):
        x = x[0]
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    if x.ndim != 5:
        raise ValueError(f"expected a batch [B, C, D, H, W], got shape {tuple(x.shape)}")
    return x.to(device=device, non_blocking=non_blocking, dtype=torch.float32)
