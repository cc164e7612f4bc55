"""File suffixes of every input format, in a module without heavy imports (the batch runner lists inputs
before torch or MONAI are loaded)."""
from __future__ import annotations

__all__ = ["NIFTI_SUFFIXES", "DICOM_SUFFIXES", "HEYEX_SUFFIXES", "NUMPY_SUFFIXES", "VENDOR_ONLY_SUFFIXES",
           "VIDEO_INPUT_SUFFIXES", "OCT_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
HEYEX_SUFFIXES = (".vol", ".e2e")
NUMPY_SUFFIXES = (".npy",)
#: Every suffix :class:`OCTVolumeReader` knows (files without a suffix are sniffed by their magic bytes).
#: Vendor formats read through oct-converter (:mod:`oct_foundation.data.vendor`); ``.e2e`` is in HEYEX_SUFFIXES.
VENDOR_ONLY_SUFFIXES = (".fda", ".fds", ".img", ".oct")
#: 2D+time inputs read as [C, T, H, W] (:mod:`oct_foundation.data.video`); a folder of .png frames too.
VIDEO_INPUT_SUFFIXES = (".mp4", ".avi", ".tif", ".tiff")
OCT_SUFFIXES = (NIFTI_SUFFIXES + DICOM_SUFFIXES + HEYEX_SUFFIXES + NUMPY_SUFFIXES + VENDOR_ONLY_SUFFIXES
                + VIDEO_INPUT_SUFFIXES)
