"""Readers and writers: round trips through nibabel / pydicom / eyepy, fsspec URLs, bad input."""
import gzip

import fsspec
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor

from oct_foundation.data.readers import (
    OPT_SOP_CLASS_UID,
    DicomOCTReader,
    HeidelbergVolReader,
    LoadOCTd,
    NiftiOCTReader,
    NumpyOCTReader,
    OCTVolumeReader,
    load_oct,
    write_dicom_oct,
    write_heyex_vol,
)
from oct_foundation.errors import OCTInputError

SPACING = (0.12, 0.0039, 0.0113)


@pytest.fixture
def vol():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(8, 32, 24), dtype=np.uint8)


def _check(x, vol, spacing=SPACING, name=None):
    assert isinstance(x, MetaTensor)
    assert tuple(x.shape) == (1,) + vol.shape
    np.testing.assert_array_equal(x[0].numpy(), vol.astype(np.float32))
    np.testing.assert_allclose(x.meta["spacing"], spacing, rtol=1e-6)
    np.testing.assert_allclose(x.affine.numpy(), np.diag(list(spacing) + [1.0]), rtol=1e-6)
    if name is not None:
        assert x.meta["filename_or_obj"] == str(name)


def _nifti(path, data, spacing=SPACING):
    nib.save(nib.Nifti1Image(data, np.diag(list(spacing) + [1.0])), str(path))
    return path


def _one_line_error(excinfo, path, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    for w in words:
        assert w in msg.lower(), msg


# ------------------------------------------------------------------------------------------ NIfTI
def test_nifti_roundtrip(tmp_path, vol):
    p = _nifti(tmp_path / "a.nii.gz", vol)
    r = NiftiOCTReader()
    assert r.verify_suffix(str(p)) and not r.verify_suffix("a.dcm")
    _check(load_oct(p, r), vol, name=p)
    p2 = _nifti(tmp_path / "b.nii", vol.astype(np.int16))
    _check(load_oct(p2), vol)


def test_nifti_channels_last_and_units(tmp_path, vol):
    four = np.stack([vol, 255 - vol], axis=-1)  # [D, H, W, C] on disk
    x = load_oct(_nifti(tmp_path / "c.nii.gz", four))
    assert tuple(x.shape) == (2,) + vol.shape
    np.testing.assert_array_equal(x[1].numpy(), (255 - vol).astype(np.float32))
    img = nib.Nifti1Image(vol, np.diag([120.0, 3.9, 11.3, 1.0]))
    img.header.set_xyzt_units("micron")
    nib.save(img, str(tmp_path / "um.nii.gz"))
    np.testing.assert_allclose(load_oct(tmp_path / "um.nii.gz").meta["spacing"], SPACING, rtol=1e-6)


def test_nifti_memory_url_and_loadoctd(memfs, tmp_path, vol):
    p = _nifti(tmp_path / "a.nii.gz", vol)
    memfs.pipe("/bucket/a.nii.gz", p.read_bytes())
    out = LoadOCTd(["image"])({"image": "memory://bucket/a.nii.gz", "class": 1})
    _check(out["image"], vol, name="memory://bucket/a.nii.gz")
    assert out["class"] == 1


def test_monai_loadimage_uses_reader(tmp_path, vol):
    from monai.transforms import LoadImaged

    p = _nifti(tmp_path / "a.nii.gz", vol)
    out = LoadImaged("image", reader=OCTVolumeReader())({"image": str(p)})
    _check(out["image"], vol)


# ------------------------------------------------------------------------------------------ DICOM
def test_dicom_writer_fields_and_roundtrip(tmp_path, vol):
    p = tmp_path / "a.dcm"
    write_dicom_oct(p, vol, spacing=SPACING)
    ds = pydicom.dcmread(str(p))
    assert ds.SOPClassUID == OPT_SOP_CLASS_UID == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "OPT" and int(ds.NumberOfFrames) == 8 and (ds.Rows, ds.Columns) == (32, 24)
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose([float(v) for v in pm.PixelSpacing], SPACING[1:])
    assert float(pm.SpacingBetweenSlices) == pytest.approx(SPACING[0])
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == 8
    assert [int(f.FrameContentSequence[0].InStackPositionNumber) for f in frames] == list(range(1, 9))
    assert float(frames[3].PlanePositionSequence[0].ImagePositionPatient[2]) == pytest.approx(3 * SPACING[0])
    assert "PatientID" not in ds and "PatientName" not in ds and "PatientBirthDate" not in ds
    np.testing.assert_array_equal(ds.pixel_array, vol)
    x = load_oct(p, DicomOCTReader())
    _check(x, vol, name=p)
    assert x.meta["sop_class_uid"] == OPT_SOP_CLASS_UID


def test_dicom_patient_tags_and_uint16(tmp_path, vol):
    v16 = vol.astype(np.uint16) * 200
    p = tmp_path / "b.dcm"
    write_dicom_oct(p, v16, spacing=SPACING, patient_id="P7", PatientName="Doe^Jane", ImageLaterality="R")
    ds = pydicom.dcmread(str(p))
    assert ds.PatientID == "P7" and str(ds.PatientName) == "Doe^Jane" and ds.ImageLaterality == "R"
    assert ds.BitsAllocated == 16
    _check(load_oct(p), v16)
    with pytest.raises(ValueError, match="unknown DICOM keyword"):
        write_dicom_oct(tmp_path / "c.dcm", vol, NotAKeyword=1)
    with pytest.raises(ValueError, match="integer"):
        write_dicom_oct(tmp_path / "c.dcm", vol + 0.5)


def test_dicom_decimal_strings_stay_valid(tmp_path, vol):
    spacing = (1 / 3, 1 / 7, 0.0123456789012345)
    write_dicom_oct(tmp_path / "s.dcm", vol, spacing=spacing)
    ds = pydicom.dcmread(str(tmp_path / "s.dcm"))
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    ipp = ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient
    for v in list(pm.PixelSpacing) + [pm.SpacingBetweenSlices, pm.SliceThickness] + list(ipp):
        assert len(str(v)) <= 16  # DICOM DS limit
    np.testing.assert_allclose(load_oct(tmp_path / "s.dcm").meta["spacing"], spacing, rtol=1e-12)


def test_dicom_spacing_from_per_frame_groups_and_positions(tmp_path, vol):
    """A file edited with pydicom: per-frame PixelMeasures, no SpacingBetweenSlices -> plane positions."""
    p = tmp_path / "a.dcm"
    write_dicom_oct(p, vol, spacing=(1.0, 1.0, 1.0))
    ds = pydicom.dcmread(str(p))
    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pm = pydicom.Dataset()
        pm.PixelSpacing = [0.005, 0.02]
        fg.PixelMeasuresSequence = pydicom.Sequence([pm])
        fg.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.25 * i, 0.0]
    p2 = tmp_path / "edited.dcm"
    ds.save_as(str(p2))
    x = load_oct(p2)
    _check(x, vol, spacing=(0.25, 0.005, 0.02))
    assert "PlanePosition" in x.meta["spacing_source"]
    # only SliceThickness left: used when nothing better is there
    for fg in ds.PerFrameFunctionalGroupsSequence:
        del fg.PlanePositionSequence
        fg.PixelMeasuresSequence[0].SliceThickness = 0.3
    ds.save_as(str(p2))
    np.testing.assert_allclose(load_oct(p2).meta["spacing"], (0.3, 0.005, 0.02))


