"""Latent files written by the ``oct_maisi_vae_encode`` bundle: reading them, and the transform that loads them."""
from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform

from oct_foundation import io
from oct_foundation.errors import OCTInputError

__all__ = ["LATENT_SUFFIXES", "read_latent", "LoadLatentd"]

LATENT_SUFFIXES = ("_latent.pt", "_latent.npy")


def read_latent(path: str) -> tuple[torch.Tensor, dict]:
    """A latent file ``<id>_latent.pt`` / ``.npy`` and its sidecar JSON: ``(latent [C, T', H', W'] float32,
    sidecar dict)``; a missing sidecar or a shape that disagrees with it is an ``OCTInputError`` naming the file."""
    stem = path[: -len(".pt")] if path.endswith(".pt") else path[: -len(".npy")]
    sidecar = stem + ".json"
    if not io.exists(sidecar):
        raise OCTInputError(path, "latent has no sidecar JSON (written by the encode config)")
    info = io.load_json(sidecar)
    if path.endswith(".npy"):
        with io.open_file(path, "rb") as f:
            z = torch.from_numpy(np.load(f, allow_pickle=False))
    else:
        z = io.torch_load(path)
    if not isinstance(z, torch.Tensor) or z.ndim != 4:
        raise OCTInputError(path, "expected a latent tensor [C, T', H', W']")
    if list(z.shape) != list(info.get("latent_shape", [])):
        raise OCTInputError(path, f"latent shape {list(z.shape)} differs from its sidecar {info.get('latent_shape')}")
    return z.float(), info


class LoadLatentd(MapTransform):
    """Read ``<id>_latent.pt`` / ``.npy`` (with the sidecar JSON written by the ``oct_maisi_vae_encode`` bundle)
    into raw latents ``[4, T', h, w]``: the file's values divided by the sidecar's ``scale_factor``."""

    def __init__(self, keys="latent", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            z, info = read_latent(str(d[key]))
            d[key] = z / float(info.get("scale_factor", 1.0) or 1.0)
        return d
