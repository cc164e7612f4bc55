"""OCT data: readers (NIfTI, DICOM OPT, HEYEX .vol/.e2e, .npy), transforms, datalists, synthetic cohort.

Names are resolved lazily (``oct_foundation.data.OCTVolumeReader`` imports the readers module on first
use), so importing the package stays cheap and bundle configs can use ``_target_: oct_foundation.data.X``.
"""
from __future__ import annotations

import importlib
import os

_EXPORTS = {
    "readers": (
        "OCTImage", "NiftiOCTReader", "DicomOCTReader", "HeidelbergVolReader", "NumpyOCTReader",
        "OCTVolumeReader", "LoadOCTd", "LoadOCTSlicesd", "load_oct", "write_dicom_oct", "write_heyex_vol", "OPT_SOP_CLASS_UID",
        "OCT_SUFFIXES", "dicom_spacing", "spacing_affine", "sniff_format",
    ),
    "transforms": (
        "DEPTH_STRATEGIES", "sample_depth_indices", "select_depth", "DepthSubsampled", "MinDepthd", "CheckFinited",
        "RecordSpacingd", "input_error_from", "time_as_depth", "TimeAsDepth", "TimeAsDepthd", "build_preprocessing",
        "default_maisi_transforms",
    ),
    "datalist": ("load_datalist", "datalist_from_folder", "training_datalist"),
    "preflight": ("preflight_datalist", "probe_volume"),
    "batch": ("prepare_batch_image",),
    "latents": ("LoadLatentd", "read_latent", "LATENT_SUFFIXES"),
}
_NAME_TO_MODULE = {name: mod for mod, names in _EXPORTS.items() for name in names}
if os.path.exists(os.path.join(os.path.dirname(__file__), "synthetic.py")):
    _NAME_TO_MODULE["generate_cohort"] = "synthetic"

__all__ = sorted(_NAME_TO_MODULE)


def __getattr__(name):
    mod = _NAME_TO_MODULE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
