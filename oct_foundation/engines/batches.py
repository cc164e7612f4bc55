"""How the downstream bundles' MONAI engines take their batches and give their outputs, where a JSON config cannot
say it:

* :class:`PrepareClassBatch`: ``prepare_batch`` for MONAI engines, image plus an integer target from another
  key (``class``), so the datalist's ``label`` (a layer map path) is left alone;
* :class:`StackOutputs`: ``output_transform`` that stacks decollated engine outputs into batch tensors (for Ignite
  metrics such as ``Accuracy``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["PrepareClassBatch", "StackOutputs"]


class PrepareClassBatch:
    """``prepare_batch(batchdata, device, non_blocking, **kwargs) -> (image, target)`` for MONAI engines.

    ``image`` = ``batch[image_key]`` ``[B, C, D, H, W]``, ``target`` = ``batch[label_key]`` as long ``[B]``.
    """

    def __init__(self, image_key: str = "image", label_key: str = "class"):
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        if self.label_key not in batchdata:
            raise KeyError(f"batch has no '{self.label_key}' (keys: {sorted(batchdata)})")
        image = batchdata[self.image_key]
        target = torch.as_tensor(batchdata[self.label_key]).long().reshape(-1)
        return (image.to(device=device, non_blocking=non_blocking),
                target.to(device=device, non_blocking=non_blocking))


def _as_list(x) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


class StackOutputs:
    """Engine output (decollated list of dicts, or one dict) -> tuple of stacked tensors for ``keys``."""

    def __init__(self, keys: Sequence[str] = ("pred", "label")):
        self.keys = list(keys)

    def __call__(self, output) -> tuple:
        if isinstance(output, Mapping):  # not decollated: values are batches already
            return tuple(torch.as_tensor(output[k]) for k in self.keys)
        return tuple(torch.stack([torch.as_tensor(it[k]) for it in output]) for k in self.keys)
