"""Reconstruction quality of a volume against its reference: MSE, PSNR, SSIM, per input and summarised.

* MSE: mean of squared differences over every voxel (float64).
* PSNR: MONAI ``PSNRMetric`` (``20 log10(data_range) - 10 log10(MSE)``; ``inf`` for identical volumes).
* SSIM: MONAI ``SSIMMetric`` in 2D on every B-scan (slice along D) with a Gaussian window (11 pixels,
  sigma 1.5, K1 0.01, K2 0.03, the values of Wang et al. 2004 and of ``skimage.metrics.structural_similarity``
  with ``gaussian_weights=True, use_sample_covariance=False``), averaged over slices and channels. Per-B-scan
  SSIM is used rather than 3D SSIM because OCT volumes (and video-VAE evaluations) often have fewer slices
  than the 11-voxel window, and B-scans are the images clinicians read. The window shrinks (odd, >= 3) for
  B-scans smaller than 11 pixels.

Volumes are ``[C, D, H, W]`` or ``[D, H, W]`` (tensors or arrays); both arguments must have the same shape.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["mse", "psnr", "ssim", "reconstruction_metrics", "summarise_reconstruction"]

METRICS = ("mse", "psnr", "ssim")


def _as_4d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach()).to(torch.float64).cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"{name}: expected a volume [C, D, H, W] or [D, H, W], got shape {tuple(t.shape)}")
    return t


def _pair(reconstruction, reference) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_4d(reconstruction, "reconstruction"), _as_4d(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(f"reconstruction {tuple(a.shape)} and reference {tuple(b.shape)} differ in shape")
    return a, b


def mse(reconstruction, reference) -> float:
    """Mean squared error over all voxels."""
    a, b = _pair(reconstruction, reference)
    return float(torch.mean((a - b) ** 2))


def psnr(reconstruction, reference, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (MONAI ``PSNRMetric``, ``max_val=data_range``)."""
    from monai.metrics import PSNRMetric

    a, b = _pair(reconstruction, reference)
    value = PSNRMetric(max_val=data_range, reduction="none")(a.reshape(1, -1), b.reshape(1, -1))
    return float(value.reshape(-1)[0])


def ssim(reconstruction, reference, data_range: float = 1.0, win_size: int = 11) -> float:
    """Mean 2D SSIM over B-scans and channels (MONAI ``SSIMMetric``, Gaussian window, sigma 1.5)."""
    from monai.metrics import SSIMMetric

    a, b = _pair(reconstruction, reference)
    c, d, h, w = a.shape
    win = min(int(win_size), h, w)
    win -= 1 - win % 2  # odd
    if win < 3:
        raise ValueError(f"SSIM needs B-scans of at least 3 x 3 pixels, got {h} x {w}")
    metric = SSIMMetric(spatial_dims=2, data_range=data_range, win_size=win, kernel_sigma=1.5, reduction="none")
    # every (channel, slice) B-scan is one item of the batch
    values = metric(a.reshape(c * d, 1, h, w), b.reshape(c * d, 1, h, w))
    return float(values.mean())


def reconstruction_metrics(reconstruction, reference, data_range: float = 1.0) -> dict[str, float]:
    """``{"mse", "psnr", "ssim"}`` of one reconstructed volume against its reference."""
    return {
        "mse": mse(reconstruction, reference),
        "psnr": psnr(reconstruction, reference, data_range),
        "ssim": ssim(reconstruction, reference, data_range),
    }


def summarise_reconstruction(rows: Iterable[Mapping], metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """Mean, std, median, min, max and count of each metric over the rows that have a finite value.

    Rows are per-input dicts (e.g. summary CSV rows: strings are parsed; empty / error rows are skipped).
    """
    out: dict[str, dict] = {}
    rows = list(rows)
    for m in metrics:
        vals = []
        for r in rows:
            v = r.get(m)
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                vals.append(v)
        arr = np.asarray(vals, dtype=np.float64)
        out[m] = {
            "mean": float(arr.mean()) if arr.size else float("nan"),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0 if arr.size else float("nan"),
            "median": float(np.median(arr)) if arr.size else float("nan"),
            "min": float(arr.min()) if arr.size else float("nan"),
            "max": float(arr.max()) if arr.size else float("nan"),
            "n": int(arr.size),
        }
    return out
