"""OCT volume readers and writers: NIfTI, DICOM Ophthalmic Tomography, Heidelberg ``.vol``/``.e2e``, ``.npy``.

Every reader is a MONAI :class:`~monai.data.ImageReader` and returns, through ``get_data``, a channel-first
array ``[C, D, H, W]`` (D = B-scan index, H = axial depth, W = lateral) plus a meta dict with
``spacing = (sd, sh, sw)`` in mm, ``affine = diag(sd, sh, sw, 1)``, ``original_affine`` and
``filename_or_obj``. All file access goes through :mod:`oct_foundation.io`, so local paths and fsspec URLs
(``gs://``, ``memory://``) behave the same. Anything unreadable raises a one-line
:class:`~oct_foundation.errors.OCTInputError` naming the file and the problem.

:class:`LoadOCTd` is the dictionary transform to use in configs (MONAI's ``LoadImage`` turns ``memory://x``
into ``memory:/x`` because it passes names through ``pathlib.Path``).
"""
from __future__ import annotations

import contextlib

import datetime
import io as _pyio
import posixpath
import zlib
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform, RandomizableTrait

from oct_foundation import io as oio
from oct_foundation.data.suffixes import (DICOM_SUFFIXES, HEYEX_SUFFIXES, NIFTI_SUFFIXES, NUMPY_SUFFIXES,  # noqa: F401
                                          OCT_SUFFIXES, VENDOR_ONLY_SUFFIXES, VIDEO_INPUT_SUFFIXES)
from oct_foundation.data.validation import (ReaderLimits, check_dicom_oct, check_spacing,
                                            check_voxels)
from oct_foundation.errors import OCTInputError

__all__ = [
    "OCTImage",
    "NiftiOCTReader",
    "DicomOCTReader",
    "HeidelbergVolReader",
    "NumpyOCTReader",
    "OCTVolumeReader",
    "LoadOCTd",
    "LoadOCTSlicesd",
    "load_oct",
    "write_dicom_oct",
    "write_heyex_vol",
    "OPT_SOP_CLASS_UID",
    "OCT_SUFFIXES",
    "dicom_spacing",
    "nifti_orientation",
    "spacing_affine",
    "sniff_format",
]

#: Ophthalmic Tomography Image Storage.
OPT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"



def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _name(path) -> str:
    return str(path).lower()


def _has_suffix(filename, suffixes) -> bool:
    names = filename if isinstance(filename, (list, tuple)) else [filename]
    return all(any(_name(n).endswith(s) for s in suffixes) for n in names)


def _read_bytes(path) -> bytes:
    with oio.open_file(path, "rb") as f:
        return f.read()


def spacing_affine(spacing: Sequence[float]) -> np.ndarray:
    """``diag(sd, sh, sw, 1)``: the index-space affine used by every reader (no orientation, mm units)."""
    return np.diag([float(s) for s in spacing] + [1.0])


@dataclass
class OCTImage:
    """What ``read`` returns: the array ``[C, D, H, W]``, its spacing and extra meta."""

    array: np.ndarray
    spacing: tuple
    filename: str
    fmt: str
    original_affine: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    #: set when ``array`` holds only some slices (:meth:`_OCTReaderBase.read_depth`): the file's slice count D
    depth: int | None = None
    #: the file's slices that ``array`` holds (int64 ``[d]``), with ``depth``
    slice_indices: np.ndarray | None = None

    @property
    def full_shape(self) -> tuple:
        """``[C, D, H, W]`` of the whole volume in the file (``array.shape`` unless only some slices were read)."""
        shape = tuple(self.array.shape)
        return shape if self.depth is None else (shape[0], int(self.depth)) + shape[2:]


