"""Representation quality of frozen features: kNN top-1, linear CKA, linear probe, feature extraction, and the
effective rank of a feature matrix (dimensional-collapse monitor).

kNN (``knn_predict``) uses cosine similarity between L2-normalised features. ``weighting="dino"`` is the
weighted vote of DINO's kNN evaluation: each of the k neighbours votes for its class with weight
``exp(similarity / temperature)``; ``weighting="majority"`` counts votes (ties go to the neighbour classes'
summed similarity, then the lower class index).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = ["knn_predict", "knn_top1", "linear_cka", "linear_probe", "extract_features", "effective_rank"]


def _t(x, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype=dtype, device="cpu")
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def knn_predict(train_features, train_labels, test_features, k: int = 20, temperature: float = 0.07,
                weighting: str = "dino", num_classes: int | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """Predict test labels from the k nearest training features (cosine similarity).

    Args:
        train_features: ``[N, E]``; train_labels: ``[N]`` ints; test_features: ``[M, E]``.
        k: neighbours (clipped to N); temperature: DINO vote temperature; weighting: ``"dino"`` | ``"majority"``.

    Returns:
        predicted labels ``[M]`` (long).
    """
    if weighting not in ("dino", "majority"):
        raise ValueError(f"weighting must be 'dino' or 'majority', got {weighting!r}")
    xtr = torch.nn.functional.normalize(_t(train_features), dim=1)
    xte = torch.nn.functional.normalize(_t(test_features), dim=1)
    ytr = _t(train_labels, torch.long).reshape(-1)
    if xtr.shape[0] != ytr.shape[0]:
        raise ValueError(f"{xtr.shape[0]} train features for {ytr.shape[0]} labels")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"feature sizes differ: train {xtr.shape[1]}, test {xte.shape[1]}")
    c = int(num_classes or int(ytr.max()) + 1)
    k = max(1, min(int(k), xtr.shape[0]))
    preds = []
    for start in range(0, xte.shape[0], chunk_size):
        sim = xte[start:start + chunk_size] @ xtr.T  # [m, N]
        top_sim, top_idx = sim.topk(k, dim=1)
        top_lab = ytr[top_idx]  # [m, k]
        onehot = torch.nn.functional.one_hot(top_lab, c).float()  # [m, k, C]
        if weighting == "dino":
            # exp((s - s_max) / T): same relative weights as exp(s / T), without overflow for small T
            w = ((top_sim - top_sim[:, :1]) / temperature).exp()
            votes = (onehot * w.unsqueeze(-1)).sum(1)
        else:
            # counts first; summed similarity (< k) as a tie-breaker scaled below one vote
            counts = onehot.sum(1)
            tie = (onehot * (top_sim.unsqueeze(-1) + 1.0)).sum(1) / (2.0 * k + 1.0)
            votes = counts + tie
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_top1(train_features, train_labels, test_features, test_labels, **kwargs) -> float:
    """Top-1 accuracy of :func:`knn_predict` on held-out features (kwargs as there)."""
    pred = knn_predict(train_features, train_labels, test_features, **kwargs)
    y = _t(test_labels, torch.long).reshape(-1)
    return float((pred == y).float().mean()) if y.numel() else float("nan")


def linear_cka(x, y) -> float:
    """Linear CKA between two feature matrices ``[N, E1]`` and ``[N, E2]`` of the same N samples.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc (Kornblith et al.
    2019). 1 for identical representations, invariant to orthogonal transforms and isotropic scaling.
    """
    xa = _t(x, torch.float64)
    ya = _t(y, torch.float64)
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[0] != ya.shape[0]:
        raise ValueError(f"expected [N, E1] and [N, E2] with the same N, got {tuple(xa.shape)}, {tuple(ya.shape)}")
    xa = xa - xa.mean(0, keepdim=True)
    ya = ya - ya.mean(0, keepdim=True)
    hsic = (ya.T @ xa).pow(2).sum()
    nx = (xa.T @ xa).pow(2).sum().sqrt()
    ny = (ya.T @ ya).pow(2).sum().sqrt()
    if nx == 0 or ny == 0:
        return float("nan")
    return float(hsic / (nx * ny))


def linear_probe(train_features, train_labels, test_features, test_labels=None, c: float = 1.0,
                 max_iter: int = 2000, standardize: bool = True, seed: int = 0) -> dict[str, Any]:
    """Fit a multinomial logistic regression on frozen features (scikit-learn) and score held-out features.

    Returns ``{"model", "probabilities" [M, C], "predictions" [M], "accuracy" (if test_labels)}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr = _t(train_features).numpy()
    ytr = _t(train_labels, torch.long).numpy().reshape(-1)
    xte = _t(test_features).numpy()
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    model.fit(xtr, ytr)
    prob = model.predict_proba(xte)
    classes = model.classes_ if hasattr(model, "classes_") else clf.classes_
    pred = classes[prob.argmax(1)]
    out: dict[str, Any] = {"model": model, "probabilities": prob, "predictions": pred, "classes": classes}
    if test_labels is not None:
        yte = _t(test_labels, torch.long).numpy().reshape(-1)
        out["accuracy"] = float((pred == yte).mean()) if yte.size else float("nan")
    return out


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[dict], image_key: str = "image",
                     keys: Sequence[str] = ("class",), pool: str = "mean",
                     device: str | torch.device = "cpu") -> dict[str, Any]:
    """Run a frozen encoder over batches and pool its tokens.

    Args:
        model: returns tokens ``[B, N, E]`` (or already pooled ``[B, E]``) for ``batch[image_key]``
            ``[B, C, D, H, W]``.
        batches: iterable of dict batches (e.g. a MONAI DataLoader).
        keys: other batch fields collected alongside (labels, device names, ...).
        pool: ``"mean"`` over tokens or ``"none"`` (keep ``[B, N, E]``).

    Returns:
        ``{"features": Tensor [M, E] (or [M, N, E]), key: list of values for each of ``keys``}``.
    """
    was_training = model.training
    model.eval()
    feats, extra = [], {k: [] for k in keys}
    try:
        for batch in batches:
            out = model(batch[image_key].to(device))
            if out.ndim == 3 and pool == "mean":
                out = out.mean(1)
            feats.append(out.float().cpu())
            for k in keys:
                v = batch.get(k)
                if isinstance(v, torch.Tensor):
                    v = v.cpu().tolist()
                extra[k] += list(v) if v is not None else [None] * out.shape[0]
    finally:
        model.train(was_training)
    return {"features": torch.cat(feats) if feats else torch.zeros(0), **extra}


