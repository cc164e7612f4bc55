"""Pieces of the downstream bundles (layer segmentation, disease classification) that a JSON config cannot hold:

* :class:`PrepareClassBatch`: ``prepare_batch`` for MONAI engines, image plus an integer target from another
  key (``class``), so the datalist's ``label`` (a layer map path) is left alone;
* :class:`StackOutputs`: ``output_transform`` that stacks decollated engine outputs into batch tensors (for Ignite
  metrics such as ``Accuracy``);
* :class:`ClassificationReportHandler` / :class:`SegmentationReportHandler`: evaluator handlers that collect
  every prediction and write the full metric report (per device and pooled; per layer and mean) as JSON + CSV;
* :class:`SegmentationProcessor` / :class:`ClassificationProcessor`: ``BatchInference`` processors, one label
  map per volume in the input geometry, or class probabilities;
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from oct_foundation import io
from oct_foundation.errors import OCTInputError

__all__ = [
    "PrepareClassBatch",
    "StackOutputs",
    "ClassificationReportHandler",
    "SegmentationReportHandler",
    "SegmentationProcessor",
    "ClassificationProcessor",
    "BestModelExport",
]

logger = logging.getLogger("oct_foundation.engines")


class BestModelExport:
    """Evaluator handler: when ``metric_name`` improves, write the plain ``state_dict`` of ``network`` to
    ``path`` (``models/model.pt``) atomically (rank 0 only), with the network's description ``model.json``
    beside it (:func:`oct_foundation.networks.model_files.save_model`; the metric under ``extra.best``), plus a
    sidecar ``<path>.json`` with the metric, its value and the trainer epoch. MONAI's ``CheckpointSaver`` writes
    in place, so a crash during the write could leave a truncated best model; this never does. The weights load with ``weights_only=True``.
    """

    def __init__(self, network: torch.nn.Module, path: str, metric_name: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.network = network
        self.path = str(path)
        self.metric_name = metric_name
        self.mode = mode
        self.best: float | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _better(self, value: float) -> bool:
        if value != value:  # NaN never improves
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def __call__(self, engine) -> None:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"metric '{self.metric_name}' not computed (have: {sorted(engine.state.metrics)})")
        value = float(engine.state.metrics[self.metric_name])
        if not self._better(value):
            return
        self.best = value
        from oct_foundation.engines.runs import process_rank

        if process_rank() != 0:
            return
        from oct_foundation.networks.model_files import export_model

        # a MONAI evaluator run by ValidationHandler carries the trainer's epoch
        info = {"metric": self.metric_name, "value": value, "mode": self.mode, "epoch": int(engine.state.epoch)}
        export_model(self.network, self.path, extra={"best": info})
        io.save_json(info, self.path + ".json")
        logger.info("best %s %.4f: saved %s", self.metric_name, value, self.path)


# ------------------------------------------------------------------------------------------- engine helpers
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

    def _rank0(self) -> bool:
        from oct_foundation.engines.runs import process_rank

        return process_rank() == 0

    def _collect(self, engine) -> None:
        outputs = _as_list(engine.state.output)
        items = _batch_items(engine)
        if len(items) != len(outputs):
            items = [{}] * len(outputs)
        for out, item in zip(outputs, items):
            self.update(out, item)

    def _complete(self, engine) -> None:
        self.result = self.compute()
        if self._rank0():
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
        self.ids.append(str(_value(case)) if case is not None else str(len(self.ids)))

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
        cid = str(_value(case)) if case is not None else None
        self.report.update(pred[None], label[None], case_ids=[cid] if cid is not None else None)
        self.shapes.append("x".join(str(int(s)) for s in label.shape[1:]))  # the grid scored, D x H x W

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


# ------------------------------------------------------------------------------------------- inference
class _VolumeProcessor:
    """Shared reading for the processors: load at full depth, remember the input geometry, preprocess."""

    def __init__(self, network: torch.nn.Module, device="cpu", target_spacing=None, image_size=None,
                 normalize: bool | str = True, transforms: Callable | Sequence | None = None,
                 inferer: Callable | None = None, amp: bool = False, image_key: str = "image"):
        from monai.transforms import Compose

        from oct_foundation.data import build_preprocessing
        from oct_foundation.data.readers import LoadOCTd

        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.image_key = image_key
        self.loader = LoadOCTd([image_key])
        if transforms is None:
            transforms = build_preprocessing(keys=(image_key,), d_target=None, target_spacing=target_spacing,
                                             image_size=image_size, normalize=normalize, train=False,
                                             load=False, eval_full_depth=True)
        self.transforms = Compose(list(transforms)) if isinstance(transforms, (list, tuple)) else transforms
        self.inferer = inferer
        self.amp = bool(amp)

    def _read(self, item: Mapping) -> tuple[torch.Tensor, dict]:
        """``(x [C, d, h, w] preprocessed, geometry of the input as read)``.

        An item holding a path is loaded and preprocessed here; an item already loaded and preprocessed (a
        MONAI ``Dataset`` given to ``BatchInference``) is used as is, its input geometry read from the meta
        the reader recorded (``spatial_shape``, ``original_affine``), which resizing keeps.
        """
        if self.image_key not in item:
            raise OCTInputError("<input>", f"item has no '{self.image_key}'")
        img = item[self.image_key]
        if isinstance(img, (str, os.PathLike)):
            data = self.loader(dict(item))
            img = data[self.image_key]
            if img.ndim != 4:
                raise OCTInputError(item[self.image_key], f"expected a volume [C, D, H, W], got {tuple(img.shape)}")
            meta = dict(getattr(img, "meta", {}) or {})
            geometry = {"shape": tuple(int(s) for s in img.shape[1:]), "spacing": meta.get("spacing"),
                        "affine": meta.get("original_affine", meta.get("affine"))}
            x = self.transforms(data)[self.image_key]
        else:
            x = img
            if x.ndim != 4:
                raise OCTInputError("<input>", f"expected a volume [C, D, H, W], got {tuple(x.shape)}")
            meta = dict(getattr(x, "meta", {}) or {})
            shape = meta.get("spatial_shape")
            shape = tuple(int(s) for s in np.asarray(shape).reshape(-1)[:3]) if shape is not None else \
                tuple(int(s) for s in x.shape[1:])
            geometry = {"shape": shape, "spacing": meta.get("spacing"),
                        "affine": meta.get("original_affine", meta.get("affine"))}
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        return x.float(), geometry

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        xb = x[None].to(self.device)
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else torch.autocast(
            self.device.type, enabled=False)
        with ctx:
            out = self.inferer(xb, self.network) if self.inferer is not None else self.network(xb)
        out = out.float()
        if not torch.isfinite(out).all():
            raise OCTInputError("<input>", "network produced non-finite values")
        return out[0]


def _affine(geometry: Mapping) -> np.ndarray:
    aff = geometry.get("affine")
    if aff is not None:
        return np.asarray(aff.cpu() if isinstance(aff, torch.Tensor) else aff, dtype=np.float64)
    sp = geometry.get("spacing")
    sp = [1.0, 1.0, 1.0] if sp is None else [float(s) for s in np.asarray(sp).reshape(-1)[:3]]
    return np.diag(sp + [1.0])


class SegmentationProcessor(_VolumeProcessor):
    """``BatchInference`` processor: one uint8 layer label map per volume, in the input geometry.

    The volume is read at full depth, preprocessed (optional spacing, in-plane resize, intensity
    normalisation), segmented, its class probabilities resampled (trilinear) back to the input's
    ``(D, H, W)`` and argmax-ed; the map is written as ``<out_stem>_seg.nii.gz`` (array ``[D, H, W]``, the
    input's affine). The summary row gives the file name, shape and each layer's volume in mm^3.
    """

    def __init__(self, network: torch.nn.Module, num_classes: int, layer_names: Sequence[str] | None = None,
                 suffix: str = "_seg.nii.gz", **kwargs):
        super().__init__(network, **kwargs)
        self.num_classes = int(num_classes)
        names = list(layer_names) if layer_names is not None else [f"label_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} layer names for {self.num_classes} classes")
        self.layer_names = names
        self.suffix = suffix

    def outputs(self, out_stem: str) -> list[str]:
        return [f"{out_stem}{self.suffix}"]

    def __call__(self, item: Mapping, out_stem: str) -> dict[str, Any]:
        import nibabel as nib

        x, geometry = self._read(item)
        logits = self._run(x)  # [K, d, h, w] on the preprocessed grid
        if logits.shape[0] != self.num_classes:
            raise OCTInputError("<input>", f"network gave {logits.shape[0]} channels, expected {self.num_classes}")
        prob = logits.softmax(0)[None]
        shape = geometry["shape"]
        if tuple(prob.shape[2:]) != shape:
            prob = F.interpolate(prob, size=shape, mode="trilinear", align_corners=False)
        labels = prob[0].argmax(0).to(torch.uint8).cpu().numpy()  # [D, H, W]
        affine = _affine(geometry)
        path = self.outputs(out_stem)[0]
        with io.atomic_output(path) as tmp:
            nib.save(nib.Nifti1Image(labels, affine), tmp)
        voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
        counts = np.bincount(labels.reshape(-1), minlength=self.num_classes)
        row: dict[str, Any] = {"label_map": os.path.basename(path), "shape": "x".join(str(s) for s in shape)}
        for name, c in zip(self.layer_names, counts):
            row[f"volume_mm3_{name}"] = round(float(c) * voxel_mm3, 6)
        return row


class ClassificationProcessor(_VolumeProcessor):
    """``BatchInference`` processor: class probabilities of each volume (full depth).

    Writes ``<out_stem>_probs.json`` (``{"probabilities": {name: p}, "prediction": name}``); the summary row
    holds the prediction and one ``prob_<name>`` column per class.
    """

    def __init__(self, network: torch.nn.Module, class_names: Sequence[str], suffix: str = "_probs.json",
                 **kwargs):
        super().__init__(network, **kwargs)
        self.class_names = [str(c) for c in class_names]
        self.suffix = suffix

    def outputs(self, out_stem: str) -> list[str]:
        return [f"{out_stem}{self.suffix}"]

    def __call__(self, item: Mapping, out_stem: str) -> dict[str, Any]:
        x, _ = self._read(item)
        logits = self._run(x).reshape(-1)
        if logits.numel() != len(self.class_names):
            raise OCTInputError("<input>", f"network gave {logits.numel()} scores for {len(self.class_names)} classes")
        prob = logits.softmax(0).tolist()
        pred = self.class_names[int(np.argmax(prob))]
        probs = {n: round(float(p), 6) for n, p in zip(self.class_names, prob)}
        path = self.outputs(out_stem)[0]
        io.save_json({"probabilities": probs, "prediction": pred}, path)
        return {"prediction": pred, **{f"prob_{n}": p for n, p in probs.items()},
                "probabilities": os.path.basename(path)}