def _subsample_image(img: OCTImage, choose) -> OCTImage:
    """Keep the slices ``choose(D)`` picks of a volume that was read whole (formats without partial reading)."""
    depth = int(img.array.shape[1])
    idx = np.asarray(choose(depth), dtype=np.int64)
    if not (len(idx) == depth and np.array_equal(idx, np.arange(depth))):
        img.array = np.ascontiguousarray(img.array[:, idx])
    img.depth, img.slice_indices = depth, idx
    return img


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique indices as ``[(start, stop), ...]`` runs of consecutive values."""
    out: list[tuple[int, int]] = []
    for i in (int(v) for v in idx):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _finalise(array: np.ndarray, path, *, channel_last: bool, sanitize_nan: bool, dtype) -> np.ndarray:
    """Check dimensions and finiteness, return ``[C, D, H, W]``.

    ``array`` is ``[D, H, W]`` or 4D with channels last (``channel_last``) or first.
    """
    if array.ndim == 3:
        array = array[None]
    elif array.ndim == 4:
        if channel_last:
            array = np.moveaxis(array, -1, 0)
    else:
        raise OCTInputError(
            path,
            f"expected a 3D volume [D, H, W] (or 4D with a channel axis), got {array.ndim}D data "
            f"with shape {tuple(array.shape)}",
        )
    if min(array.shape) == 0:
        raise OCTInputError(path, f"empty volume with shape {tuple(array.shape)}")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        n_bad = int(bad.sum())
        if n_bad:
            if not sanitize_nan:
                raise OCTInputError(
                    path, f"{n_bad} non-finite (NaN/Inf) voxels; pass sanitize_nan=True to replace them with 0"
                )
            array = np.where(bad, np.zeros((), array.dtype), array)
    return np.ascontiguousarray(array)


class _OCTReaderBase(ImageReader):
    """Shared ``get_data`` and list handling; subclasses implement ``_read_one(path) -> OCTImage``."""

    suffixes: tuple = ()
    fmt = "oct"

    def __init__(self, sanitize_nan: bool = False, dtype=np.float32, max_voxels: int | None = None,
                 assume_spacing: Sequence[float] | None = None, allow_non_oct: bool = False, **kwargs):
        """
        Args:
            sanitize_nan: replace NaN/Inf voxels with 0 instead of raising :class:`OCTInputError`.
            dtype: output dtype (``None`` keeps the file's dtype).
            max_voxels, assume_spacing, allow_non_oct: see :class:`~oct_foundation.data.validation.ReaderLimits`
                (``max_voxels=None``: the default limit; ``0``: none).
        """
        super().__init__()
        self.sanitize_nan = sanitize_nan
        self.dtype = dtype
        self.kwargs = kwargs
        self.limits = ReaderLimits(assume_spacing=assume_spacing, allow_non_oct=allow_non_oct,
                                   **({} if max_voxels is None else {"max_voxels": max_voxels}))

    def verify_suffix(self, filename) -> bool:
        return _has_suffix(filename, self.suffixes)

    def read(self, data, **kwargs):
        """Read one path (returns an :class:`OCTImage`) or a sequence of paths (returns a list)."""
        if isinstance(data, (list, tuple)):
            return [self._checked(self._read_one(str(p))) for p in data]
        return self._checked(self._read_one(str(data)))

    def read_depth(self, data, choose):
        """Read only the slices ``choose`` picks: ``choose(D)`` is called once per file with its slice count D
        (from the header, before any voxel is decoded, where the format allows) and returns the sorted int64
        indices to keep. Returns an :class:`OCTImage` (a list for a sequence of paths) whose ``array`` holds
        ``[C, len(indices), H, W]``, with ``depth`` and ``slice_indices`` set; the voxels are exactly those of
        :meth:`read` followed by indexing. Formats without partial reading (see ``partial_depth``) read the
        whole volume and keep the chosen slices. The limits are checked against the whole volume's shape."""
        if isinstance(data, (list, tuple)):
            return [self._checked(self._read_depth_one(str(p), choose)) for p in data]
        return self._checked(self._read_depth_one(str(data), choose))

    #: True when :meth:`read_depth` decodes only the chosen slices (else it reads whole, then subsamples)
    partial_depth = False

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """Default: the whole volume, then the chosen slices. Formats that can do better override this."""
        return _subsample_image(self._read_one(path), choose)

    def _checked(self, img: OCTImage) -> OCTImage:
        """The rules of :mod:`oct_foundation.data.validation` on what a format reader returned."""
        check_voxels(img.filename, img.full_shape, self.limits, what="decoded data")
        img.spacing = check_spacing(img.filename, img.spacing, self.limits)
        return img

    def _read_one(self, path: str) -> OCTImage:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finalise(self, array, path, channel_last=False) -> np.ndarray:
        return _finalise(array, path, channel_last=channel_last, sanitize_nan=self.sanitize_nan, dtype=self.dtype)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``(array [C, D, H, W], meta)``; several images are concatenated along C (same D, H, W needed)."""
        imgs = img if isinstance(img, (list, tuple)) else [img]
        first = imgs[0]
        arrays = [i.array for i in imgs]
        for i in imgs[1:]:
            if i.array.shape[1:] != first.array.shape[1:]:
                raise OCTInputError(
                    i.filename, f"shape {i.array.shape[1:]} differs from {first.filename} {first.array.shape[1:]}"
                )
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        spacing = tuple(float(s) for s in first.spacing)
        spatial = first.full_shape[1:]  # the file's shape, also when only some slices were read
        meta = {
            "spacing": np.asarray(spacing, dtype=np.float64),
            "affine": spacing_affine(spacing),
            "original_affine": (
                first.original_affine if first.original_affine is not None else spacing_affine(spacing)
            ),
            "spatial_shape": np.asarray(spatial),
            "original_channel_dim": 0,
            "filename_or_obj": first.filename,
            "format": first.fmt,
        }
        meta.update(first.extra)
        return array, meta


# ----------------------------------------------------------------------------------------------- NIfTI
_RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
#: A voxel axis further than this from every world axis has no clear nearest axis: the file is refused.
NIFTI_MAX_OBLIQUE_DEG = 30.0


def nifti_orientation(img, path) -> tuple[np.ndarray | None, tuple | None]:
    """``(ornt, axcodes)`` taking ``img``'s first three axes to the package's ``RAS`` = ``[D, H, W]`` order.

    ``ornt`` is nibabel's orientation array (from ``io_orientation`` of the file's affine, for
    ``apply_orientation``); ``(None, None)`` when the file states no orientation (qform and sform codes both 0:
    the array is taken as stored). :class:`OCTInputError` names the file when the orientation is ambiguous:
    a non-finite or singular affine, a voxel axis more than :data:`NIFTI_MAX_OBLIQUE_DEG` degrees from every
    world axis (no nearest axis to reorient to), or a qform and sform that disagree on the axis codes.
    """
    import nibabel as nib
    from nibabel.orientations import io_orientation

    hdr = img.header
    sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform_code == 0 and qform_code == 0:
        return None, None
    affine = np.asarray(img.affine, dtype=np.float64)
    rzs = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(rzs)) < 1e-12:
        raise OCTInputError(path, "NIfTI affine is singular or not finite, orientation undefined")
    cosines = np.abs(rzs / np.linalg.norm(rzs, axis=0, keepdims=True))
    worst = float(np.degrees(np.arccos(np.clip(cosines.max(axis=0).min(), -1.0, 1.0))))
    if worst > NIFTI_MAX_OBLIQUE_DEG:
        raise OCTInputError(
            path,
            f"NIfTI affine is oblique ({worst:.0f} degrees from the nearest world axis, more than "
            f"{NIFTI_MAX_OBLIQUE_DEG:.0f}): no unambiguous [D, H, W] orientation; resample it to an axis-aligned grid",
        )
    if sform_code > 0 and qform_code > 0:
        sq, qq = nib.aff2axcodes(hdr.get_sform()), nib.aff2axcodes(hdr.get_qform())
        if sq != qq:
            raise OCTInputError(
                path, f"NIfTI qform ({''.join(qq)}) and sform ({''.join(sq)}) disagree on the orientation"
            )
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise OCTInputError(path, "NIfTI affine has no clear orientation for every axis")
    return ornt, nib.aff2axcodes(affine)


class NiftiOCTReader(_OCTReaderBase):
    """NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel.

    The package's convention is the one its own writer uses (:mod:`oct_foundation.data.synthetic`): affine
    ``diag(sd, sh, sw, 1)``, i.e. D runs along +x, H along +y, W along +z (orientation codes ``RAS``). A
    file written by other software with another orientation (axes permuted or flipped in its qform/sform)
    is brought into that convention with nibabel's ``io_orientation`` / ``apply_orientation``, so the same
    voxels come out along the same axes whatever the file's storage order; see :func:`nifti_orientation`
    for what is refused. Spacing is the header's voxel size (converted to mm from micron/metre units),
    permuted with the axes. The file's affine is kept as ``original_affine``; ``affine`` is
    ``diag(sd, sh, sw, 1)``; meta ``orientation`` gives the file's axis codes and whether it was reoriented.
    """

    suffixes = NIFTI_SUFFIXES
    fmt = "nifti"

    partial_depth = True

    def _read_one(self, path: str) -> OCTImage:
        return self._read(path, None)

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        return self._read(path, choose)

    def _read(self, path: str, choose) -> OCTImage:
        """The whole volume (``choose`` None) or only the slices ``choose(D)`` picks.

        Partial reading takes the chosen slices straight from an array view of the (inflated) file bytes
        along the file axis that becomes D, then applies nibabel's read scaling and the reorientation to those
        slices only: a ``.nii.gz`` is still inflated whole (gzip has no random access), but the float
        conversion, scaling, reorientation copy and finiteness check of the other slices are skipped."""
        import nibabel as nib

        raw = _read_bytes(path)
        if raw[:2] == b"\x1f\x8b":
            raw = self._gunzip_bounded(raw, path)
        else:
            self._check_header_shape(raw, path)
        if len(raw) < 348:
            raise OCTInputError(path, f"not a NIfTI file (only {len(raw)} bytes)")
        sizeof_hdr = int.from_bytes(raw[:4], "little")
        if sizeof_hdr not in (348, 540):
            sizeof_hdr = int.from_bytes(raw[:4], "big")
        klass = {348: nib.Nifti1Image, 540: nib.Nifti2Image}.get(sizeof_hdr)
        if klass is None:
            raise OCTInputError(path, "not a NIfTI file (bad header size)")
        depth = idx = None
        try:
            img = klass.from_bytes(raw)
            shape = tuple(img.dataobj.shape)
            if choose is None or len(shape) not in (3, 4):
                data = np.asanyarray(img.dataobj)
        except Exception as e:  # nibabel raises several types for short/corrupt data
            raise OCTInputError(path, f"cannot read NIfTI data, file truncated or corrupt ({_first_line(e)})") from None
        # nibabel's header checks replace zero pixdim by 1 and negative by its absolute value: read the raw
        # pixdim so that the validation sees what the file says
        raw_hdr = klass.header_class.from_fileobj(_pyio.BytesIO(raw[:sizeof_hdr]), check=False)
        ndim_sp = min(3, max(int(raw_hdr["dim"][0]), 0))
        zooms = [float(z) for z in raw_hdr["pixdim"][1:1 + ndim_sp]]
        zooms += [1.0] * (3 - len(zooms))
        unit = img.header.get_xyzt_units()[0]
        scale = {"micron": 1e-3, "meter": 1e3}.get(unit, 1.0)
        spacing = [z * scale for z in zooms]  # validated by _checked: no silent 1 mm for a zero/negative zoom
        extra = {"orientation": "as stored: no qform/sform orientation in the file"}
        if len(shape) in (3, 4):
            ornt, codes = nifti_orientation(img, path)
            if choose is not None:
                data, depth, idx = self._read_slices(img, raw, shape, ornt, choose, path)
            if ornt is not None:
                from nibabel.orientations import apply_orientation

                reoriented = not np.array_equal(ornt, _RAS_ORNT)
                if reoriented:
                    data = apply_orientation(data, ornt)  # trailing channel axis untouched
                    new = [0.0] * 3
                    for old_axis, (new_axis, _) in enumerate(ornt):
                        new[int(new_axis)] = spacing[old_axis]
                    spacing = new
                extra = {"orientation": f"{''.join(codes)}{' -> RAS (reoriented)' if reoriented else ''}"}
        arr = self._finalise(data, path, channel_last=True)
        out = OCTImage(arr, tuple(spacing), path, self.fmt,
                       original_affine=np.asarray(img.affine, dtype=np.float64), extra=extra)
        if choose is None:
            return out
        if depth is None:  # not a 3D/4D array: _finalise refused it above, kept for safety
            return _subsample_image(out, choose)
        out.depth, out.slice_indices = depth, idx
        return out

    @staticmethod
    def _read_slices(img, raw: bytes, shape: tuple, ornt, choose, path):
        """``(scaled data with only the chosen slices along the file axis that becomes D, D, indices)``."""
        from nibabel.volumeutils import apply_read_scaling

        if ornt is None:
            axis, flip = 0, False
        else:
            axis = int(np.flatnonzero(ornt[:, 0] == 0)[0])
            flip = bool(ornt[axis, 1] == -1)
        depth = int(shape[axis])
        idx = np.asarray(choose(depth), dtype=np.int64)
        # after apply_orientation flips that axis, ascending file indices depth-1-idx come out as idx
        file_idx = np.sort(depth - 1 - idx) if flip else idx
        proxy = img.dataobj
        try:
            view = np.ndarray(shape, dtype=img.header.get_data_dtype(), buffer=raw, offset=int(proxy.offset),
                              order=proxy.order)
        except (TypeError, ValueError) as e:
            raise OCTInputError(path, f"cannot read NIfTI data, file truncated or corrupt ({_first_line(e)})") from None
        if len(file_idx) == depth:
            unscaled = np.array(view)
        else:  # fancy indexing follows the strides (np.take would first copy the whole F-order array)
            unscaled = view[(slice(None),) * axis + (file_idx,)]
        # nibabel's ArrayProxy._get_scaled(dtype=None): the same scaling, on the kept slices only
        data = apply_read_scaling(unscaled, np.asanyarray(proxy.slope), np.asanyarray(proxy.inter))
        return data, depth, idx

    def _check_header_shape(self, raw: bytes, path) -> int | None:
        """``max_voxels`` against the header's dim field; returns the bytes the data needs (None: no header)."""
        import nibabel as nib

        if len(raw) < 348:
            return None
        sizeof_hdr = int.from_bytes(raw[:4], "little")
        if sizeof_hdr not in (348, 540):
            sizeof_hdr = int.from_bytes(raw[:4], "big")
        klass = {348: nib.Nifti1Header, 540: nib.Nifti2Header}.get(sizeof_hdr)
        if klass is None or len(raw) < sizeof_hdr:
            return None
        try:
            hdr = klass.from_fileobj(_pyio.BytesIO(raw[:sizeof_hdr]), check=False)
            shape = tuple(int(v) for v in hdr.get_data_shape())
            itemsize = int(hdr.get_data_dtype().itemsize)
            offset = int(hdr.get_data_offset())
        except Exception:
            return None  # the full read reports the corrupt header
        check_voxels(path, shape, self.limits, what="NIfTI header")
        n = 1
        for v in shape:
            n *= max(v, 0)
        return max(offset, sizeof_hdr + 4) + n * itemsize

    def _gunzip_bounded(self, raw: bytes, path) -> bytes:
        """Inflate the header first and check ``max_voxels`` from it, then inflate at most the bytes the header
        describes (a gzip bomb never expands past that)."""
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            head = d.decompress(raw, 540)
            need = self._check_header_shape(head, path)
            if need is not None:
                limit = need + 64 * 1024
            else:  # no readable header: nibabel reports it; still bounded by the limit
                limit = self.limits.max_voxels * 8 + 1024 * 1024 if self.limits.max_voxels else 0
            rest = d.decompress(d.unconsumed_tail, max(limit - len(head), 1) if limit else 0)
        except (EOFError, OSError, zlib.error) as e:
            raise OCTInputError(path, f"truncated or corrupt gzip data ({_first_line(e)})") from None
        out = head + rest
        if need is not None and len(out) < need:
            raise OCTInputError(path, f"truncated or corrupt gzip data ({len(out)} bytes inflated, the header "
                                      f"needs {need})")
        return out


