"""Classification metrics per acquisition device and pooled: accuracy, macro-F1, AUROC.

AUROC is one-vs-rest macro for more than two classes (binary: AUROC of the positive class). A class that is
absent from a subgroup leaves its one-vs-rest AUROC undefined: that class gets NaN, the macro AUROC of the
subgroup is NaN (it would not be comparable with the pooled value), the macro over the classes that are present
is reported separately as ``auroc_present``, and the subgroup's ``notes`` say which classes were absent.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from oct_foundation import io as oio

__all__ = ["classification_metrics", "classification_report_rows", "save_classification_report"]

POOLED = "pooled"


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _group_metrics(y: np.ndarray, prob: np.ndarray, num_classes: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = prob.argmax(axis=1)
    out: dict[str, Any] = {
        "n": int(y.shape[0]),
        "accuracy": float(accuracy_score(y, pred)),
        # macro over the labels seen in y_true or y_pred (scikit-learn's default label set)
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    notes = []
    per_class = []
    for c in range(num_classes):
        pos = y == c
        if pos.all() or not pos.any():
            per_class.append(float("nan"))
            continue
        per_class.append(float(roc_auc_score(pos.astype(int), prob[:, c])))
    absent = [c for c in range(num_classes) if not (y == c).any()]
    if num_classes == 2:
        auroc = per_class[1]
        if math.isnan(auroc):
            notes.append(f"AUROC undefined: only class {int(y[0])} present")
        out["auroc"] = auroc
        out["auroc_present"] = auroc
    else:
        present = [v for v in per_class if not math.isnan(v)]
        out["auroc_present"] = float(np.mean(present)) if present else float("nan")
        if absent or len(present) < num_classes:
            out["auroc"] = float("nan")
            notes.append(f"macro AUROC undefined: class(es) {absent} absent; auroc_present averages the others")
        else:
            out["auroc"] = float(np.mean(per_class))
    out["auroc_per_class"] = per_class
    out["class_counts"] = [int((y == c).sum()) for c in range(num_classes)]
    out["notes"] = notes
    return out


def classification_metrics(
    y_true: Sequence[int],
    scores,
    groups: Sequence | None = None,
    num_classes: int | None = None,
    from_logits: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 and AUROC, pooled and per group (device).

    Args:
        y_true: integer labels ``[N]``.
        scores: class probabilities ``[N, C]`` (or logits with ``from_logits=True``; a ``[N]`` vector is the
            positive-class probability of a binary task).
        groups: optional group name per sample ``[N]`` (e.g. the acquisition device).
        num_classes: C; defaults to the number of score columns.
        class_names: optional names stored in the report.

    Returns:
        ``{"num_classes", "class_names", "pooled": {...}, "per_group": {name: {...}}}`` where each entry holds
        ``n, accuracy, macro_f1, auroc, auroc_present, auroc_per_class, class_counts, notes``.
    """
    y = _as_numpy(y_true).astype(int).reshape(-1)
    s = _as_numpy(scores).astype(np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be [N, C] with N={y.shape[0]}, got shape {tuple(s.shape)}")
    prob = _softmax(s) if from_logits else s
    c = int(num_classes or prob.shape[1])
    if prob.shape[1] != c:
        raise ValueError(f"scores have {prob.shape[1]} columns but num_classes={c}")
    if y.size and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"labels must lie in [0, {c - 1}], got range [{y.min()}, {y.max()}]")
    report: dict[str, Any] = {
        "num_classes": c,
        "class_names": list(class_names) if class_names is not None else [str(i) for i in range(c)],
        POOLED: _group_metrics(y, prob, c),
        "per_group": {},
    }
    if groups is not None:
        g = np.asarray([str(v) for v in _as_numpy(groups).reshape(-1)])
        if g.shape[0] != y.shape[0]:
            raise ValueError(f"groups has {g.shape[0]} entries for {y.shape[0]} samples")
        for name in sorted(set(g.tolist())):
            sel = g == name
            report["per_group"][name] = _group_metrics(y[sel], prob[sel], c)
    return report


def classification_report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (one per group, pooled first) for a CSV table."""
    rows = []
    entries = [(POOLED, report[POOLED])] + sorted(report.get("per_group", {}).items())
    names = report.get("class_names") or [str(i) for i in range(report["num_classes"])]
    for name, m in entries:
        row = {"group": name, "n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
               "auroc": m["auroc"], "auroc_present": m["auroc_present"]}
        for cname, v in zip(names, m["auroc_per_class"]):
            row[f"auroc_{cname}"] = v
        row["notes"] = "; ".join(m["notes"])
        rows.append(row)
    return rows


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def save_classification_report(report: dict[str, Any], json_path=None, csv_path=None) -> None:
    """Write the report as JSON (NaN as ``null``) and/or CSV (one row per group), atomically."""
    if json_path is not None:
        oio.save_json(_nan_to_none(report), json_path)
    if csv_path is not None:
        oio.write_csv(classification_report_rows(report), csv_path)
