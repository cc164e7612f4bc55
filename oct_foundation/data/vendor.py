"""Vendor OCT formats through ``oct-converter`` (0.7.0): Topcon ``.fda``/``.fds``, Zeiss Cirrus ``.img``,
Heidelberg ``.e2e`` (every volume in the file), Bioptigen ``.OCT``.

Each reader is a MONAI :class:`~monai.data.ImageReader` with the same contract as the readers in
:mod:`oct_foundation.data.readers`: ``get_data`` gives ``[C, D, H, W]`` (D = B-scan index, H = axial depth,
W = lateral) and a meta dict with ``spacing = (sd, sh, sw)`` in mm, plus ``spacing_source`` saying where each
spacing came from (the file, the user, or nowhere: 1.0 mm), ``laterality`` (``"R"``, ``"L"`` or ``""``) and,
for files holding several volumes, ``n_volumes`` / ``volume_index`` / ``volumes``. Anything unreadable raises
a one-line :class:`~oct_foundation.errors.OCTInputError` naming the file.

numpy 2 compatibility: oct-converter 0.7.0's Topcon and E2E readers call ``np.fromstring`` on binary data,
which numpy 2 no longer accepts (``fromstring`` now parses text only). Rather than pinning an old numpy,
:func:`_numpy2_compat` replaces the name ``np`` inside those oct-converter modules only with a proxy whose
``fromstring`` is ``np.frombuffer(...).copy()`` (what ``fromstring`` did for bytes) and which forwards every
other attribute to numpy. numpy itself and every other module are untouched, so the shim is reached only
from code running inside those readers.
"""
from __future__ import annotations

import contextlib
import io as _pyio
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from oct_foundation import io as oio
from oct_foundation.data.readers import OCTImage, _first_line, _OCTReaderBase, _runs, _subsample_image
from oct_foundation.data.validation import check_voxels
from oct_foundation.errors import OCTInputError

__all__ = [
    "TopconOCTReader",
    "ZeissImgReader",
    "HeidelbergE2EReader",
    "BioptigenOCTReader",
    "OptovueOCTReader",
    "BIOPTIGEN_SUFFIXES",
    "TOPCON_SUFFIXES",
    "ZEISS_SUFFIXES",
    "E2E_SUFFIXES",
    "VENDOR_SUFFIXES",
    "sniff_vendor",
]

TOPCON_SUFFIXES = (".fda", ".fds")
ZEISS_SUFFIXES = (".img",)
E2E_SUFFIXES = (".e2e",)
BIOPTIGEN_SUFFIXES = (".oct",)
VENDOR_SUFFIXES = TOPCON_SUFFIXES + ZEISS_SUFFIXES + E2E_SUFFIXES + BIOPTIGEN_SUFFIXES

logger = logging.getLogger(__name__)


def sniff_vendor(head: bytes) -> str | None:
    """``"topcon"`` or ``"e2e"`` from a file's first bytes; ``None`` otherwise (Zeiss ``.img`` has no magic)."""
    if head[:4] == b"FOCT":
        return "topcon"
    if head[:4] == b"CMDb" or head[:21] == b"E2EMultipleVolumeFile":
        return "e2e"
    return None


class _FromstringCompat:
    """``numpy`` with a ``fromstring`` that reads bytes like numpy 1 did (see the module docstring)."""

    @staticmethod
    def fromstring(string, dtype=float, count=-1, *, sep=""):
        if sep == "" and isinstance(string, (bytes, bytearray, memoryview)):
            return np.frombuffer(string, dtype=dtype, count=count).copy()
        return np.fromstring(string, dtype=dtype, count=count, sep=sep)

    def __getattr__(self, name):
        return getattr(np, name)


_COMPAT = _FromstringCompat()


def _numpy2_compat():
    """Give oct-converter's readers that call ``np.fromstring`` on bytes the proxy (idempotent)."""
    from oct_converter.readers import e2e_Wedward, fda, fds

    for mod in (fda, fds, e2e_Wedward):
        mod.np = _COMPAT