def test_dicom_memory_url_without_suffix(memfs, tmp_path, vol):
    p = tmp_path / "a.dcm"
    write_dicom_oct(p, vol, spacing=SPACING)
    memfs.pipe("/b/series/IM0001", p.read_bytes())  # DICOM files often have no suffix: magic bytes decide
    _check(load_oct("memory://b/series/IM0001"), vol)
    write_dicom_oct("memory://b/out/w.dcm", vol, spacing=SPACING)  # writer works on URLs too
    _check(load_oct("memory://b/out/w.dcm"), vol)


# ------------------------------------------------------------------------------------------ HEYEX
def test_heyex_vol_roundtrip(tmp_path, vol):
    import eyepy

    p = tmp_path / "a.vol"
    write_heyex_vol(p, vol, spacing=SPACING)
    ev = eyepy.import_heyex_vol(str(p))  # the writer produces what eyepy's parser reads
    assert ev.shape == vol.shape
    assert (ev.scale_z, ev.scale_y, ev.scale_x) == pytest.approx(SPACING)
    np.testing.assert_array_equal(ev.data, vol)
    _check(load_oct(p, HeidelbergVolReader()), vol, name=p)
    raw = load_oct(p, HeidelbergVolReader(intensity="raw"))
    np.testing.assert_allclose(raw[0].numpy(), ev.raw_data, rtol=1e-6)


def test_heyex_vol_memory_url(memfs, tmp_path, vol):
    p = tmp_path / "a.vol"
    write_heyex_vol(p, vol, spacing=SPACING)
    memfs.pipe("/b/a.vol", p.read_bytes())
    _check(load_oct("memory://b/a.vol"), vol)


# ------------------------------------------------------------------------------------------ npy
def test_npy(tmp_path, vol):
    np.save(tmp_path / "a.npy", vol)
    _check(load_oct(tmp_path / "a.npy", NumpyOCTReader(spacing=SPACING)), vol)
    np.save(tmp_path / "b.npy", np.stack([vol, vol]))
    x = load_oct(tmp_path / "b.npy")
    assert tuple(x.shape) == (2,) + vol.shape and tuple(x.meta["spacing"]) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path, memfs):
    for path in (tmp_path / "nope.nii.gz", tmp_path / "nope.dcm", tmp_path / "nope.vol", "memory://b/nope.nii.gz"):
        with pytest.raises(OCTInputError) as e:
            load_oct(path)
        _one_line_error(e, path, "not found")


