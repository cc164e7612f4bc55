"""Evaluator handlers that collect every prediction of a run and write the full metric report when it completes.
With several processes (``torch.distributed`` initialised, each rank scoring its share of the cases) the ranks'
predictions are gathered first, so the report and the metrics cover every case; rank 0 writes, and every rank
puts the same pooled numbers into ``engine.state.metrics`` (so best-model selection agrees across ranks):

* :class:`ClassificationReportHandler`: accuracy, macro-F1 and AUROC per device and pooled, and the per-case class
  probabilities, as JSON + CSV;
* :class:`SegmentationReportHandler`: Dice and IoU per layer and their mean, per case, as JSON + CSV.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from oct_foundation import io
from oct_foundation.engines.runs import process_rank, process_world_size

__all__ = ["ClassificationReportHandler", "SegmentationReportHandler"]

logger = logging.getLogger("oct_foundation.engines")


def _as_list(x) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _batch_items(engine) -> list[Mapping]:
    """The current batch as a list of per-item dicts (MONAI engines decollate ``state.batch``)."""
    batch = engine.state.batch
    if isinstance(batch, Mapping):
        n = None
        for v in batch.values():
            if isinstance(v, (list, tuple)) or (isinstance(v, torch.Tensor) and v.ndim > 0):
                n = len(v)
                break
        n = n or 1
        return [{k: (v[i] if isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n else v)
                 for k, v in batch.items()} for i in range(n)]
    return list(batch)


def _gather(state) -> list:
    """Every rank's ``state`` (any picklable object), in rank order; ``[state]`` in a single process."""
    world = process_world_size()
    if world == 1:
        return [state]
    out: list = [None] * world
    torch.distributed.all_gather_object(out, state)
    return out


def _concat(states: Sequence[Mapping[str, list]], keys: Sequence[str]) -> dict[str, list]:
    """The per-key lists of several states joined in order."""
    return {k: [x for st in states for x in st[k]] for k in keys}


def _fallback_id(i: int) -> str:
    """The id of a case that brings none: its index, prefixed by the rank when several ranks score cases."""
    return str(i) if process_world_size() == 1 else f"rank{process_rank()}-{i}"