@contextlib.contextmanager
def _quiet():
    """oct-converter prints progress and missing-chunk notes on stdout; keep them out of the user's output."""
    buf = _pyio.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def _stack(volume, path) -> np.ndarray:
    """oct-converter's list of B-scans ``[H, W]`` (or an array ``[D, H, W]``) -> ``[D, H, W]``."""
    try:
        arr = np.stack([np.asarray(s) for s in volume]) if isinstance(volume, (list, tuple)) else np.asarray(volume)
    except ValueError as e:
        raise OCTInputError(path, f"B-scans of different sizes ({_first_line(e)})") from None
    if arr.ndim != 3:
        raise OCTInputError(path, f"expected B-scans [D, H, W], got shape {tuple(arr.shape)}")
    return arr


# ----------------------------------------------------------------------------------------------- Topcon
class TopconOCTReader(_OCTReaderBase):
    """Topcon ``.fds`` (raw ``uint16`` B-scans, chunk ``@IMG_SCAN_03``) and ``.fda`` (``@IMG_JPEG`` JPEG B-scans
    or raw ``@IMG_MOT_COMP_03``) through oct-converter's ``FDS`` / ``FDA``.

    Files start with ``FOCT``; the chunks present decide which parser runs, so a file without a suffix is
    read too. Spacing is from the ``@PARAM_SCAN_04`` (or ``_02``) chunk: ``sw = x_dimension_mm / width``,
    ``sd = y_dimension_mm / number_slices``, ``sh = z_resolution_um / 1000``; without that chunk 1.0 mm and
    ``spacing_source`` says so. Meta: ``laterality`` (from ``@CAPTURE_INFO``), ``scan_mode`` (2 = 3D,
    3 = radial, 4 = cross), ``topcon_chunk`` (the image chunk read).
    """

    suffixes = TOPCON_SUFFIXES
    fmt = "topcon"

    def _read_one(self, path: str) -> OCTImage:
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        with oio.open_file(path, "rb") as f:
            head = f.read(15)
        if head[:4] != b"FOCT":
            raise OCTInputError(path, "not a Topcon FDA/FDS file (no FOCT header)")
        from oct_converter.readers import FDA, FDS

        _numpy2_compat()
        try:
            with oio.local_path(path) as local, _quiet():
                chunks = FDA(local).chunk_dict
                if b"@IMG_SCAN_03" in chunks:
                    chunk, oct_ = "@IMG_SCAN_03", FDS(local).read_oct_volume()
                elif b"@IMG_JPEG" in chunks or b"@IMG_MOT_COMP_03" in chunks:
                    chunk = "@IMG_JPEG" if b"@IMG_JPEG" in chunks else "@IMG_MOT_COMP_03"
                    oct_ = FDA(local).read_oct_volume()
                else:
                    names = ", ".join(sorted(c.decode("ascii", "replace") for c in chunks)) or "none"
                    raise OCTInputError(
                        path, f"Topcon file has no OCT volume chunk (@IMG_SCAN_03, @IMG_JPEG, @IMG_MOT_COMP_03); "
                              f"chunks: {names}"
                    )
                data = _stack(oct_.volume, path)
        except OCTInputError:
            raise
        except Exception as e:  # construct / numpy / PIL raise many types on short or foreign files
            raise OCTInputError(path, f"cannot read Topcon file, truncated or corrupt ({_first_line(e)})") from None
        ps = oct_.pixel_spacing
        if ps is not None and all(np.isfinite(v) and v > 0 for v in ps):
            spacing = (float(ps[1]), float(ps[2]), float(ps[0]))
            source = "file @PARAM_SCAN (x_dimension_mm / width, y_dimension_mm / slices, z_resolution_um)"
        else:
            spacing = (1.0, 1.0, 1.0)
            source = "not in the file (no @PARAM_SCAN_04/_02 chunk): 1.0 mm"
        arr = self._finalise(data, path)
        extra = {
            "spacing_source": source,
            "laterality": oct_.laterality or "",
            "scan_mode": int((oct_.oct_header or {}).get("scan_mode", -1)),
            "topcon_chunk": chunk,
        }
        return OCTImage(arr, spacing, path, self.fmt, extra=extra)


# ----------------------------------------------------------------------------------------------- Zeiss
_GEOMETRY = re.compile(r"(\d+)\s*x\s*(\d+)", re.IGNORECASE)


