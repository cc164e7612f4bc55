"""Pre-flight check of a training datalist: every item of every list is checked before the first step and
all bad items are reported at once (file and reason).

Per item: the keys the workflow needs are present; each image/label file has a readable header with a 3D
(or 3D + channel) shape, depth >= ``min_depth``, valid spacing and at most ``max_voxels`` voxels
(:mod:`oct_foundation.data.validation`). NIfTI and ``.npy`` are checked from their headers only; other
formats are read once.
"""
from __future__ import annotations

import io as _pyio
import logging
import posixpath
from typing import Sequence

import numpy as np

from oct_foundation import io as oio
from oct_foundation.data.datalist import load_datalist
from oct_foundation.data.validation import ReaderLimits, check_spacing, check_voxels
from oct_foundation.errors import OCTInputError

__all__ = ["preflight_datalist", "probe_volume"]

logger = logging.getLogger(__name__)


def _nifti_header(path):
    import nibabel as nib

    with oio.open_file(path, "rb") as f:
        head = f.read(4096)
    if head[:2] == b"\x1f\x8b":
        head = _gunzip_head(path)
    sizeof = int.from_bytes(head[:4], "little")
    if sizeof not in (348, 540):
        sizeof = int.from_bytes(head[:4], "big")
    klass = {348: nib.Nifti1Header, 540: nib.Nifti2Header}.get(sizeof)
    if klass is None or len(head) < sizeof:
        raise OCTInputError(path, "not a NIfTI file (bad header)")
    hdr = klass.from_fileobj(_pyio.BytesIO(head[:sizeof]), check=False)
    shape = tuple(int(v) for v in hdr.get_data_shape())
    nd = min(3, max(int(hdr["dim"][0]), 0))
    zooms = [float(z) for z in hdr["pixdim"][1:1 + nd]] + [1.0] * (3 - nd)
    unit = hdr.get_xyzt_units()[0]
    scale = {"micron": 1e-3, "meter": 1e3}.get(unit, 1.0)
    return shape, tuple(z * scale for z in zooms)


def _gunzip_head(path) -> bytes:
    import zlib

    with oio.open_file(path, "rb") as f:
        raw = f.read(64 * 1024)
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, 540)
    except zlib.error as e:
        raise OCTInputError(path, f"truncated or corrupt gzip data ({e})") from None


def probe_volume(path, limits: ReaderLimits | None = None) -> tuple[tuple, tuple]:
    """``(spatial shape (D, H, W), spacing)`` of ``path``, cheaply where the format allows; raises
    :class:`OCTInputError` naming the file."""
    limits = limits or ReaderLimits()
    name = str(path).lower()
    if not oio.exists(path):
        raise OCTInputError(path, "file not found")
    if name.endswith((".nii", ".nii.gz")):
        shape, spacing = _nifti_header(path)
        if len(shape) not in (3, 4):
            raise OCTInputError(path, f"expected a 3D volume [D, H, W] (or 4D with a channel axis), got "
                                      f"{len(shape)}D data with shape {shape}")
        check_voxels(path, shape, limits, what="NIfTI header")
        return shape[:3], check_spacing(path, spacing, limits)
    if name.endswith(".npy"):
        with oio.open_file(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape = tuple(read(f)[0])
            except Exception as e:
                raise OCTInputError(path, f"cannot read .npy header ({type(e).__name__}: {e})") from None
        if len(shape) not in (3, 4):
            raise OCTInputError(path, f"expected a 3D volume [D, H, W] (or [C, D, H, W]), got shape {shape}")
        check_voxels(path, shape, limits, what=".npy header")
        return shape[-3:], (1.0, 1.0, 1.0)
    from oct_foundation.data.readers import OCTVolumeReader, load_oct

    t = load_oct(path, OCTVolumeReader(max_voxels=limits.max_voxels or 0, assume_spacing=limits.assume_spacing,
                                       allow_non_oct=limits.allow_non_oct))
    return tuple(int(v) for v in t.shape[1:]), tuple(float(s) for s in t.meta["spacing"])


def preflight_datalist(
    datalist,
    sections: Sequence[str] = ("training", "validation"),
    image_keys: Sequence[str] = ("image",),
    required_keys: Sequence[str] = ("image",),
    min_depth: int | None = None,
    skip_bad_items: bool = False,
    report_dir: str | None = None,
    max_voxels: int | None = None,
    assume_spacing: Sequence[float] | None = None,
    allow_non_oct: bool = False,
    name: str | None = None,
) -> dict:
    """Check every item of ``sections`` of ``datalist``; returns ``{section: good items}``.

    ``datalist`` is a datalist JSON path (local or URL) or a dict ``{section: items}`` already loaded (e.g. the
    items of a folder without a datalist); ``name`` is what errors call it (default: the path, or "datalist").

    Bad items (missing ``required_keys``, unreadable header, not 3D, depth < ``min_depth``, invalid
    spacing, over ``max_voxels``) are all listed in one :class:`OCTInputError`; with ``skip_bad_items`` they
    are dropped with a warning instead and written to ``report_dir/bad_items.csv`` (section, position, file,
    reason).
    """
    limits = ReaderLimits(assume_spacing=assume_spacing, allow_non_oct=allow_non_oct,
                          **({} if max_voxels is None else {"max_voxels": max_voxels}))
    out, bad = {}, []
    source = name or (datalist if not isinstance(datalist, dict) else datalist.get("_source", "datalist"))
    for section in sections:
        items = list(datalist.get(section, [])) if isinstance(datalist, dict) else load_datalist(datalist, section)
        good = []
        for i, item in enumerate(items):
            reasons = []
            missing = [k for k in required_keys if k not in item or item[k] in (None, "")]
            if missing:
                reasons.append(f"missing key(s) {missing}")
            for key in image_keys:
                if key not in item or not isinstance(item[key], str):
                    continue
                try:
                    shape, _ = probe_volume(item[key], limits)
                    if min_depth and shape[0] < int(min_depth):
                        reasons.append(f"{item[key]}: depth {shape[0]} < {int(min_depth)} slices needed")
                except OCTInputError as e:
                    reasons.append(str(e))
                except Exception as e:  # any reader failure is a bad item, named
                    reasons.append(f"{item[key]}: {type(e).__name__}: {e}")
            if reasons:
                file = next((item[k] for k in image_keys if isinstance(item.get(k), str)), "")
                bad.append({"section": section, "position": i, "file": file, "reason": "; ".join(reasons)})
            else:
                good.append(item)
        out[section] = good
    if bad:
        lines = "\n".join(f"  {b['section']}[{b['position']}] {b['file'] or '<no file>'}: {b['reason']}"
                          for b in bad)
        if not skip_bad_items:
            raise OCTInputError(source, f"{len(bad)} bad item(s) (pass --skip_bad_items true to train on the "
                                          f"rest):\n{lines}")
        logger.warning("skipping %d bad item(s):\n%s", len(bad), lines)
        if report_dir:
            oio.makedirs(report_dir)
            oio.write_csv(bad, posixpath.join(str(report_dir), "bad_items.csv"),
                          columns=["section", "position", "file", "reason"])
        for section in sections:
            if not out[section] and section == sections[0]:
                raise OCTInputError(source, f"no usable items left in '{section}' after skipping:\n{lines}")
    return out