def _value(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


class _ReportHandler:
    """Collects per-item outputs over an evaluator run and writes a report when it completes."""

    def __init__(self, output_dir: str, json_name: str, csv_name: str):
        self.output_dir = str(output_dir)
        self.json_path = io.join(self.output_dir, json_name) if json_name else None
        self.csv_path = io.join(self.output_dir, csv_name) if csv_name else None
        self.result: dict[str, Any] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _collect(self, engine) -> None:
        outputs = _as_list(engine.state.output)
        items = _batch_items(engine)
        if len(items) != len(outputs):
            items = [{}] * len(outputs)
        for out, item in zip(outputs, items):
            self.update(out, item)

    def _complete(self, engine) -> None:
        states = _gather(self.state())
        if len(states) > 1:
            self.load_states(states)
        self.result = self.compute()
        if process_rank() == 0:
            self.save(self.result)
        for k, v in self.summary(self.result).items():
            engine.state.metrics[k] = v


class ClassificationReportHandler(_ReportHandler):
    """Accuracy, macro-F1 and AUROC per ``group_key`` (device) and pooled, written as JSON and CSV.

    Reads ``output[pred_key]`` (logits ``[C]``, or probabilities with ``from_logits=False``) and
    ``output[label_key]`` per item, and the group from the batch item (``device``). Also puts ``accuracy``,
    ``macro_f1`` and ``auroc`` (pooled) into ``engine.state.metrics``. The per-case class probabilities go to
    the report's ``"cases"`` and to ``cases_csv_name`` (``case, group, label, predicted, prob_<class>...``), so
    that two encoders scored on the same cases can be compared pairwise
    (:func:`oct_foundation.metrics.comparison.compare_classifiers`).
    """

    def __init__(self, output_dir: str, num_classes: int, class_names: Sequence[str] | None = None,
                 group_key: str = "device", pred_key: str = "pred", label_key: str = "label",
                 from_logits: bool = True, json_name: str = "classification_metrics.json",
                 csv_name: str = "classification_metrics.csv", id_key: str = "case_id",
                 cases_csv_name: str | None = "classification_cases.csv"):
        super().__init__(output_dir, json_name, csv_name)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.group_key, self.pred_key, self.label_key, self.id_key = group_key, pred_key, label_key, id_key
        self.from_logits = from_logits
        self.cases_csv_path = io.join(self.output_dir, cases_csv_name) if cases_csv_name else None
        self._reset()

    def _reset(self, engine=None) -> None:
        self.scores: list[np.ndarray] = []
        self.labels: list[int] = []
        self.groups: list[str] = []
        self.ids: list[str] = []

    def update(self, out: Mapping, item: Mapping) -> None:
        pred = torch.as_tensor(out[self.pred_key]).detach().float().cpu().reshape(-1)
        label = torch.as_tensor(out[self.label_key]).detach().cpu().reshape(-1)
        if label.numel() > 1:  # one-hot target
            label = label.argmax()
        self.scores.append(pred.numpy())
        self.labels.append(int(label.reshape(-1)[0]))
        self.groups.append(str(_value(item.get(self.group_key, "all"))))
        case = item.get(self.id_key)
        self.ids.append(str(_value(case)) if case is not None else _fallback_id(len(self.ids)))

    def state(self) -> dict[str, list]:
        return {"scores": self.scores, "labels": self.labels, "groups": self.groups, "ids": self.ids}

    def load_states(self, states: Sequence[Mapping[str, list]]) -> None:
        """Replace the collected cases with those of every rank (in rank order)."""
        joined = _concat(states, ("scores", "labels", "groups", "ids"))
        self.scores, self.labels, self.groups, self.ids = (joined[k] for k in ("scores", "labels", "groups", "ids"))

    def compute(self) -> dict[str, Any]:
        from oct_foundation.metrics.classification import _softmax, classification_metrics

        scores = np.stack(self.scores)
        result = classification_metrics(np.asarray(self.labels), scores, groups=self.groups,
                                        num_classes=self.num_classes, from_logits=self.from_logits,
                                        class_names=self.class_names)
        prob = _softmax(scores.astype(np.float64)) if self.from_logits else scores
        names = result["class_names"]
        result["cases"] = [
            {"case": cid, "group": g, "label": int(y), "predicted": int(np.argmax(p)),
             **{f"prob_{n}": float(v) for n, v in zip(names, p)}}
            for cid, g, y, p in zip(self.ids, self.groups, self.labels, prob)
        ]
        return result

    def save(self, result) -> None:
        from oct_foundation.metrics.classification import save_classification_report

        save_classification_report(result, self.json_path, self.csv_path)
        if self.cases_csv_path and result.get("cases"):
            io.write_csv(result["cases"], self.cases_csv_path)
        p = result["pooled"]
        logger.info("classification: n=%d accuracy=%.4f macro_f1=%.4f auroc=%.4f", p["n"], p["accuracy"],
                    p["macro_f1"], p["auroc"])

    @staticmethod
    def summary(result) -> dict[str, float]:
        p = result["pooled"]
        return {"accuracy": p["accuracy"], "macro_f1": p["macro_f1"], "auroc": p["auroc"]}


def _label_map(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, D, H, W]`` logits / one-hot (K = num_classes) or ``[1, D, H, W]`` labels -> ``[1, D, H, W]`` long."""
    x = torch.as_tensor(x).detach().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.shape[0] == num_classes and num_classes > 1:
        return x.argmax(0, keepdim=True).long()
    if x.shape[0] != 1:
        raise ValueError(f"expected [{num_classes} or 1, D, H, W], got {tuple(x.shape)}")
    return x.round().long()


class SegmentationReportHandler(_ReportHandler):
    """Dice and IoU per layer and their mean, from full-size predictions (any depth per item), as JSON + CSV.

    ``output[pred_key]``: logits or one-hot ``[K, D, H, W]`` or a label map ``[1, D, H, W]``;
    ``output[label_key]``: label map ``[1, D, H, W]`` (or one-hot). Conventions as
    :class:`oct_foundation.metrics.SegmentationReport`. Also sets ``dice_mean`` / ``iou_mean`` in
    ``engine.state.metrics``.
    """

    def __init__(self, output_dir: str, num_classes: int, layer_names: Sequence[str] | None = None,
                 include_background: bool = False, empty: str = "nan", pred_key: str = "pred",
                 label_key: str = "label", id_key: str = "case_id",
                 json_name: str = "segmentation_metrics.json", csv_name: str = "segmentation_metrics.csv",
                 cases_csv_name: str | None = "segmentation_cases.csv"):
        super().__init__(output_dir, json_name, csv_name)
        from oct_foundation.metrics.segmentation import SegmentationReport

        self.num_classes = int(num_classes)
        self.report = SegmentationReport(self.num_classes, include_background, empty, layer_names)
        self.pred_key, self.label_key, self.id_key = pred_key, label_key, id_key
        self.cases_csv_path = io.join(self.output_dir, cases_csv_name) if cases_csv_name else None
        self.shapes: list[str] = []

    def _reset(self, engine=None) -> None:
        self.report.reset()
        self.shapes: list[str] = []

    def update(self, out: Mapping, item: Mapping) -> None:
        pred = _label_map(out[self.pred_key], self.num_classes)
        label = _label_map(out[self.label_key], self.num_classes)
        case = item.get(self.id_key)
        cid = str(_value(case)) if case is not None else _fallback_id(len(self.shapes))
        self.report.update(pred[None], label[None], case_ids=[cid])
        self.shapes.append("x".join(str(int(s)) for s in label.shape[1:]))  # the grid scored, D x H x W

    def state(self) -> dict[str, Any]:
        return {"report": self.report.state(), "shapes": self.shapes}

    def load_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Replace the collected cases with those of every rank (in rank order)."""
        self.report.load_states([st["report"] for st in states])
        self.shapes = _concat(states, ("shapes",))["shapes"]

    def compute(self) -> dict[str, Any]:
        result = self.report.aggregate()
        for case, shape in zip(result["cases"], self.shapes):
            case["shape"] = shape
        return result

    def save(self, result) -> None:
        from oct_foundation.metrics.segmentation import save_segmentation_report

        save_segmentation_report(result, self.json_path, self.csv_path)
        if self.cases_csv_path and result["cases"]:
            io.write_csv(result["cases"], self.cases_csv_path)
        logger.info("segmentation: %d cases, mean Dice %.4f, mean IoU %.4f", result["n_cases"],
                    result["dice_mean"], result["iou_mean"])

    @staticmethod
    def summary(result) -> dict[str, float]:
        return {"dice_mean": result["dice_mean"], "iou_mean": result["iou_mean"]}