class ZeissImgReader(_OCTReaderBase):
    """Zeiss Cirrus raw ``.img`` exports (``uint8``, no header) through oct-converter's ``IMG``.

    The file holds no geometry. The number of A-scans per B-scan and of B-scans comes from ``geometry``
    ``(a_scans, b_scans)`` or else from the Cirrus file name (``..._Macular Cube 512x128_..._OD_..._cube_z.img``
    gives 512 A-scans x 128 B-scans); the axial size is what is left (file size / (a_scans * b_scans), 1024 for
    Cirrus). Spacing is not in the file: ``spacing`` ``(sd, sh, sw)`` from the user (e.g. a 6 x 6 mm cube,
    2 mm deep: ``(6 / b_scans, 2 / 1024, 6 / a_scans)``), else 1.0 mm, said in ``spacing_source``. Laterality
    (OD/OS) comes from the file name. An ``.img`` with a sibling ``.hdr`` is an Analyze image and is refused.

    Args:
        geometry: ``(a_scans, b_scans)``; ``None`` parses the file name.
        spacing: ``(sd, sh, sw)`` in mm, or ``None``.
        interlaced: de-interlace (oct-converter's option, for some raw Cirrus exports).
    """

    suffixes = ZEISS_SUFFIXES
    fmt = "zeiss"

    def __init__(self, geometry: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                 interlaced: bool = False, sanitize_nan: bool = False, dtype=np.float32, **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        self.geometry = None if geometry is None else tuple(int(g) for g in geometry)
        if self.geometry is not None and (len(self.geometry) != 2 or min(self.geometry) <= 0):
            raise ValueError(f"geometry must be (a_scans, b_scans) > 0, got {geometry!r}")
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.interlaced = bool(interlaced)

    def _layout(self, path: str) -> tuple:
        """``(a_scans, b_scans, depth, geo_source)`` of ``path`` (``depth``: bytes per A-scan), with the checks."""
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        stem = str(path)[: -len(".img")] if _lower(path).endswith(".img") else str(path)
        if oio.exists(stem + ".hdr") or oio.exists(stem + ".HDR"):
            raise OCTInputError(path, "an .img with a sibling .hdr is an Analyze image, not a Zeiss Cirrus export")
        name = posixpath.basename(str(path))
        if self.geometry is not None:
            a_scans, b_scans = self.geometry
            geo_source = "user geometry"
        else:
            m = _GEOMETRY.search(name)
            if m is None:
                raise OCTInputError(
                    path, "Zeiss .img holds no geometry and the file name has no '<a_scans>x<b_scans>'; "
                          "pass geometry=(a_scans, b_scans)"
                )
            a_scans, b_scans = int(m.group(1)), int(m.group(2))
            geo_source = f"file name '{m.group(0)}'"
            if a_scans == 0 or b_scans == 0:
                raise OCTInputError(path, f"geometry {a_scans}x{b_scans} from the file name ({geo_source}) has no "
                                          "A-scans or B-scans; pass geometry=(a_scans, b_scans)")
        with oio.open_file(path, "rb") as f:
            size = f.seek(0, 2)
        depth, rest = divmod(size, a_scans * b_scans)
        if depth == 0 or rest:
            raise OCTInputError(
                path, f"{size} bytes is not a whole number of {a_scans}x{b_scans} B-scans ({geo_source}); "
                      "file truncated or wrong geometry"
            )
        return a_scans, b_scans, depth, geo_source

    def _image(self, arr, path, laterality, geo_source, **kw) -> OCTImage:
        if self.spacing is not None:
            spacing, source = self.spacing, "user"
        else:
            spacing, source = (1.0, 1.0, 1.0), "not in the file (Zeiss .img has no geometry): 1.0 mm; pass spacing"
        extra = {"spacing_source": source, "laterality": laterality or "", "geometry_source": geo_source}
        return OCTImage(arr, spacing, path, self.fmt, extra=extra, **kw)

    def _read_one(self, path: str) -> OCTImage:
        a_scans, b_scans, depth, geo_source = self._layout(path)
        from oct_converter.readers import IMG

        try:
            with oio.local_path(path) as local, _quiet():
                oct_ = IMG(local).read_oct_volume(rows=depth, cols=a_scans, interlaced=self.interlaced)
                data = _stack(oct_.volume, path)
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot read Zeiss .img ({_first_line(e)})") from None
        return self._image(self._finalise(data, path), path, oct_.laterality, geo_source)

    partial_depth = True

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """Only the chosen B-scans, each read at its offset: the file is stored B-scan after B-scan, ``a_scans``
        A-scans of ``depth`` bytes each (oct-converter's Fortran-order ``(depth, a_scans, b_scans)``), so B-scan
        ``s`` is bytes ``[s, s + 1) * depth * a_scans``. De-interlaced (``interlaced=True``, which needs
        ``depth = 2 * a_scans``), oct-converter's B-scan ``t`` is the first (``t`` even) or second half of the
        A-scan samples of stored B-scan ``t // 2``, turned by 90 degrees, in float64, as oct-converter gives
        them; other geometries go to the whole read, which says what oct-converter makes of them."""
        a_scans, b_scans, depth, geo_source = self._layout(path)
        if self.interlaced and depth != 2 * a_scans:
            return _subsample_image(self._read_one(path), choose)
        shape = (2 * b_scans, a_scans, depth // 2) if self.interlaced else (b_scans, depth, a_scans)
        check_voxels(path, shape, self.limits, what="Zeiss .img size and geometry")
        from oct_converter.readers import IMG

        idx = np.asarray(choose(shape[0]), dtype=np.int64)
        stored = np.unique(idx // 2 if self.interlaced else idx)
        bscan = depth * a_scans
        try:
            parser = IMG.__new__(IMG)  # oct-converter's file-name parser only (IMG() wants a local file)
            parser.filepath = Path(posixpath.basename(str(path)))
            laterality = {"OD": "R", "OS": "L", None: ""}[parser.get_metadata_from_filename().get("laterality")]
            scans = {}
            with oio.open_file(path, "rb") as f:
                for start, stop in _runs(stored):
                    f.seek(start * bscan)
                    buf = f.read((stop - start) * bscan)
                    if len(buf) != (stop - start) * bscan:
                        raise EOFError(f"{len(buf)} bytes where {(stop - start) * bscan} were expected")
                    block = np.frombuffer(buf, dtype=np.uint8).reshape(stop - start, a_scans, depth)
                    for k in range(stop - start):
                        scans[start + k] = block[k].T  # [depth, a_scans] = [H, W]
            if self.interlaced:
                data = np.stack([np.rot90(scans[int(t) // 2][(int(t) % 2) * a_scans:(int(t) % 2 + 1) * a_scans])
                                 for t in idx]).astype(np.float64)
            else:
                data = np.stack([scans[int(s)] for s in idx])
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot read Zeiss .img ({_first_line(e)})") from None
        return self._image(self._finalise(data, path), path, laterality, geo_source, depth=shape[0],
                           slice_indices=idx)


def _lower(path) -> str:
    return str(path).lower()


# ----------------------------------------------------------------------------------------------- Heidelberg E2E
class HeidelbergE2EReader(_OCTReaderBase):
    """Heidelberg ``.e2e`` through oct-converter's ``E2E``: every OCT volume (series) in the file.

    Files start with ``CMDb`` (or ``E2EMultipleVolumeFile``), so a suffix-less E2E is recognised by content.
    Volumes are listed in file order; ``volume_index`` picks one (default 0), and meta gives ``n_volumes``,
    ``volume_index``, ``volume_id`` (``patient_study_series``), ``laterality`` and ``volumes`` (id, laterality,
    number of B-scans of each). A file with several volumes read without an explicit ``volume_index`` logs a
    warning naming the count. Intensities are oct-converter's E2E display transform (0..1). Spacing: the axial
    ``sh`` is the file's ``scaley`` (B-scan metadata); the lateral ``sw`` and slice ``sd`` spacing are not
    decoded by oct-converter 0.7.0 and come from ``lateral_mm`` / ``slice_mm`` (said in ``spacing_source``).
    """

    suffixes = E2E_SUFFIXES
    fmt = "e2e"

    def __init__(self, volume_index: int | None = None, lateral_mm: float | None = None,
                 slice_mm: float | None = None, sanitize_nan: bool = False, dtype=np.float32, **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        self.volume_index = None if volume_index is None else int(volume_index)
        self.lateral_mm = lateral_mm
        self.slice_mm = slice_mm

    def volumes(self, path: str) -> list:
        """Every OCT volume in ``path`` (oct-converter ``OCTVolumeWithMetaData`` objects, file order)."""
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        with oio.open_file(path, "rb") as f:
            head = f.read(64)
        if sniff_vendor(head) != "e2e":
            raise OCTInputError(path, "not a Heidelberg E2E file (no CMDb header)")
        from oct_converter.readers import E2E

        _numpy2_compat()
        try:
            with oio.local_path(path) as local, _quiet(), _no_warnings():
                vols = E2E(local).read_oct_volume(
                    scalex=1.0 if self.lateral_mm is None else float(self.lateral_mm),
                    slice_thickness=1.0 if self.slice_mm is None else float(self.slice_mm),
                )
                for v in vols:
                    v.volume = _stack(v.volume, path)
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot read Heidelberg E2E file, truncated or corrupt ({_first_line(e)})") \
                from None
        if not vols:
            raise OCTInputError(path, "Heidelberg E2E file holds no OCT volume")
        return vols

    def _read_one(self, path: str) -> OCTImage:
        vols = self.volumes(path)
        index = 0 if self.volume_index is None else self.volume_index
        if not -len(vols) <= index < len(vols):
            raise OCTInputError(path, f"volume_index {index} out of range: the file holds {len(vols)} volume(s)")
        if self.volume_index is None and len(vols) > 1:
            logger.warning("%s holds %d OCT volumes; reading volume 0 (pass volume_index to pick another)",
                           path, len(vols))
        v = vols[index]
        ps = v.pixel_spacing
        sh = float(ps[1]) if ps is not None and np.isfinite(ps[1]) and ps[1] > 0 else None
        spacing = (
            1.0 if self.slice_mm is None else float(self.slice_mm),
            1.0 if sh is None else sh,
            1.0 if self.lateral_mm is None else float(self.lateral_mm),
        )
        source = "; ".join([
            "sd " + ("user slice_mm" if self.slice_mm is not None else "not decoded from E2E: 1.0 mm"),
            "sh " + ("file scaley" if sh is not None else "not in the file: 1.0 mm"),
            "sw " + ("user lateral_mm" if self.lateral_mm is not None else "not decoded from E2E: 1.0 mm"),
        ])
        arr = self._finalise(v.volume, path)
        extra = {
            "spacing_source": source,
            "laterality": v.laterality or "",
            "n_volumes": len(vols),
            "volume_index": index % len(vols),
            "volume_id": v.volume_id,
            "volumes": [
                {"volume_id": w.volume_id, "laterality": w.laterality or "", "n_bscans": int(w.volume.shape[0])}
                for w in vols
            ],
        }
        return OCTImage(arr, spacing, path, self.fmt, extra=extra)


# ----------------------------------------------------------------------------------------------- Bioptigen
class BioptigenOCTReader(_OCTReaderBase):
    """Bioptigen ``.OCT`` through oct-converter's ``BOCT``: every volume in the file.

    The file header (``FRAMECOUNT``, ``LINELENGTH``, ``SCANTYPE``, ``SCANS``, ``FRAMES``, ...) is parsed by
    oct-converter; each stored frame is ``uint16 [A-scans, depth]`` and becomes a B-scan ``[H, W]`` (depth x
    A-scans). oct-converter groups the frames into ``FRAMES`` volumes of ``SCANS`` B-scans each (a linear scan
    gives one-B-scan volumes); ``volume_index`` picks one (default 0, a warning when there are several) and
    meta gives ``n_volumes``, ``scan_type`` (linear, rect, rad) and ``laterality`` (OD/OS in the file name).
    Spacing is not decoded by oct-converter 0.7.0: ``spacing`` ``(sd, sh, sw)`` from the user, else 1.0 mm
    (said in ``spacing_source``). Optovue ``.OCT`` files share the suffix: those have a ``.txt`` file spec beside
    them and go to :class:`OptovueOCTReader`; one without it is refused with that name.
    """

    suffixes = BIOPTIGEN_SUFFIXES
    fmt = "bioptigen"

    def __init__(self, volume_index: int | None = None, spacing: Sequence[float] | None = None,
                 sanitize_nan: bool = False, dtype=np.float32, **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        self.volume_index = None if volume_index is None else int(volume_index)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def _read_one(self, path: str) -> OCTImage:
        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        from oct_converter.exceptions import InvalidOCTReaderError
        from oct_converter.readers import BOCT

        try:
            with oio.local_path(path) as local, _quiet() as printed:
                try:
                    reader = BOCT(local)
                except InvalidOCTReaderError:
                    raise OCTInputError(
                        path, "not a Bioptigen .OCT file (an Optovue .OCT needs its .txt file spec beside it)"
                    ) from None
                vols = reader.read_oct_volume()
                scan_type = reader.bioptigen_scan_type_map.get(
                    int(reader.header_structure.parse_file(local).scantype.value), "unknown")
            if "Stopping load" in printed.getvalue():  # oct-converter stops at a short frame and leaves it unset
                raise OCTInputError(path, "Bioptigen .OCT file truncated (frame data missing)")
        except OCTInputError:
            raise
        except Exception as e:
            raise OCTInputError(path, f"cannot read Bioptigen .OCT file, truncated or corrupt ({_first_line(e)}); "
                                      "an Optovue .OCT needs its .txt file spec beside it") from None
        if not vols:
            raise OCTInputError(path, "Bioptigen .OCT file holds no frames")
        index = 0 if self.volume_index is None else self.volume_index
        if not -len(vols) <= index < len(vols):
            raise OCTInputError(path, f"volume_index {index} out of range: the file holds {len(vols)} volume(s)")
        if self.volume_index is None and len(vols) > 1:
            logger.warning("%s holds %d volumes; reading volume 0 (pass volume_index to pick another)",
                           path, len(vols))
        v = vols[index]
        data = np.asarray(v.volume).transpose(0, 2, 1)  # [D, A-scans, depth] -> [D, H, W]
        spacing, source = ((self.spacing, "user") if self.spacing is not None
                           else ((1.0, 1.0, 1.0), "not decoded from Bioptigen .OCT: 1.0 mm; pass spacing"))
        arr = self._finalise(data, path)
        extra = {"spacing_source": source, "laterality": v.laterality or "", "n_volumes": len(vols),
                 "volume_index": index % len(vols), "scan_type": scan_type}
        return OCTImage(arr, spacing, path, self.fmt, extra=extra)


# ----------------------------------------------------------------------------------------------- Optovue
def _optovue_spec(path: str) -> str:
    """The Optovue ``.txt`` file spec beside ``path`` (``scan.OCT`` -> ``scan.txt``, local or URL)."""
    return posixpath.splitext(str(path))[0] + ".txt"


class OptovueOCTReader(_OCTReaderBase):
    """Optovue ``.OCT`` (raw ``float32`` B-scans, no header) with its ``.txt`` file spec beside it.

    The spec (``Window Height``, ``Scan Length`` / ``Scan Usage`` per volume, ``Eye Scanned``) is parsed by
    oct-converter's ``POCT``. The voxels are read here, each volume at its own offset: oct-converter 0.7.0 reads
    every volume of a multi-volume file from offset 0 (all its volumes would be the first one). Each stored
    B-scan is ``[A-scans, depth]`` and becomes ``[H, W]`` (depth x A-scans) as oct-converter turns it.
    ``volume_index`` picks a volume (default 0, a warning when there are several); meta gives ``n_volumes`` and
    ``laterality``. The spec holds no B-scan geometry (its physical sizes are those of the fundus video):
    ``spacing`` ``(sd, sh, sw)`` from the user, else 1.0 mm (said in ``spacing_source``). A ``.OCT`` without the
    ``.txt`` beside it is read as Bioptigen (which has a header of its own).
    """

    suffixes = BIOPTIGEN_SUFFIXES
    fmt = "optovue"

    def __init__(self, volume_index: int | None = None, spacing: Sequence[float] | None = None,
                 sanitize_nan: bool = False, dtype=np.float32, **kwargs):
        super().__init__(sanitize_nan=sanitize_nan, dtype=dtype, **kwargs)
        self.volume_index = None if volume_index is None else int(volume_index)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def verify_suffix(self, filename) -> bool:
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return all(str(n).lower().endswith(BIOPTIGEN_SUFFIXES) and oio.exists(_optovue_spec(n)) for n in names)

    def _spec(self, path: str) -> tuple:
        """``(scans, file_info)`` from the ``.txt`` file spec beside ``path`` (oct-converter's ``POCT`` parser)."""
        import tempfile

        from oct_converter.readers import POCT

        if not oio.exists(path):
            raise OCTInputError(path, "file not found")
        spec = _optovue_spec(path)
        if not oio.exists(spec):
            raise OCTInputError(path, f"Optovue .OCT needs its file spec {posixpath.basename(spec)} beside it")
        with oio.open_file(spec, "rb") as f:
            spec_bytes = f.read()
        with tempfile.TemporaryDirectory(prefix="oct_optovue_") as tmp:
            local = os.path.join(tmp, "scan.oct")
            open(local, "wb").close()  # POCT checks that the volume exists; the voxels are read below
            with open(os.path.join(tmp, "scan.txt"), "wb") as f:
                f.write(spec_bytes)
            try:
                reader = POCT(local)
                reader._read_filespec()
                scans, info = list(reader.scan_info), dict(reader.file_info)
            except Exception as e:
                raise OCTInputError(spec, f"cannot read the Optovue file spec ({_first_line(e)})") from None
        if not scans:
            raise OCTInputError(spec, "Optovue file spec lists no scan (no 'Scan Length' / 'Scan Usage' lines)")
        return scans, info

    def _volume(self, path: str, scans, size: int) -> tuple:
        """``(index, offset)``: the volume to read and its first voxel, after checking the file's ``size``."""
        if size % 4:
            raise OCTInputError(path, f"{size} bytes is not a whole number of float32 voxels")
        need = sum(v["height"] * v["length"] * v["number"] for v in scans)
        if size // 4 < need:
            raise OCTInputError(path, f"Optovue .OCT truncated: {size // 4} voxels, the spec needs {need}")
        index = 0 if self.volume_index is None else self.volume_index
        if not -len(scans) <= index < len(scans):
            raise OCTInputError(path, f"volume_index {index} out of range: the file holds {len(scans)} volume(s)")
        if self.volume_index is None and len(scans) > 1:
            logger.warning("%s holds %d volumes; reading volume 0 (pass volume_index to pick another)",
                           path, len(scans))
        index %= len(scans)
        return index, sum(v["height"] * v["length"] * v["number"] for v in scans[:index])

    def _image(self, vol, path, scans, info, index, **kw) -> OCTImage:
        spacing, source = ((self.spacing, "user") if self.spacing is not None
                           else ((1.0, 1.0, 1.0), "not in the Optovue file spec: 1.0 mm; pass spacing"))
        arr = self._finalise(np.ascontiguousarray(vol), path)
        extra = {"spacing_source": source, "laterality": info.get("laterality", ""), "n_volumes": len(scans),
                 "volume_index": index,
                 "volumes": [{"n_bscans": int(w["number"]), "height": int(w["height"]), "length": int(w["length"])}
                             for w in scans]}
        return OCTImage(arr, spacing, path, self.fmt, extra=extra, **kw)

    def _read_one(self, path: str) -> OCTImage:
        scans, info = self._spec(path)
        with oio.open_file(path, "rb") as f:
            raw = f.read()
        index, offset = self._volume(path, scans, len(raw))
        data = np.frombuffer(raw, dtype=np.float32)
        v = scans[index]
        n = v["height"] * v["length"] * v["number"]
        vol = data[offset:offset + n].reshape(v["number"], v["length"], v["height"])
        vol = np.rot90(vol, axes=(1, 2))  # [D, length, height] -> [D, height, length], as POCT turns each B-scan
        return self._image(vol, path, scans, info, index)

    partial_depth = True

    def _read_depth_one(self, path: str, choose) -> OCTImage:
        """Only the chosen B-scans of the volume, each run of consecutive ones read at its offset (the file's size
        is checked against the spec first, as :meth:`read` does)."""
        scans, info = self._spec(path)
        with oio.open_file(path, "rb") as f:
            index, offset = self._volume(path, scans, f.seek(0, 2))
            v = scans[index]
            number, length, height = int(v["number"]), int(v["length"]), int(v["height"])
            if min(number, length, height) == 0:
                return _subsample_image(self._read_one(path), choose)  # the whole read names the problem
            check_voxels(path, (number, height, length), self.limits, what="Optovue file spec")
            idx = np.asarray(choose(number), dtype=np.int64)
            bscan = length * height * 4
            scans_read = {}
            for start, stop in _runs(np.unique(idx)):
                f.seek(offset * 4 + start * bscan)
                buf = f.read((stop - start) * bscan)
                if len(buf) != (stop - start) * bscan:
                    raise OCTInputError(path, f"Optovue .OCT truncated: {len(buf)} bytes where {(stop - start) * bscan}"
                                              " were expected")
                block = np.frombuffer(buf, dtype=np.float32).reshape(stop - start, length, height)
                for k in range(stop - start):
                    scans_read[start + k] = block[k]
        vol = np.rot90(np.stack([scans_read[int(i)] for i in idx]), axes=(1, 2))  # as in read
        return self._image(vol, path, scans, info, index, depth=number, slice_indices=idx)


@contextlib.contextmanager
def _no_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