_RANK_METHODS = ("participation", "rankme")


def effective_rank(features, method: str = "participation", center: bool = True, eps: float = 1e-7) -> float:
    """Effective dimensionality of a feature matrix from its singular values (computed in float64).

    Args:
        features: torch tensor or numpy array ``[N, E]`` (or ``[B, N, E]``, flattened to ``[B*N, E]``).
        method: ``"participation"``: participation ratio of the covariance spectrum,
            ``(sum s^2)^2 / sum s^4``; ``"rankme"``: RankMe (Garrido et al. 2023), ``exp(-sum p log p)`` with
            ``p = s / sum s + eps``. Both are 1 for a rank-1 matrix and E for E equal singular values.
        center: subtract the per-feature mean over rows first (the covariance spectrum).
        eps: RankMe's small constant.

    Returns:
        a float in ``[1, min(N, E)]`` (``1.0`` when every row is the same, i.e. no variance at all).
    """
    # hand-written: two closed-form spectrum statistics; torch.linalg.svdvals does the numerical work
    if method not in _RANK_METHODS:
        raise ValueError(f"method must be one of {_RANK_METHODS}, got {method!r}")
    x = _t(features, torch.float64)
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2:
        raise ValueError(f"expected features [N, E] or [B, N, E], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"effective rank needs at least 2 rows (feature vectors), got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    if center:
        x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.max()) <= 0.0:
        return 1.0
    if method == "participation":
        s2 = s.pow(2)
        return float(s2.sum().pow(2) / s2.pow(2).sum())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))
