"""Layer-segmentation metrics: Dice and IoU per layer and their mean, computed on full-depth label maps.

The per-case values come from MONAI's ``DiceMetric`` / ``MeanIoU`` on one-hot maps. Empty-class convention
(per case and class):

* reference empty, prediction not empty -> 0 (a false positive layer is penalised);
* both empty -> NaN with ``empty="nan"`` (the default; excluded from every mean) or 1 with ``empty="one"``.

Means over cases ignore NaN; the overall mean is the mean of the per-layer means (each layer counts once).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from oct_foundation import io as oio

__all__ = ["segmentation_metrics", "SegmentationReport", "save_segmentation_report", "per_case_scores"]


def _to_labels(x: torch.Tensor, name: str) -> torch.Tensor:
    """``[B,1,D,H,W]`` or ``[B,D,H,W]`` integer label maps -> ``[B,1,D,H,W]`` long."""
    x = torch.as_tensor(x)
    if x.ndim == 4:
        x = x.unsqueeze(1)
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected a label map [B,1,D,H,W] or [B,D,H,W], got {tuple(x.shape)}")
    if x.is_floating_point():
        x = x.round()
    return x.long()


def per_case_scores(pred, label, num_classes: int, include_background: bool = False,
                    empty: str = "nan") -> dict[str, torch.Tensor]:
    """Dice and IoU per case and class.

    Args:
        pred, label: integer label maps ``[B,1,D,H,W]`` (or ``[B,D,H,W]``), values in ``[0, num_classes)``.
        num_classes: number of labels including background 0.
        include_background: whether class 0 is scored.
        empty: ``"nan"`` or ``"one"``, the score when a class is absent from both maps.

    Returns:
        ``{"dice": [B, K], "iou": [B, K]}`` with K = num_classes (or num_classes - 1 without background).
    """
    from monai.metrics import DiceMetric, MeanIoU
    from monai.networks.utils import one_hot

    if empty not in ("nan", "one"):
        raise ValueError(f"empty must be 'nan' or 'one', got {empty!r}")
    p = _to_labels(pred, "prediction")
    y = _to_labels(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from label shape {tuple(y.shape)}")
    for name, t in (("prediction", p), ("label", y)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name}: values must lie in [0, {num_classes - 1}], got [{t.min()}, {t.max()}]")
    p1 = one_hot(p, num_classes=num_classes, dim=1)
    y1 = one_hot(y, num_classes=num_classes, dim=1)
    # ignore_empty=False: reference empty -> 1 if prediction empty else 0; both-empty is then set below
    dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=False)(p1, y1)
    iou = MeanIoU(include_background=include_background, reduction="none", ignore_empty=False)(p1, y1)
    if empty == "nan":
        start = 0 if include_background else 1
        both_empty = (p1[:, start:].flatten(2).sum(-1) == 0) & (y1[:, start:].flatten(2).sum(-1) == 0)
        dice = dice.masked_fill(both_empty, float("nan"))
        iou = iou.masked_fill(both_empty, float("nan"))
    return {"dice": dice.float().cpu(), "iou": iou.float().cpu()}


def _nanmean(x: np.ndarray, axis=None):
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(x)
        count = valid.sum(axis=axis)
        total = np.where(valid, x, 0.0).sum(axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _summarise(dice: np.ndarray, iou: np.ndarray, names: list[str]) -> dict[str, Any]:
    d_layer = _nanmean(dice, axis=0) if dice.size else np.full(len(names), np.nan)
    i_layer = _nanmean(iou, axis=0) if iou.size else np.full(len(names), np.nan)
    return {
        "n_cases": int(dice.shape[0]),
        "layers": names,
        "dice_per_layer": {n: float(v) for n, v in zip(names, d_layer)},
        "iou_per_layer": {n: float(v) for n, v in zip(names, i_layer)},
        "dice_mean": float(_nanmean(np.asarray(d_layer))),
        "iou_mean": float(_nanmean(np.asarray(i_layer))),
    }


def _layer_names(num_classes: int, include_background: bool, layer_names: Sequence[str] | None) -> list[str]:
    start = 0 if include_background else 1
    if layer_names is None:
        return [f"layer_{c}" for c in range(start, num_classes)]
    names = list(layer_names)
    if len(names) == num_classes:
        names = names[start:]
    if len(names) != num_classes - start:
        raise ValueError(f"layer_names has {len(layer_names)} names for {num_classes} classes")
    return names


def segmentation_metrics(pred, label, num_classes: int, include_background: bool = False, empty: str = "nan",
                         layer_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Dice and IoU per layer (mean over cases) and their mean over layers, for a batch of label maps.

    Shapes as in :func:`per_case_scores`. Returns ``{"n_cases", "layers", "dice_per_layer": {name: v},
    "iou_per_layer": {...}, "dice_mean", "iou_mean"}``.
    """
    s = per_case_scores(pred, label, num_classes, include_background, empty)
    names = _layer_names(num_classes, include_background, layer_names)
    return _summarise(s["dice"].numpy(), s["iou"].numpy(), names)