def test_truncated_files(tmp_path, vol):
    p = _nifti(tmp_path / "a.nii.gz", vol)
    raw = p.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OCTInputError) as e:
        load_oct(cut)
    _one_line_error(e, cut, "truncated")
    plain = tmp_path / "cut.nii"
    plain.write_bytes(gzip.decompress(raw)[:1000])
    with pytest.raises(OCTInputError) as e:
        load_oct(plain)
    _one_line_error(e, plain, "truncated")
    write_dicom_oct(tmp_path / "a.dcm", vol)
    dcut = tmp_path / "cut.dcm"
    dcut.write_bytes((tmp_path / "a.dcm").read_bytes()[:-2000])
    with pytest.raises(OCTInputError) as e:
        load_oct(dcut)
    _one_line_error(e, dcut, "pixel data")
    write_heyex_vol(tmp_path / "a.vol", vol)
    vcut = tmp_path / "cut.vol"
    vcut.write_bytes((tmp_path / "a.vol").read_bytes()[:5000])
    with pytest.raises(OCTInputError) as e:
        load_oct(vcut)
    _one_line_error(e, vcut, "vol", "truncated")
    e2e = tmp_path / "junk.e2e"
    e2e.write_bytes(b"CMDb" + b"\0" * 100)
    with pytest.raises(OCTInputError) as e:
        load_oct(e2e)
    _one_line_error(e, e2e, "e2e")


def test_empty_and_non_image_dicom(tmp_path, vol):
    write_dicom_oct(tmp_path / "a.dcm", vol)
    ds = pydicom.dcmread(str(tmp_path / "a.dcm"))
    del ds.PixelData
    empty = tmp_path / "empty.dcm"
    ds.save_as(str(empty))
    with pytest.raises(OCTInputError) as e:
        load_oct(empty)
    _one_line_error(e, empty, "no pixel data")

    sr = pydicom.Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    report = tmp_path / "report.dcm"
    sr.save_as(str(report), enforce_file_format=True)
    with pytest.raises(OCTInputError) as e:
        load_oct(report)
    _one_line_error(e, report, "no pixel data", "not an image")

    notdcm = tmp_path / "x.dcm"
    notdcm.write_bytes(b"hello" * 100)
    with pytest.raises(OCTInputError) as e:
        load_oct(notdcm)
    _one_line_error(e, notdcm, "not a dicom")


def test_wrong_dimensions(tmp_path, vol):
    p2 = _nifti(tmp_path / "slice.nii.gz", vol[0])
    with pytest.raises(OCTInputError) as e:
        load_oct(p2)
    _one_line_error(e, p2, "2d", "expected a 3d volume")
    p5 = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(vol[:, :, :, None, None].repeat(2, axis=3).repeat(2, axis=4), np.eye(4)), str(p5))
    with pytest.raises(OCTInputError) as e:
        load_oct(p5)
    _one_line_error(e, p5, "5d")
    # a single-frame (2D) DICOM image is not a volume
    write_dicom_oct(tmp_path / "a.dcm", vol[:1])
    ds = pydicom.dcmread(str(tmp_path / "a.dcm"))
    ds.NumberOfFrames = 1
    single = tmp_path / "single.dcm"
    ds.save_as(str(single))
    with pytest.raises(OCTInputError) as e:
        load_oct(single)
    _one_line_error(e, single, "2d")
    np.save(tmp_path / "flat.npy", vol[0])
    with pytest.raises(OCTInputError) as e:
        load_oct(tmp_path / "flat.npy")
    _one_line_error(e, tmp_path / "flat.npy", "2d")


def test_nan_voxels(tmp_path, vol):
    data = vol.astype(np.float32)
    data[2, 3, 4] = np.nan
    data[5, 0, 0] = np.inf
    p = _nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(OCTInputError) as e:
        load_oct(p)
    _one_line_error(e, p, "2 non-finite")
    out = LoadOCTd("image", sanitize_nan=True)({"image": str(p)})["image"]
    assert torch.isfinite(out).all() and out[0, 2, 3, 4] == 0 and out[0, 5, 0, 0] == 0
    assert out[0, 1, 1, 1] == data[1, 1, 1]


def test_unknown_type(tmp_path):
    p = tmp_path / "noext"
    p.write_bytes(b"\0" * 400)
    with pytest.raises(OCTInputError) as e:
        load_oct(p)
    _one_line_error(e, p, "unknown file type")
    assert OCTVolumeReader().verify_suffix("IM0001") and not OCTVolumeReader().verify_suffix("a.png")


def test_fsspec_same_path_for_gs_style_urls(memfs, tmp_path, vol):
    """memory:// goes through fsspec.open exactly as gs:// does: the reader never touches the local disk."""
    write_dicom_oct("memory://bucket/x.dcm", vol, spacing=SPACING)
    with fsspec.open("memory://bucket/x.dcm", "rb") as f:
        assert f.read(132)[128:] == b"DICM"
    assert not list(tmp_path.iterdir())
    _check(load_oct("memory://bucket/x.dcm"), vol)