# ----------------------------------------------------------------------------------------------- DICOM
def _seq_item(ds, *keywords):
    """Follow ``keywords`` through nested sequences (first item of each); ``None`` when absent."""
    cur = ds
    for kw in keywords:
        val = getattr(cur, kw, None) if cur is not None else None
        if val is None:
            return None
        if kw.endswith("Sequence"):
            if len(val) == 0:
                return None
            val = val[0]
        cur = val
    return cur


def _positive(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _float_or_nan(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def dicom_spacing(ds) -> tuple[tuple[float, float, float], dict]:
    """``((sd, sh, sw), sources)`` from a (multi-frame) DICOM dataset.

    In-plane ``(sh, sw)`` = Pixel Spacing (row spacing, column spacing) from the shared, then the first
    per-frame, PixelMeasuresSequence, then the top level. Slice spacing ``sd`` = SpacingBetweenSlices of the
    PixelMeasuresSequence, else the mean distance between consecutive PlanePositionSequence
    ImagePositionPatient, else SliceThickness, else the top-level SpacingBetweenSlices/SliceThickness.
    Missing values fall back to 1.0 and are reported as ``"default"`` in ``sources``.
    """
    measures = []
    for where, grp in (("shared", "SharedFunctionalGroupsSequence"), ("per-frame", "PerFrameFunctionalGroupsSequence")):
        pm = _seq_item(ds, grp, "PixelMeasuresSequence")
        if pm is not None:
            measures.append((where, pm))
    sources = {}
    sh = sw = None
    for where, pm in measures + [("top-level", ds)]:
        ps = getattr(pm, "PixelSpacing", None)
        if ps is not None and len(ps) == 2 and _positive(ps[0]) and _positive(ps[1]):
            sh, sw = float(ps[0]), float(ps[1])
            sources["in_plane"] = f"{where} PixelSpacing"
            break
    if sh is None:
        ps = next((getattr(pm, "PixelSpacing", None) for _, pm in measures + [("top-level", ds)]
                   if getattr(pm, "PixelSpacing", None) is not None), None)
        if ps is not None:  # present but zero/negative/NaN: reported, so that the file is refused
            vals = [_float_or_nan(v) for v in ps] + [float("nan")] * 2
            sh, sw = vals[0], vals[1]
            sources["in_plane"] = "invalid PixelSpacing"
        else:
            sh = sw = 1.0
            sources["in_plane"] = "default"
    sd = None
    for where, pm in measures:
        v = _positive(getattr(pm, "SpacingBetweenSlices", None))
        if v:
            sd, sources["slice"] = v, f"{where} SpacingBetweenSlices"
            break
    if sd is None:
        frames = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
        pos = []
        for fg in frames:
            p = _seq_item(fg, "PlanePositionSequence")
            ipp = getattr(p, "ImagePositionPatient", None) if p is not None else None
            if ipp is None or len(ipp) != 3:
                pos = []
                break
            pos.append([float(x) for x in ipp])
        if len(pos) >= 2:
            d = np.linalg.norm(np.diff(np.asarray(pos), axis=0), axis=1)
            if np.all(d > 0):
                sd, sources["slice"] = float(d.mean()), "PlanePositionSequence differences"
    if sd is None:
        for where, pm in measures + [("top-level", ds)]:
            for kw in ("SliceThickness",) if where != "top-level" else ("SpacingBetweenSlices", "SliceThickness"):
                v = _positive(getattr(pm, kw, None))
                if v:
                    sd, sources["slice"] = v, f"{where} {kw}"
                    break
            if sd is not None:
                break
    if sd is None:
        given = [getattr(pm, kw, None) for _, pm in measures + [("top-level", ds)]
                 for kw in ("SpacingBetweenSlices", "SliceThickness") if getattr(pm, kw, None) is not None]
        if given:  # present but zero/negative/NaN
            sd, sources["slice"] = _float_or_nan(given[0]), "invalid SpacingBetweenSlices/SliceThickness"
        else:
            sd, sources["slice"] = 1.0, "default"
    return (sd, sh, sw), sources


class DicomOCTReader(_OCTReaderBase):
    """DICOM through pydicom, in particular multi-frame Ophthalmic Tomography (frames are B-scans).

    ``pixel_array`` ``[frames, rows, cols]`` is ``[D, H, W]`` as stored (MONAI's PydicomReader is not used: it
    reorders the axes of multi-frame files). Colour data ``[frames, rows, cols, 3]`` becomes 3 channels.
    Spacing: see :func:`dicom_spacing`.
    """

    suffixes = DICOM_SUFFIXES
    fmt = "dicom"
    partial_depth = True

    def _read_one(self, path: str) -> OCTImage:
        return self._read(path, None)

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        return self._read(path, choose)

    def _read(self, path: str, choose) -> OCTImage:
        """The whole volume, or (``choose``) only the chosen frames, decoded one by one with pydicom's
        frame-level ``iter_pixels(ds, indices=...)`` (the same decoder as ``ds.pixel_array``; compressed
        transfer syntaxes decode only those frames)."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        raw = _read_bytes(path)
        try:
            ds = pydicom.dcmread(_pyio.BytesIO(raw))
        except InvalidDicomError:
            raise OCTInputError(path, "not a DICOM file") from None
        except Exception as e:
            raise OCTInputError(path, f"cannot parse DICOM, file truncated or corrupt ({_first_line(e)})") from None
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            sop = getattr(ds, "SOPClassUID", None)
            what = f" (SOP class {sop.name if hasattr(sop, 'name') else sop})" if sop else ""
            raise OCTInputError(path, f"DICOM has no pixel data, not an image{what}")
        check_dicom_oct(path, ds, self.limits)
        try:
            header_shape = (int(getattr(ds, "NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns),
                            int(getattr(ds, "SamplesPerPixel", 1) or 1))
        except (AttributeError, TypeError, ValueError):
            header_shape = None
        if header_shape is not None:
            check_voxels(path, header_shape, self.limits, what="DICOM header (frames x rows x columns x samples)")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        idx = None
        try:
            if choose is not None and frames > 1 and "PixelData" in ds:
                from pydicom.pixels import iter_pixels

                idx = np.asarray(choose(frames), dtype=np.int64)
                data = np.stack(list(iter_pixels(ds, indices=[int(i) for i in idx])), axis=0)
            else:
                data = ds.pixel_array
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot decode DICOM pixel data ({_first_line(e)})") from None
        if frames == 1 and data.ndim == 2 + (spp > 1):
            raise OCTInputError(
                path, f"expected a multi-frame 3D volume, got a single 2D frame with shape {tuple(data.shape)}"
            )
        spacing, sources = dicom_spacing(ds)
        arr = self._finalise(data, path, channel_last=spp > 1)
        sop = str(getattr(ds, "SOPClassUID", ""))
        out = OCTImage(
            arr, spacing, path, self.fmt,
            extra={"sop_class_uid": sop, "spacing_source": f"{sources['slice']}; {sources['in_plane']}"},
        )
        if choose is None:
            return out
        if idx is None:
            return _subsample_image(out, choose)
        out.depth, out.slice_indices = frames, idx
        return out


def write_dicom_oct(
    path,
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    patient_id: str | None = None,
    **tags: Any,
) -> str:
    """Write ``volume [D, H, W]`` as a multi-frame Ophthalmic Tomography Image Storage file.

    Frames are B-scans. Spacing goes into the shared functional groups (PixelMeasuresSequence: PixelSpacing
    ``[sh, sw]``, SpacingBetweenSlices and SliceThickness ``sd``), and every frame gets a FrameContentSequence
    and a PlanePositionSequence at ``(0, 0, i * sd)``. Patient tags (``patient_id`` and any keyword in
    ``tags``, e.g. ``PatientName="A^B"``, ``ImageLaterality="R"``) are written only when given.

    Voxels must be integers in ``0..65535`` (uint8 stays 8-bit, else 16-bit). The file is written
    atomically to a local path or fsspec URL; returns ``path``.
    """
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DSeq
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"write_dicom_oct needs volume [D, H, W], got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.integer):
        if not np.all(np.isfinite(vol)) or not np.array_equal(vol, np.round(vol)):
            raise ValueError("write_dicom_oct needs integer voxels (quantise the volume first)")
    if vol.size and (vol.min() < 0 or vol.max() > 65535):
        raise ValueError(f"write_dicom_oct needs voxels in 0..65535, got {vol.min()}..{vol.max()}")
    bits = 8 if vol.dtype == np.uint8 else 16
    vol = np.ascontiguousarray(vol.astype(np.uint8 if bits == 8 else np.uint16))
    sd, sh, sw = (float(s) for s in spacing)
    d, h, w = vol.shape
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OPT_SOP_CLASS_UID
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = OPT_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "OPT"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AcquisitionDateTime = date + time
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = d
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0

    from pydicom.valuerep import DSfloat

    def ds_(x: float) -> DSfloat:  # decimal strings are at most 16 characters
        return DSfloat(float(x), auto_format=True)

    pm = Dataset()
    pm.PixelSpacing = [ds_(sh), ds_(sw)]
    pm.SpacingBetweenSlices = ds_(sd)
    pm.SliceThickness = ds_(sd)
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelMeasuresSequence = DSeq([pm])
    shared.PlaneOrientationSequence = DSeq([po])
    ds.SharedFunctionalGroupsSequence = DSeq([shared])
    per_frame = []
    for i in range(d):
        fc = Dataset()
        fc.StackID = "1"
        fc.InStackPositionNumber = i + 1
        fc.DimensionIndexValues = [1, i + 1]
        pp = Dataset()
        pp.ImagePositionPatient = [ds_(0.0), ds_(0.0), ds_(i * sd)]
        fg = Dataset()
        fg.FrameContentSequence = DSeq([fc])
        fg.PlanePositionSequence = DSeq([pp])
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = DSeq(per_frame)
    dim_uid = generate_uid()
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = DSeq([org])
    dims = []
    for pointer in ("StackID", "InStackPositionNumber"):
        di = Dataset()
        di.DimensionOrganizationUID = dim_uid
        di.DimensionIndexPointer = tag_for_keyword(pointer)
        di.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
        dims.append(di)
    ds.DimensionIndexSequence = DSeq(dims)

    if patient_id is not None:
        ds.PatientID = str(patient_id)
    for kw, value in tags.items():
        if tag_for_keyword(kw) is None:
            raise ValueError(f"write_dicom_oct: unknown DICOM keyword {kw!r}")
        setattr(ds, kw, value)

    ds.PixelData = vol.tobytes()
    with oio.atomic_output(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return str(path)


# ----------------------------------------------------------------------------------------------- Heidelberg
class HeidelbergVolReader(_OCTReaderBase):
    """Heidelberg HEYEX ``.vol`` (and ``.e2e``) through eyepy (``import_heyex_vol`` / ``import_heyex_e2e``).

    eyepy's volume is ``(n_bscans, height, width)`` = ``[D, H, W]``; spacing is ``(scale_z, scale_y, scale_x)``
    (B-scan distance, axial, lateral) in mm.

    Args:
        intensity: ``"display"`` (default) gives eyepy's ``data``: the HEYEX display contrast (uint8 values
            0..255 for ``.vol``); ``"raw"`` gives the stored float reflectivity (``raw_data``, with the
            "no data" marker ``float32 max`` set to 0).
    """

    suffixes = HEYEX_SUFFIXES
    fmt = "heyex"

    def __init__(self, intensity: str = "display", sanitize_nan: bool = False, dtype=np.float32, **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        if intensity not in ("display", "raw"):
            raise ValueError(f"intensity must be 'display' or 'raw', got {intensity!r}")
        self.intensity = intensity

    def _read_one(self, path: str) -> OCTImage:
        import logging

        import eyepy

        is_e2e = _name(path).endswith(".e2e")
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        eyepy_log = logging.getLogger("eyepy")
        level = eyepy_log.level
        eyepy_log.setLevel(logging.ERROR)  # eyepy warns about unsegmented layers on every plain volume
        try:
            with oio.local_path(path) as local:
                ev = eyepy.import_heyex_e2e(local) if is_e2e else eyepy.import_heyex_vol(local)
                if self.intensity == "raw":
                    data = np.array(ev.raw_data, dtype=np.float32)
                    data[data == np.finfo(np.float32).max] = 0
                else:
                    data = np.asarray(ev.data)
                spacing = (float(ev.scale_z), float(ev.scale_y), float(ev.scale_x))
        except OCTInputError:
            raise
        except Exception as e:  # construct/eyepy raise many types on short or foreign files
            kind = "E2E" if is_e2e else "VOL"
            short = type(e).__name__ in ("StreamError", "EOFError") or isinstance(e, EOFError)
            what = ", file truncated or corrupt" if short else ""
            raise OCTInputError(path, f"cannot read HEYEX {kind} file{what} ({_first_line(e)})") from None
        finally:
            eyepy_log.setLevel(level)
        arr = self._finalise(data, path)  # spacing validated by _checked (no silent 1 mm)
        return OCTImage(arr, spacing, path, self.fmt, extra={"heyex_intensity": self.intensity})

    partial_depth = True  # .vol only; .e2e is read whole

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """``.vol``: the 2048-byte file header (eyepy's own construct definition), then only the chosen B-scans,
        each at its known offset (header, SLO image, then per B-scan ``bscan_hdr_size`` bytes of header and
        ``float32 [H, W]``), with eyepy's intensity transform on those B-scans (it works voxel by voxel)."""
        if _name(path).endswith(".e2e"):
            return _subsample_image(self._read_one(path), choose)
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        try:
            with oio.open_file(path, "rb") as f:
                hdr = _heyex_header().parse(f.read(_HEYEX_HEADER_BYTES))
                if int(hdr.scan_pattern) == 2:
                    raise ValueError("The EyeVolume object does not support scan pattern 2 (one Circular B-scan).")
                if int(hdr.scan_pattern) == 5:
                    raise ValueError("The EyeVolume object does not support scan pattern 5 (Radial scan - star "
                                     "pattern).")
                n, h, w = int(hdr.n_bscans), int(hdr.size_y), int(hdr.size_x)
                check_voxels(path, (n, h, w), self.limits, what="HEYEX VOL header")
                first = _HEYEX_HEADER_BYTES + int(hdr.size_x_slo) * int(hdr.size_y_slo)
                step = int(hdr.bscan_hdr_size) + h * w * 4
                size = f.seek(0, 2)
                if n < 1 or h < 1 or w < 1 or size < first + n * step:
                    raise EOFError(f"{size} bytes, the header describes {first + n * step}")
                idx = np.asarray(choose(n), dtype=np.int64)
                scans = []
                for i in idx:
                    f.seek(first + int(i) * step + int(hdr.bscan_hdr_size))
                    buf = f.read(h * w * 4)
                    scans.append(np.frombuffer(buf, dtype="float32").reshape(h, w))
                raw = np.stack(scans, axis=0)
        except OCTInputError:
            raise
        except Exception as e:  # as _read_one
            short = type(e).__name__ in ("StreamError", "EOFError") or isinstance(e, EOFError)
            what = ", file truncated or corrupt" if short else ""
            raise OCTInputError(path, f"cannot read HEYEX VOL file{what} ({_first_line(e)})") from None
        if self.intensity == "raw":
            data = np.array(raw, dtype=np.float32)
            data[data == np.finfo(np.float32).max] = 0
        else:
            from eyepy.core.utils import vol_intensity_transform  # what eyepy's EyeVolume.data applies to .vol

            data = vol_intensity_transform(np.copy(raw))
        spacing = (float(hdr.distance), float(hdr.scale_y), float(hdr.scale_x))
        arr = self._finalise(data, path)
        return OCTImage(arr, spacing, path, self.fmt, extra={"heyex_intensity": self.intensity}, depth=n,
                        slice_indices=idx)


_HEYEX_HEADER_BYTES = 2048
_HEYEX_HEADER = None


def _heyex_header():
    """eyepy's ``vol_format`` up to (not including) the SLO image and the B-scans: the 2048-byte file header."""
    global _HEYEX_HEADER
    if _HEYEX_HEADER is None:
        import construct as cs
        from eyepy.io.he.vol_reader import vol_format

        _HEYEX_HEADER = cs.Struct(*[sc for sc in vol_format.subcons if sc.name not in ("localizer", "bscans")])
    return _HEYEX_HEADER


def write_heyex_vol(path, volume: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), slo=None) -> str:
    """Write ``volume [D, H, W]`` (uint8 display intensities) as a HEYEX ``.vol`` file.

    eyepy 0.21 ships ``HeVolWriter``, but it needs a complete ``EyeVolume`` (patient, localizer, layer
    meta); this builds the file straight from eyepy's own construct definition of the format
    (``eyepy.io.he.vol_reader.vol_format``: 2048-byte file header, SLO image ``[size_y_slo, size_x_slo]``
    uint8, then per B-scan a header + ``float32 [H, W]``), so the reader that parses real files parses
    this one. Intensities are stored with eyepy's ``to_vol_intensity`` so that eyepy's default ``.vol``
    display transform gives back the uint8 values. The SLO defaults to the en-face mean projection
    ``[D, W]``. No patient fields are filled. Written atomically; returns ``path``.
    """
    import construct as cs
    from eyepy.core.utils import to_vol_intensity
    from eyepy.io.he.vol_reader import vol_format

    # eyepy's date adapter for the 64-bit exam time encodes to a float, which construct cannot pack (this
    # also breaks eyepy's own HeVolWriter); swap in the plain field (100 ns ticks since 1601-01-01).
    fmt = cs.Struct(*[("exam_time" / cs.Int64ul) if sc.name == "exam_time" else sc for sc in vol_format.subcons])

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"write_heyex_vol needs volume [D, H, W], got shape {vol.shape}")
    if vol.dtype != np.uint8:
        if vol.size and (vol.min() < 0 or vol.max() > 255 or not np.array_equal(vol, np.round(vol))):
            raise ValueError("write_heyex_vol needs uint8 display intensities 0..255")
        vol = vol.astype(np.uint8)
    sd, sh, sw = (float(s) for s in spacing)
    d, h, w = vol.shape
    if slo is None:
        slo = vol.mean(axis=1).round().astype(np.uint8)  # [D, W] en-face projection
    slo = np.ascontiguousarray(np.asarray(slo, dtype=np.uint8))
    date = datetime.datetime(2000, 1, 1)
    header = dict(
        size_x=w, n_bscans=d, size_y=h, scale_x=sw, distance=sd, scale_y=sh,
        size_x_slo=slo.shape[1], size_y_slo=slo.shape[0], scale_x_slo=sw, scale_y_slo=sd,
        field_size_slo=0, scan_focus=0.0, scan_position="OD",
        exam_time=int((date - datetime.datetime(1601, 1, 1)).total_seconds()) * 10_000_000, scan_pattern=3,
        bscan_hdr_size=256, id="1", reference_id="", pid=0, patient_id="", dob=date.isoformat(),
        vid=0, visit_id="", visit_date=date.isoformat(), grid_type=0, grid_offset=0, grid_type1=0,
        grid_offset1=0, prog_id="", localizer=slo,
    )
    bscans = []
    for i in range(d):
        y = (d - 1 - i) * sd  # eyepy places B-scan 0 at the bottom of the SLO
        bscans.append(dict(
            bscan_hdr_size=256, start_x=0.0, start_y=y, end_x=(w - 1) * sw, end_y=y, num_seg=0,
            quality=0.0, shift=0, iv_transformation=[0.0] * 6, layer_segmentations=np.zeros((0, w), np.float32),
            data=np.ascontiguousarray(to_vol_intensity(vol[i]).astype(np.float32)),
        ))
    header["bscans"] = bscans
    data = fmt.build(header)
    oio.atomic_write(path, data)
    return str(path)


