"""Paired comparison of two models scored on the same cases: the difference and its bootstrap interval.

A downstream table that puts a pretrained encoder next to a random-init one means little on a few dozen test
volumes unless it says how much the difference could move by chance. :func:`paired_bootstrap` resamples the
*cases* (the same resample for both models, so case difficulty cancels) and reports the percentile interval of
the difference. It is written here rather than with ``scipy.stats.bootstrap`` because the resampling must be
stratified by class: an unstratified resample of a small test set regularly drops a class, and the one-vs-rest
AUROC of three classes is then undefined.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["paired_bootstrap", "compare_classifiers", "compare_per_case", "outcome", "verdict"]


def paired_bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    strata: Sequence | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap of ``statistic(indices)`` over resampled case indices.

    Args:
        statistic: maps an index array ``[n]`` (cases drawn with replacement) to a number, e.g. the difference
            of a metric between two models on those cases; ``statistic(np.arange(n))`` is the point estimate.
        n: number of cases.
        n_resamples: bootstrap resamples (NaN results, e.g. an undefined metric, are dropped and counted).
        confidence: two-sided level of the interval.
        strata: optional label per case; each resample draws within each stratum as many cases as it holds.
        seed: seed of the resampling.

    Returns:
        ``{"estimate", "ci_low", "ci_high", "confidence", "p_positive" (share of resamples > 0), "n",
        "n_resamples" (valid ones), "n_invalid"}``.
    """
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 cases, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
    else:
        s = np.asarray([str(v) for v in strata])
        if s.shape[0] != n:
            raise ValueError(f"strata has {s.shape[0]} entries for {n} cases")
        groups = [np.flatnonzero(s == g) for g in sorted(set(s.tolist()))]
    estimate = float(statistic(np.arange(n)))
    values = np.empty(int(n_resamples))
    for r in range(int(n_resamples)):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        values[r] = float(statistic(idx))
    valid = values[np.isfinite(values)]
    alpha = (1.0 - confidence) / 2.0
    low, high = (np.quantile(valid, [alpha, 1.0 - alpha]) if valid.size else (np.nan, np.nan))
    return {
        "estimate": estimate,
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": float(confidence),
        "p_positive": float((valid > 0).mean()) if valid.size else float("nan"),
        "n": int(n),
        "n_resamples": int(valid.size),
        "n_invalid": int(values.size - valid.size),
    }


def _auroc_ovr(y: np.ndarray, prob: np.ndarray, c: int) -> float:
    """Macro one-vs-rest AUROC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN when a class is
    absent. Equal to scikit-learn's ``roc_auc_score(multi_class="ovr")``; written out because the bootstrap calls
    it thousands of times and scikit-learn's input validation dominates at these sizes."""
    from scipy.stats import rankdata

    aucs = []
    for k in range(c):
        pos = y == k
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        r = rankdata(prob[:, k])
        aucs.append((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return float(np.mean(aucs))


def _macro_f1(y: np.ndarray, pred: np.ndarray, c: int) -> float:
    """Macro-F1 over the labels present in ``y`` or ``pred`` (scikit-learn's default label set)."""
    f1 = []
    for k in range(c):
        tp = int(((pred == k) & (y == k)).sum())
        fp = int(((pred == k) & (y != k)).sum())
        fn = int(((pred != k) & (y == k)).sum())
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1)) if f1 else 0.0


def _metric(name: str, y: np.ndarray, prob: np.ndarray, c: int) -> float:
    if name == "accuracy":
        return float((prob.argmax(1) == y).mean())
    if name == "macro_f1":
        return _macro_f1(y, prob.argmax(1), c)
    if name == "auroc":
        return _auroc_ovr(y, prob, c)
    raise ValueError(f"unknown metric {name!r}; choose accuracy, macro_f1 or auroc")


def compare_classifiers(
    y_true: Sequence[int],
    prob_a,
    prob_b,
    metrics: Sequence[str] = ("accuracy", "macro_f1", "auroc"),
    num_classes: int | None = None,
    **bootstrap_kwargs,
) -> dict[str, dict[str, Any]]:
    """Per metric, the bootstrap of ``metric(a) - metric(b)`` on the same cases (stratified by true class).

    ``prob_a`` / ``prob_b``: class probabilities ``[N, C]`` of the two models for the same ``N`` cases in the same
    order. Metrics as in :func:`oct_foundation.metrics.classification_metrics` (pooled): accuracy, macro-F1,
    macro one-vs-rest AUROC.
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    a, b = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != y.shape[0]:
        raise ValueError(f"prob_a {a.shape} and prob_b {b.shape} must both be [N={y.shape[0]}, C]")
    c = int(num_classes or a.shape[1])
    out = {}
    for m in metrics:
        _metric(m, y[:2], a[:2], c)  # unknown names fail before the bootstrap

        def stat(idx, m=m):
            return _metric(m, y[idx], a[idx], c) - _metric(m, y[idx], b[idx], c)

        out[m] = paired_bootstrap(stat, y.shape[0], strata=y, **bootstrap_kwargs)
    return out


def compare_per_case(values_a: Sequence[float], values_b: Sequence[float], **bootstrap_kwargs) -> dict[str, Any]:
    """Bootstrap of ``mean(a) - mean(b)`` for per-case scores of two models on the same cases (e.g. mean Dice);
    cases where either value is NaN are left out."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"per-case values must be two vectors of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    return paired_bootstrap(lambda idx: float(d[idx].mean()), int(d.size), **bootstrap_kwargs)


def outcome(result: Mapping[str, Any], min_effect: float = 0.0) -> str:
    """``"a"`` / ``"b"`` (that model is better: the interval excludes 0 and the estimate is at least
    ``min_effect`` in size), ``"negligible"`` (the interval excludes 0 but the estimate is smaller than
    ``min_effect``: a real but practically irrelevant difference), ``"none"`` (the interval includes 0) or
    ``"undetermined"`` (no finite interval)."""
    lo, hi, est = result["ci_low"], result["ci_high"], result["estimate"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undetermined"
    if lo > 0 or hi < 0:
        return "negligible" if abs(est) < float(min_effect) else ("a" if lo > 0 else "b")
    return "none"


def verdict(result: Mapping[str, Any], name_a: str = "A", name_b: str = "B", min_effect: float = 0.0) -> str:
    """One line from a bootstrap result: which model is better, that the difference is real but smaller than
    ``min_effect`` (the smallest difference that matters, in the metric's units), or that the interval includes
    no difference."""
    lo, hi = result["ci_low"], result["ci_high"]
    level = f"{100 * result['confidence']:.0f}%"
    span = f"difference {result['estimate']:+.3f}, {level} interval [{lo:+.3f}, {hi:+.3f}], n={result['n']}"
    kind = outcome(result, min_effect)
    if kind == "undetermined":
        return f"undetermined ({span})"
    if kind == "a":
        return f"{name_a} better ({span})"
    if kind == "b":
        return f"{name_b} better ({span})"
    if kind == "negligible":
        side = name_a if lo > 0 else name_b
        return (f"negligible difference: {side} higher by less than {min_effect:g}, the smallest difference "
                f"counted ({span})")
    return f"no clear difference ({span})"
