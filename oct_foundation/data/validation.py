"""The rules every reader applies to a volume's header before and after reading it.

One place for: voxel spacing (finite, positive, at most :data:`MAX_SPACING_MM` per voxel, else an error naming
the file or an explicit ``assume_spacing`` fallback with a warning), the voxel limit ``max_voxels`` (checked
from the header, before pixel data is decompressed or decoded) and the DICOM SOP class (Ophthalmic
Tomography only, unless ``allow_non_oct``). :class:`ReaderLimits` carries the three settings to a reader.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

from oct_foundation.errors import OCTInputError

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "MAX_SPACING_MM",
    "OPHTHALMIC_TOMOGRAPHY_SOP_CLASS",
    "ReaderLimits",
    "check_spacing",
    "check_voxels",
    "check_dicom_oct",
]

#: 512 Mi voxels: 2 GiB as float32; a large OCT cube (e.g. 1024 B-scans x 1024 x 512) is half of it.
DEFAULT_MAX_VOXELS = 512 * 1024 * 1024
#: A voxel larger than this (mm) is not an OCT voxel: the header is wrong (units, corruption).
MAX_SPACING_MM = 100.0
#: DICOM Ophthalmic Tomography Image Storage.
OPHTHALMIC_TOMOGRAPHY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"


@dataclass
class ReaderLimits:
    """What a reader accepts.

    Args:
        max_voxels: refuse a volume with more voxels (channels included) than this, read from its header.
            ``None`` or ``0``: no limit.
        assume_spacing: ``(sd, sh, sw)`` in mm used (with a warning) when a file's spacing is invalid;
            ``None``: invalid spacing is an error.
        allow_non_oct: read DICOM files that are not Ophthalmic Tomography (e.g. CT).
    """

    max_voxels: int | None = DEFAULT_MAX_VOXELS
    assume_spacing: Sequence[float] | None = None
    allow_non_oct: bool = False

    def __post_init__(self):
        if self.max_voxels is not None:
            self.max_voxels = int(self.max_voxels)
            if self.max_voxels < 0:
                raise ValueError(f"max_voxels must be >= 0, got {self.max_voxels}")
        if self.assume_spacing is not None:
            s = tuple(float(v) for v in self.assume_spacing)
            if len(s) != 3 or _bad_components(s):
                raise ValueError(f"assume_spacing must be 3 finite values in (0, {MAX_SPACING_MM}] mm, got {s}")
            self.assume_spacing = s
        self.allow_non_oct = bool(self.allow_non_oct)


def _bad_components(spacing) -> list[str]:
    bad = []
    for axis, v in zip("DHW", spacing):
        if not math.isfinite(v):
            bad.append(f"{axis}={v}")
        elif v <= 0:
            bad.append(f"{axis}={v:g} (not positive)")
        elif v > MAX_SPACING_MM:
            bad.append(f"{axis}={v:g} mm (over {MAX_SPACING_MM:g} mm per voxel)")
    return bad


def check_spacing(path, spacing: Sequence[float], limits: ReaderLimits | None = None) -> tuple:
    """``spacing`` as a tuple of floats if valid, else ``limits.assume_spacing`` (with a warning), else
    :class:`OCTInputError` naming ``path`` and the bad components."""
    try:
        s = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        s = (float("nan"),) * 3
    bad = _bad_components(s) if len(s) == 3 else [f"{len(s)} components, expected 3"]
    if not bad:
        return s
    assume = limits.assume_spacing if limits is not None else None
    if assume is not None:
        warnings.warn(f"{path}: invalid voxel spacing ({', '.join(bad)}); using assume_spacing {assume}",
                      stacklevel=2)
        return tuple(assume)
    raise OCTInputError(
        path,
        f"invalid voxel spacing {s} mm ({', '.join(bad)}); fix the file's header or pass assume_spacing "
        "(e.g. --assume_spacing \"[0.1, 0.004, 0.01]\")",
    )


def check_voxels(path, shape: Sequence[int], limits: ReaderLimits | None = None, what: str = "header") -> None:
    """:class:`OCTInputError` when ``prod(shape)`` exceeds ``limits.max_voxels`` (``what``: where the shape
    comes from, for the message)."""
    limit = limits.max_voxels if limits is not None else DEFAULT_MAX_VOXELS
    if not limit:
        return
    n = 1
    for v in shape:
        n *= max(int(v), 0)
    if n > limit:
        raise OCTInputError(
            path,
            f"volume of {n} voxels (shape {tuple(int(v) for v in shape)} from the {what}) exceeds max_voxels="
            f"{limit}{'' if what == 'decoded data' else '; refused before reading the pixel data'} "
            "(raise --max_voxels if the file is genuine)",
        )


def check_dicom_oct(path, ds, limits: ReaderLimits | None = None) -> None:
    """Refuse a DICOM dataset that is not Ophthalmic Tomography (SOP class or Modality ``OPT``), unless
    ``limits.allow_non_oct``."""
    if limits is not None and limits.allow_non_oct:
        return
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    modality = str(getattr(ds, "Modality", "") or "")
    if sop == OPHTHALMIC_TOMOGRAPHY_SOP_CLASS or modality.upper() == "OPT":
        return
    name = getattr(getattr(ds, "SOPClassUID", None), "name", "") or "unknown"
    raise OCTInputError(
        path,
        f"DICOM is not Ophthalmic Tomography (SOP class {sop or 'missing'} '{name}', modality "
        f"{modality or 'missing'}); pass allow_non_oct=True (--allow_non_oct true) to read it anyway",
    )
