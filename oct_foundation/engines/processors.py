"""The one base of every ``BatchInference`` processor, and the writers they share.

A processor is what :class:`~oct_foundation.engines.batch_inference.BatchInference` runs on each input:
``outputs(out_stem) -> [paths]`` (all present = finished) and ``__call__(item, out_stem) -> row``.
:class:`InferenceProcessor` holds everything the processors of the package have in common, so that each of them
only says what it computes and writes:

* the network, moved to ``device`` and put in eval mode;
* reading a volume (:meth:`~InferenceProcessor.read`): an item holding a path is read and preprocessed here
  (``transforms``; with ``input_geometry`` it is first read alone, so that the geometry of the input as read is
  known), an item already loaded by a MONAI ``Dataset`` is used as is; either way ``[C, D, H, W]`` float32, checked
  for shape and finite values, and its geometry (shape as read, spacing, affine) from the reader's meta;
* running the network (:meth:`~InferenceProcessor.run`): ``[1, C, D, H, W]`` through the config's ``inferer``
  (default ``SimpleInferer``) under ``torch.no_grad()`` and, with ``amp``, bf16 autocast; non-finite outputs raise;
* output names ``<out_stem><suffix>`` (:meth:`~InferenceProcessor.output_suffixes`);
* atomic writers: tensors as ``.pt`` / ``.npy`` (:meth:`~InferenceProcessor._save`), NIfTI
  (:func:`save_nifti`, :func:`save_volume_nifti`); JSON goes through :func:`oct_foundation.io.save_json`.

The processors: :class:`~oct_foundation.engines.embedding_inference.EmbeddingProcessor`;
:class:`~oct_foundation.engines.downstream_inference.SegmentationProcessor`,
:class:`~oct_foundation.engines.downstream_inference.ClassificationProcessor`;
:class:`~oct_foundation.engines.maisi_inference.MaisiEncodeProcessor`, ``MaisiDecodeProcessor``,
``MaisiEvaluateProcessor``.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from oct_foundation import io
from oct_foundation.errors import OCTInputError

__all__ = ["InferenceProcessor", "spacing_of", "affine_of", "save_nifti", "save_volume_nifti"]


class InferenceProcessor:
    """Base of every ``BatchInference`` processor (see the module docstring).

    Args:
        network: the network the processor runs (moved to ``device``, eval mode), kept as ``self.network``.
        device: where it runs.
        transforms: preprocessing of an item ``{image_key: path}`` (a callable or a list of dictionary transforms,
            composed); None: the full-depth chain :func:`oct_foundation.data.build_preprocessing`
            (``d_target=None, train=False, eval_full_depth=True``) with ``target_spacing``, ``image_size`` and
            ``normalize``.
        inferer: a MONAI ``Inferer`` (``inferer(inputs, network)``); None: ``SimpleInferer``.
        amp: bf16 autocast around the network.
        image_key: the item key of the volume.
        target_spacing, image_size, normalize: the default ``transforms``' settings.
        input_geometry: read a path item with ``LoadOCTd`` alone first (``transforms`` then must not load), so
            that :meth:`read` gives the geometry of the input as read, before any resampling.
    """

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu",
                 transforms: Callable | Sequence | None = None, inferer: Callable | None = None, amp: bool = False,
                 image_key: str = "image", target_spacing: Sequence[float] | None = None,
                 image_size: Sequence[int] | None = None, normalize: bool | str = True,
                 input_geometry: bool = False) -> None:
        from monai.transforms import Compose

        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.image_key = image_key
        self.loader = None
        if input_geometry:
            from oct_foundation.data.readers import LoadOCTd

            self.loader = LoadOCTd([image_key])
        if transforms is None:
            from oct_foundation.data import build_preprocessing

            transforms = build_preprocessing(keys=(image_key,), d_target=None, target_spacing=target_spacing,
                                             image_size=image_size, normalize=normalize, train=False,
                                             load=not input_geometry, eval_full_depth=True)
        self.transforms = Compose(list(transforms)) if isinstance(transforms, (list, tuple)) else transforms
        if inferer is None:
            from monai.inferers import SimpleInferer

            inferer = SimpleInferer()
        self.inferer = inferer
        self.amp = bool(amp)

    # ------------------------------------------------------------------------------------------- outputs
    #: the one output of a processor that writes one file per input (else override :meth:`output_suffixes`)
    suffix: str | None = None

    def output_suffixes(self) -> list[str]:
        """What follows ``out_stem`` in the name of each file written for one input (default: ``[suffix]``)."""
        if self.suffix is None:
            raise NotImplementedError(f"{type(self).__name__} names no output suffix")
        return [self.suffix]

    def outputs(self, out_stem: str) -> list[str]:
        """The files written for one input (all present: the input is finished)."""
        return [f"{out_stem}{s}" for s in self.output_suffixes()]

    def _save(self, tensor: torch.Tensor, path: str) -> None:
        """A tensor as float32, atomically: ``.npy`` (NumPy) by the path's suffix, else ``torch.save`` (loadable
        with ``weights_only=True``)."""
        t = tensor.detach().float().cpu().contiguous()
        if not str(path).endswith(".npy"):
            io.torch_save(t, path, buffered=True)  # a full disk is an OSError naming the file
            return
        with io.atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, t.numpy())

    # ------------------------------------------------------------------------------------------- reading
    def read(self, item: Mapping) -> tuple[torch.Tensor, dict]:
        """``(x [C, D, H, W] float32, geometry)`` of ``item``; ``geometry`` = ``{"shape": (D, H, W) of the input as
        read, "spacing", "affine"}`` (spacing / affine None where the meta has none; see :func:`spacing_of`,
        :func:`affine_of`).

        An item holding a path is read and preprocessed here; an item already loaded and preprocessed (a MONAI
        ``Dataset`` given to ``BatchInference``) is used as is, its input geometry read from the meta the reader
        recorded (``spatial_shape``, ``original_affine``), which resizing keeps.
        """
        img = item.get(self.image_key) if isinstance(item, Mapping) else None
        if img is None:
            raise OCTInputError("<input>", f"item has no '{self.image_key}'")
        name = str(img) if isinstance(img, (str, os.PathLike)) else "<input>"
        geometry = None
        if isinstance(img, (str, os.PathLike)):
            data = dict(item)
            if self.loader is not None:
                data = self.loader(data)
                loaded = data[self.image_key]
                geometry = _geometry(loaded, tuple(_as_volume(loaded, name).shape[1:]))
            img = self.transforms(data)[self.image_key]
        x = _as_volume(img, name)
        if geometry is None:
            shape = (getattr(img, "meta", None) or {}).get("spatial_shape")
            shape = tuple(int(s) for s in np.asarray(shape).reshape(-1)[:3]) if shape is not None else \
                tuple(int(s) for s in x.shape[1:])
            geometry = _geometry(img, shape)
        return x, geometry

    # ------------------------------------------------------------------------------------------- running
    def autocast(self):
        """bf16 autocast on the device with ``amp``, else autocast disabled."""
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    @torch.no_grad()
    def run(self, x: torch.Tensor, network: Callable | None = None, to_device: bool = True) -> torch.Tensor:
        """``x [C, D, H, W]`` -> the output of ``network`` (default ``self.network``) on ``[1, C, D, H, W]``
        through the inferer, float32, without the batch dimension. ``to_device=False`` leaves the input where it
        is (a network that moves pieces of it itself, such as a streamed encoder). Non-finite outputs raise."""
        xb = x[None].to(self.device) if to_device else x[None]
        with self.autocast():
            out = self.inferer(xb, self.network if network is None else network)
        out = out.float()
        if not torch.isfinite(out).all():
            raise OCTInputError("<input>", "network produced non-finite values")
        return out[0]


def _as_volume(img, name: str) -> torch.Tensor:
    """``[C, D, H, W]`` float32 (a 3D array gets a channel), refusing other shapes, empty and non-finite volumes."""
    if hasattr(img, "as_tensor"):
        x = img.as_tensor()
    else:
        x = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or min(x.shape) < 1:
        raise OCTInputError(name, f"expected a volume [C, D, H, W], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise OCTInputError(name, "volume contains NaN or infinite values")
    return x.float()


def _geometry(img, shape: tuple) -> dict:
    meta = dict(getattr(img, "meta", {}) or {})
    return {"shape": tuple(int(s) for s in shape), "spacing": meta.get("spacing"),
            "affine": meta.get("original_affine", meta.get("affine"))}


def spacing_of(geometry: Mapping) -> tuple[float, float, float]:
    """The voxel spacing ``(sd, sh, sw)`` of a geometry (:meth:`InferenceProcessor.read`), 1 mm where unknown."""
    sp = geometry.get("spacing")
    return tuple(float(s) for s in np.asarray(sp).reshape(-1)[:3]) if sp is not None else (1.0, 1.0, 1.0)


def affine_of(geometry: Mapping) -> np.ndarray:
    """The 4x4 affine of a geometry: the input's own, else ``diag(spacing, 1)``."""
    aff = geometry.get("affine")
    if aff is not None:
        return np.asarray(aff.cpu() if isinstance(aff, torch.Tensor) else aff, dtype=np.float64)
    return np.diag([*spacing_of(geometry), 1.0])


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """``array`` (``[D, H, W]`` or ``[D, H, W, C]``) as a NIfTI file with ``affine``, atomically."""
    import nibabel as nib

    with io.atomic_output(path) as tmp:
        nib.save(nib.Nifti1Image(array, affine), tmp)


def save_volume_nifti(volume: torch.Tensor, spacing: Sequence[float], path: str) -> None:
    """A volume ``[C, D, H, W]`` as float32 NIfTI (``[D, H, W]``, or ``[D, H, W, C]`` for several channels) with
    the affine ``diag(spacing, 1)``, the package's NIfTI convention."""
    arr = volume.detach().cpu().numpy().astype(np.float32)
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    save_nifti(arr, np.diag([*[float(s) for s in spacing], 1.0]), path)
