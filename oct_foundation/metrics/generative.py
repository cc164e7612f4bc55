"""Distance between feature distributions of real and generated volumes (Frechet distance on pooled embeddings).

``FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})`` of Gaussians fitted to two sets of feature
vectors ``[N, E]`` (Heusel et al. 2017, the FID formula, here on the project's own encoder features).

The trace term is computed as ``sum(sqrt(eig(S_a^{1/2} S_b S_a^{1/2})))`` with symmetric eigendecompositions
(float64) instead of MONAI's ``compute_frechet_distance`` (general ``scipy.linalg.sqrtm`` of the non-symmetric
product): the two are equal in exact arithmetic, but with fewer samples than feature dimensions (small test and
validation sets) the covariances are rank-deficient and ``sqrtm`` returns complex values that MONAI rejects,
whereas the symmetric form stays real and non-negative.
"""
from __future__ import annotations

import torch

__all__ = ["frechet_distance", "split_halves"]


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between the Gaussian fits of ``features_a [N_a, E]`` and ``features_b [N_b, E]``
    (``N >= 2`` each; unbiased covariances)."""
    a = torch.as_tensor(features_a).detach().double().cpu()
    b = torch.as_tensor(features_b).detach().double().cpu()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature matrices [N, E] with the same E, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"the Frechet distance needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("features contain NaN or infinite values")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_covmean
    return float(fd.clamp(min=0))


def split_halves(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)`` into two halves (sizes ``n // 2`` and ``n - n // 2``)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[: n // 2]), sorted(perm[n // 2:])
