"""The downstream bundles' ``BatchInference`` processors (layer segmentation, disease classification), on the
processors' base :class:`~oct_foundation.engines.processors.InferenceProcessor` (reading at full depth with the
input's geometry, device, autocast, inferer, writers):

* :class:`SegmentationProcessor`: one label map per volume, in the input geometry;
* :class:`ClassificationProcessor`: the class probabilities of each volume.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from oct_foundation import io
from oct_foundation.engines.processors import InferenceProcessor, affine_of, save_nifti
from oct_foundation.errors import OCTInputError

__all__ = ["SegmentationProcessor", "ClassificationProcessor"]


class SegmentationProcessor(InferenceProcessor):
    """``BatchInference`` processor: one uint8 layer label map per volume, in the input geometry.

    The volume is read at full depth, preprocessed (optional spacing, in-plane resize, intensity
    normalisation), segmented, its class probabilities resampled (trilinear) back to the input's
    ``(D, H, W)`` and argmax-ed; the map is written as ``<out_stem>_seg.nii.gz`` (array ``[D, H, W]``, the
    input's affine). The summary row gives the file name, shape and each layer's volume in mm^3.

    Keyword arguments beyond its own: those of :class:`~oct_foundation.engines.processors.InferenceProcessor`
    (``device``, ``target_spacing``, ``image_size``, ``normalize``, ``transforms``, ``inferer``, ``amp``,
    ``image_key``).
    """

    def __init__(self, network: torch.nn.Module, num_classes: int, layer_names: Sequence[str] | None = None,
                 suffix: str = "_seg.nii.gz", **kwargs):
        super().__init__(network, input_geometry=True, **kwargs)
        self.num_classes = int(num_classes)
        names = list(layer_names) if layer_names is not None else [f"label_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} layer names for {self.num_classes} classes")
        self.layer_names = names
        self.suffix = suffix

    def __call__(self, item: Mapping, out_stem: str) -> dict[str, Any]:
        x, geometry = self.read(item)
        logits = self.run(x)  # [K, d, h, w] on the preprocessed grid
        if logits.shape[0] != self.num_classes:
            raise OCTInputError("<input>", f"network gave {logits.shape[0]} channels, expected {self.num_classes}")
        prob = logits.softmax(0)[None]
        shape = geometry["shape"]
        if tuple(prob.shape[2:]) != shape:
            prob = F.interpolate(prob, size=shape, mode="trilinear", align_corners=False)
        labels = prob[0].argmax(0).to(torch.uint8).cpu().numpy()  # [D, H, W]
        affine = affine_of(geometry)
        path = self.outputs(out_stem)[0]
        save_nifti(labels, affine, path)
        voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
        counts = np.bincount(labels.reshape(-1), minlength=self.num_classes)
        row: dict[str, Any] = {"label_map": os.path.basename(path), "shape": "x".join(str(s) for s in shape)}
        for name, c in zip(self.layer_names, counts):
            row[f"volume_mm3_{name}"] = round(float(c) * voxel_mm3, 6)
        return row


class ClassificationProcessor(InferenceProcessor):
    """``BatchInference`` processor: class probabilities of each volume (full depth).

    Writes ``<out_stem>_probs.json`` (``{"probabilities": {name: p}, "prediction": name}``); the summary row
    holds the prediction and one ``prob_<name>`` column per class. Other keyword arguments: those of
    :class:`~oct_foundation.engines.processors.InferenceProcessor`.
    """

    def __init__(self, network: torch.nn.Module, class_names: Sequence[str], suffix: str = "_probs.json",
                 **kwargs):
        super().__init__(network, input_geometry=True, **kwargs)
        self.class_names = [str(c) for c in class_names]
        self.suffix = suffix

    def __call__(self, item: Mapping, out_stem: str) -> dict[str, Any]:
        x, _ = self.read(item)
        logits = self.run(x).reshape(-1)
        if logits.numel() != len(self.class_names):
            raise OCTInputError("<input>", f"network gave {logits.numel()} scores for {len(self.class_names)} classes")
        prob = logits.softmax(0).tolist()
        pred = self.class_names[int(np.argmax(prob))]
        probs = {n: round(float(p), 6) for n, p in zip(self.class_names, prob)}
        path = self.outputs(out_stem)[0]
        io.save_json({"probabilities": probs, "prediction": pred}, path)
        return {"prediction": pred, **{f"prob_{n}": p for n, p in probs.items()},
                "probabilities": os.path.basename(path)}