# ----------------------------------------------------------------------------------------------- NumPy
class NumpyOCTReader(_OCTReaderBase):
    """``.npy`` arrays ``[D, H, W]`` or ``[C, D, H, W]`` (no pickles). Spacing is ``spacing`` (default 1 mm)."""

    suffixes = NUMPY_SUFFIXES
    fmt = "numpy"

    def __init__(self, spacing: Sequence[float] = (1.0, 1.0, 1.0), sanitize_nan: bool = False, dtype=np.float32,
                 **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        self.spacing = tuple(float(s) for s in spacing)

    def _read_one(self, path: str) -> OCTImage:
        raw = _read_bytes(path)
        try:
            f = _pyio.BytesIO(raw)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(f)[0]
        except Exception:
            shape = None  # np.load below names the problem
        if shape is not None:
            check_voxels(path, shape, self.limits, what=".npy header")
        try:
            data = np.load(_pyio.BytesIO(raw), allow_pickle=False)
        except Exception as e:
            raise OCTInputError(path, f"cannot read .npy array, file truncated or corrupt ({_first_line(e)})") from None
        if not isinstance(data, np.ndarray):
            raise OCTInputError(path, "expected a single array in .npy")
        arr = self._finalise(data, path, channel_last=False)
        return OCTImage(arr, self.spacing, path, self.fmt)

    partial_depth = True

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """Only the chosen slices: a local file through ``np.load(mmap_mode="r")``, a URL by reading the byte
        ranges of the chosen slices after the header (C order; a Fortran-order array is read whole)."""
        try:
            with oio.open_file(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
        except OCTInputError:
            raise
        except Exception:
            shape = None
        if shape is None or fortran or dtype.hasobject or len(shape) not in (3, 4) or 0 in shape:
            return _subsample_image(self._read_one(path), choose)  # the whole read names any problem
        check_voxels(path, shape, self.limits, what=".npy header")
        axis = len(shape) - 3
        depth = int(shape[axis])
        idx = np.asarray(choose(depth), dtype=np.int64)
        try:
            if not oio.is_url(path):
                data = np.load(oio._strip_file(path), mmap_mode="r", allow_pickle=False)
                data = np.array(data[idx] if axis == 0 else data[:, idx])
            else:
                data = self._read_ranges(path, shape, dtype, offset, idx)
        except Exception as e:
            raise OCTInputError(path, f"cannot read .npy array, file truncated or corrupt ({_first_line(e)})") from None
        arr = self._finalise(data, path, channel_last=False)
        return OCTImage(arr, self.spacing, path, self.fmt, depth=depth, slice_indices=idx)

    @staticmethod
    def _read_ranges(path, shape, dtype, offset: int, idx: np.ndarray) -> np.ndarray:
        channels = 1 if len(shape) == 3 else int(shape[0])
        depth, h, w = (int(v) for v in shape[-3:])
        slice_bytes = h * w * dtype.itemsize
        out = np.empty((channels, len(idx), h, w), dtype=dtype)
        with oio.open_file(path, "rb") as f:
            for c in range(channels):
                k = 0
                for start, stop in _runs(idx):
                    f.seek(offset + (c * depth + start) * slice_bytes)
                    buf = f.read((stop - start) * slice_bytes)
                    if len(buf) != (stop - start) * slice_bytes:
                        raise EOFError(f"{len(buf)} bytes where {(stop - start) * slice_bytes} were expected")
                    out[c, k:k + stop - start] = np.frombuffer(buf, dtype=dtype).reshape(stop - start, h, w)
                    k += stop - start
        return out[0] if len(shape) == 3 else out


# ----------------------------------------------------------------------------------------------- dispatch
def sniff_format(head: bytes) -> str | None:
    """Format from a file's first bytes (>= 352): ``nifti``, ``dicom``, ``heyex`` (VOL), ``e2e``, ``topcon``,
    ``numpy`` or ``None``."""
    if head[:2] == b"\x1f\x8b":
        return "nifti"  # gzip: the only compressed format read here
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"CMDb" or head[:21] == b"E2EMultipleVolumeFile":
        return "e2e"  # Heidelberg E2E: every volume, whatever the suffix (not the .vol parser)
    if head[:4] == b"FOCT":
        return "topcon"
    if head[:8] == b"HSF-OCT-" or head[:4] == b"ep-v":
        return "heyex"
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if len(head) >= 8 and head[4:8] == b"n+2\x00":
        return "nifti"
    return None


class OCTVolumeReader(_OCTReaderBase):
    """One reader for every OCT format: picks NIfTI / DICOM / HEYEX VOL / NumPy, or a vendor format of
    :mod:`oct_foundation.data.vendor` (Heidelberg E2E, Topcon FDA/FDS, Zeiss Cirrus IMG, Bioptigen / Optovue OCT) or a
    2D+time input of :mod:`oct_foundation.data.video` (``.mp4``/``.avi``, multi-page TIFF, a folder of PNG
    frames: ``[C, T, H, W]``), by suffix (or folder), else by magic bytes. Vendor readers run with their
    defaults (E2E / Bioptigen: volume 0 of several, with meta listing them).

    Args:
        sanitize_nan: replace NaN/Inf voxels with 0 instead of raising.
        dtype: output dtype (``None`` keeps the file's).
        heyex_intensity: ``"display"`` or ``"raw"`` (see :class:`HeidelbergVolReader`).
        npy_spacing: spacing reported for ``.npy`` arrays.
    """

    suffixes = OCT_SUFFIXES
    fmt = "oct"

    def __init__(self, sanitize_nan: bool = False, dtype=np.float32, heyex_intensity: str = "display",
                 npy_spacing: Sequence[float] = (1.0, 1.0, 1.0), **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        from oct_foundation.data.vendor import (BioptigenOCTReader, HeidelbergE2EReader, OptovueOCTReader,
                                                TopconOCTReader, ZeissImgReader)
        from oct_foundation.data.video import FrameFolderReader, TiffStackReader, VideoReader

        self.readers = {
            "e2e": HeidelbergE2EReader(sanitize_nan=sanitize_nan, dtype=dtype),  # before "heyex": owns .e2e
            "topcon": TopconOCTReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "zeiss": ZeissImgReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "optovue": OptovueOCTReader(sanitize_nan=sanitize_nan, dtype=dtype),  # .OCT with a .txt spec
            "bioptigen": BioptigenOCTReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "nifti": NiftiOCTReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "dicom": DicomOCTReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "heyex": HeidelbergVolReader(intensity=heyex_intensity, sanitize_nan=sanitize_nan, dtype=dtype),
            "numpy": NumpyOCTReader(spacing=npy_spacing, sanitize_nan=sanitize_nan, dtype=dtype),
            "video": VideoReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "tiff": TiffStackReader(sanitize_nan=sanitize_nan, dtype=dtype),
            "frames": FrameFolderReader(sanitize_nan=sanitize_nan, dtype=dtype),  # last: a folder of .png
        }
        for reader in self.readers.values():
            reader.limits = self.limits  # one set of rules for every format (header checks run inside them)

    def verify_suffix(self, filename) -> bool:
        """Known suffix, or no suffix at all (DICOM files often have none; their magic bytes decide)."""
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return all(
            _has_suffix(n, OCT_SUFFIXES) or "." not in posixpath.basename(str(n).rstrip("/")) for n in names
        )

    def reader_for(self, path: str) -> _OCTReaderBase:
        """The format reader for ``path`` (suffix first, then the file's first bytes)."""
        for reader in self.readers.values():
            if reader.verify_suffix(path):
                return reader
        with oio.open_file(path, "rb") as f:
            head = f.read(352)
        fmt = sniff_format(head)
        if fmt is None:
            raise OCTInputError(path, "unknown file type (not NIfTI, DICOM, HEYEX VOL/E2E, Topcon FDA/FDS or .npy)")
        return self.readers[fmt]

    def _read_one(self, path: str) -> OCTImage:
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        return self.reader_for(path)._read_one(path)

    partial_depth = True  # where the format reader has it

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        return self.reader_for(path)._read_depth_one(path, choose)


def load_oct(path, reader: ImageReader | None = None, dtype=None) -> MetaTensor:
    """Read one file into ``MetaTensor [C, D, H, W]`` (meta: spacing, affine, filename_or_obj, ...)."""
    reader = reader if reader is not None else OCTVolumeReader()
    img = reader.read(str(path))
    array, meta = reader.get_data(img)
    affine = torch.as_tensor(meta.pop("affine"), dtype=torch.float64)
    meta["filename_or_obj"] = str(path)
    out = MetaTensor(torch.as_tensor(array), affine=affine, meta=meta)
    if dtype is not None:
        out = out.to(dtype)
    return out


class LoadOCTd(MapTransform):
    """Load the paths under ``keys`` (local or fsspec URL) into ``MetaTensor [C, D, H, W]``.

    Use instead of ``LoadImaged`` in configs. ``reader`` defaults to :class:`OCTVolumeReader` built with
    ``sanitize_nan`` and ``dtype`` (a given ``reader`` keeps its own settings). Values that are already
    tensors/arrays are left alone.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: ImageReader | None = None,
        allow_missing_keys: bool = False,
        sanitize_nan: bool = False,
        dtype=np.float32,
        max_voxels: int | None = None,
        assume_spacing: Sequence[float] | None = None,
        allow_non_oct: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.reader = reader if reader is not None else OCTVolumeReader(
            sanitize_nan=sanitize_nan, dtype=dtype, max_voxels=max_voxels, assume_spacing=assume_spacing,
            allow_non_oct=allow_non_oct)
        self._failure: str | None = None

    def __repr__(self) -> str:
        # MONAI wraps a transform's error as "applying transform {transform}": name the file and the problem
        base = f"LoadOCTd(keys={tuple(self.keys)})"
        return f"{base} reading {self._failure}" if self._failure else base

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self._failure = None
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (torch.Tensor, np.ndarray)):
                continue
            with self._reading(key, value):
                d[key] = load_oct(value, self.reader)
        return d

    @contextlib.contextmanager
    def _reading(self, key, value):
        """Remember which key and file failed, so that MONAI's wrapped error names them (see ``__repr__``)."""
        try:
            yield
        except OCTInputError as e:
            self._failure = f"{key!r}: {e}"
            raise
        except Exception as e:
            self._failure = f"{key!r}: {value}: {_first_line(e)}"
            raise


#: meta flag set by :class:`LoadOCTSlicesd` on what it read; the :class:`DepthSubsampled` it serves removes it
READ_SUBSAMPLED = "depth_subsampled_on_read"


class _DepthChoice:
    """``choose(D)`` for the readers: the first file of an item draws the indices from the sampler (one draw
    per item, as the sampler's own ``__call__`` does); the other files of the item get the same ones."""

    def __init__(self, sampler, min_depth: int | None):
        self.sampler, self.min_depth = sampler, min_depth
        self.source = None
        self.depth = None
        self.indices = None

    def __call__(self, depth: int) -> np.ndarray:
        depth = int(depth)
        if self.min_depth is not None and depth < self.min_depth:  # as MinDepthd: before any random draw
            raise OCTInputError(self.source, f"{depth} slices, fewer than the {self.min_depth} needed")
        sampler_min = getattr(self.sampler, "min_depth", None)
        if sampler_min is not None and depth < sampler_min:
            raise OCTInputError(self.source, f"{depth} slices, fewer than the {sampler_min} this pipeline needs")
        if self.depth is None:
            self.sampler.randomize(depth)
            self.depth, self.indices = depth, np.asarray(self.sampler._indices, dtype=np.int64)
        elif depth != self.depth:
            raise OCTInputError(self.source, f"keys have different slice counts ({self.depth} and {depth})")
        return self.indices


class LoadOCTSlicesd(RandomizableTrait, LoadOCTd):
    """:class:`LoadOCTd` that reads only the slices a :class:`~oct_foundation.data.transforms.DepthSubsampled`
    keeps, so that reading costs ``d_target`` slices instead of D.

    Put ``depth`` itself later in the same ``Compose`` (``build_preprocessing`` does): the indices are drawn here
    from ``depth``'s random state, once per item, exactly as ``depth`` would draw them (so ``set_random_state``
    seeds and the chosen slices are those of the read-all chain), and the volume read carries ``depth``'s
    metadata (``slice_indices``, ``original_depth``, affine and ``spacing`` of the kept slices). ``depth`` then
    leaves it alone; values that were already tensors it subsamples as before. Formats that cannot read part of
    a file (``partial_depth`` False: Heidelberg E2E, Topcon, Bioptigen, video files) are read whole and then
    subsampled here.
    ``min_depth`` refuses shorter files before any draw, as ``MinDepthd`` does. A reader without
    ``read_depth`` (e.g. a plain MONAI reader) reads whole.

    It is marked random (``RandomizableTrait``), so ``CacheDataset`` does not cache its output (the slices
    change every epoch); to cache whole volumes use :class:`LoadOCTd` and ``DepthSubsampled`` instead
    (``build_preprocessing(read_kept_slices=False)``).
    """

    def __init__(self, keys: KeysCollection, depth, min_depth: int | None = None, **kwargs):
        super().__init__(keys, **kwargs)
        self.depth = depth
        self.min_depth = int(min_depth) if min_depth else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from oct_foundation.data.transforms import select_depth

        d = dict(data)
        self._failure = None
        choice = _DepthChoice(self.depth, self.min_depth)
        reader = self.reader
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (torch.Tensor, np.ndarray)):
                continue
            choice.source = value[0] if isinstance(value, (list, tuple)) and value else value
            with self._reading(key, value):
                if not hasattr(reader, "read_depth"):
                    out = load_oct(value, reader)
                    idx = np.asarray(choice(int(out.shape[1])), dtype=np.int64)
                    out = select_depth(out, idx, int(out.shape[1]))
                else:
                    img = reader.read_depth(value if isinstance(value, (list, tuple)) else str(value), choice)
                    array, meta = reader.get_data(img)
                    affine = torch.as_tensor(meta.pop("affine"), dtype=torch.float64)
                    meta["filename_or_obj"] = str(value)
                    out = MetaTensor(torch.as_tensor(array), affine=affine, meta=meta)
                    out = select_depth(out, choice.indices, choice.depth, selected=True)
            out.meta[READ_SUBSAMPLED] = True
            d[key] = out
        return d