class SegmentationReport:
    """Accumulates per-case Dice / IoU over an evaluation (volumes of any size) and writes JSON + CSV.

    ``update(pred [B,1,D,H,W], label [B,1,D,H,W], case_ids=None)``; ``aggregate() -> dict`` as
    :func:`segmentation_metrics` plus ``"cases"`` (per-case values); ``save(json_path, csv_path)``.
    """

    def __init__(self, num_classes: int, include_background: bool = False, empty: str = "nan",
                 layer_names: Sequence[str] | None = None):
        self.num_classes = int(num_classes)
        self.include_background = include_background
        self.empty = empty
        self.names = _layer_names(self.num_classes, include_background, layer_names)
        self.reset()

    def reset(self) -> None:
        self._dice: list[np.ndarray] = []
        self._iou: list[np.ndarray] = []
        self._ids: list[str] = []

    def update(self, pred, label, case_ids: Sequence[str] | None = None) -> None:
        s = per_case_scores(pred, label, self.num_classes, self.include_background, self.empty)
        n = s["dice"].shape[0]
        ids = list(case_ids) if case_ids is not None else [str(len(self._ids) + i) for i in range(n)]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} case ids for a batch of {n}")
        self._dice.append(s["dice"].numpy())
        self._iou.append(s["iou"].numpy())
        self._ids += [str(i) for i in ids]

    def state(self) -> dict[str, list]:
        """The collected per-case scores (picklable), e.g. to gather them from several processes."""
        return {"dice": list(self._dice), "iou": list(self._iou), "ids": list(self._ids)}

    def load_states(self, states: Sequence[Mapping[str, list]]) -> None:
        """Replace the collected cases with those of several :meth:`state` results, in order."""
        self._dice = [x for st in states for x in st["dice"]]
        self._iou = [x for st in states for x in st["iou"]]
        self._ids = [x for st in states for x in st["ids"]]

    def aggregate(self) -> dict[str, Any]:
        k = len(self.names)
        dice = np.concatenate(self._dice) if self._dice else np.zeros((0, k))
        iou = np.concatenate(self._iou) if self._iou else np.zeros((0, k))
        out = _summarise(dice, iou, self.names)
        out["cases"] = [
            {"case": cid, **{f"dice_{n}": float(d) for n, d in zip(self.names, drow)},
             **{f"iou_{n}": float(v) for n, v in zip(self.names, irow)}}
            for cid, drow, irow in zip(self._ids, dice, iou)
        ]
        return out

    def save(self, json_path=None, csv_path=None) -> dict[str, Any]:
        result = self.aggregate()
        save_segmentation_report(result, json_path, csv_path)
        return result


def save_segmentation_report(result: dict[str, Any], json_path=None, csv_path=None) -> None:
    """JSON (NaN as null) and a CSV with one row per layer plus a ``mean`` row, both atomic."""
    from oct_foundation.metrics.classification import _nan_to_none

    if json_path is not None:
        oio.save_json(_nan_to_none(result), json_path)
    if csv_path is not None:
        rows = [{"layer": n, "dice": result["dice_per_layer"][n], "iou": result["iou_per_layer"][n],
                 "n_cases": result["n_cases"]} for n in result["layers"]]
        rows.append({"layer": "mean", "dice": result["dice_mean"], "iou": result["iou_mean"],
                     "n_cases": result["n_cases"]})
        oio.write_csv(rows, csv_path)
