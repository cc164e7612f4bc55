"""NIfTI files written by other software in other orientations read to the package's [D, H, W] array."""
import nibabel as nib
import numpy as np
import pytest

from oct_foundation.data.readers import load_oct
from oct_foundation.data.synthetic import _nifti_bytes
from oct_foundation.errors import OCTInputError

SPACING = (0.12, 0.0039, 0.0113)  # (sd, sh, sw) mm


@pytest.fixture
def vol():
    return np.random.default_rng(3).integers(0, 255, size=(6, 20, 12)).astype(np.float32)


def write_nifti(path, vol, spacing):
    """What the synthetic cohort writes (its own NIfTI writer)."""
    path.write_bytes(_nifti_bytes(vol, spacing))
    return path


def _save(path, data, affine, qform=True, sform=True):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1 if sform else 0)
    img.set_qform(affine, code=1 if qform else 0)
    nib.save(img, str(path))
    return path


def test_package_writer_is_the_reference_orientation(tmp_path, vol):
    p = tmp_path / "ref.nii.gz"
    write_nifti(p, vol, SPACING)
    x = load_oct(p)
    assert nib.aff2axcodes(nib.load(str(p)).affine) == ("R", "A", "S")
    np.testing.assert_array_equal(x[0].numpy(), vol)
    np.testing.assert_allclose(x.meta["spacing"], SPACING, rtol=1e-6)
    assert x.meta["orientation"] == "RAS"


def test_permuted_and_flipped_files_read_to_the_same_array(tmp_path, vol):
    sd, sh, sw = SPACING
    ref = load_oct(write_nifti(tmp_path / "ref.nii.gz", vol, SPACING))
    # storage order [W, D, H] with W flipped (x decreasing) and a translation: axis codes "SRA" -> "IRA"
    stored = np.transpose(vol, (2, 0, 1))[::-1]
    aff = np.zeros((4, 4))
    aff[2, 0] = -sw  # stored axis 0 = W, runs along -z
    aff[0, 1] = sd   # stored axis 1 = D, along +x
    aff[1, 2] = sh   # stored axis 2 = H, along +y
    aff[:3, 3] = (5.0, -3.0, 2.0)
    aff[3, 3] = 1
    p1 = _save(tmp_path / "wdh.nii.gz", np.ascontiguousarray(stored), aff)
    # LPS-style file: D and H flipped, W kept
    aff2 = np.diag([-sd, -sh, sw, 1.0])
    p2 = _save(tmp_path / "lps.nii", np.ascontiguousarray(vol[::-1, ::-1]), aff2, qform=False)
    for p, codes in ((p1, "IRA"), (p2, "LPS")):
        x = load_oct(p)
        np.testing.assert_array_equal(x.numpy(), ref.numpy())
        np.testing.assert_allclose(x.meta["spacing"], SPACING, rtol=1e-6)
        assert x.meta["orientation"] == f"{codes} -> RAS (reoriented)"
        np.testing.assert_allclose(x.meta["original_affine"], nib.load(str(p)).affine)


def test_channel_axis_stays_last_when_reoriented(tmp_path, vol):
    four = np.stack([vol, 255 - vol], axis=-1)[::-1]  # D flipped, channels last
    p = _save(tmp_path / "c.nii.gz", np.ascontiguousarray(four), np.diag([-SPACING[0], SPACING[1], SPACING[2], 1]))
    x = load_oct(p)
    assert tuple(x.shape) == (2,) + vol.shape
    np.testing.assert_array_equal(x[1].numpy(), 255 - vol)


def test_small_tilt_reorients_to_the_nearest_axes(tmp_path, vol):
    t = np.radians(10)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(SPACING)
    aff[:3, 0] *= -1  # D flipped as well
    x = load_oct(_save(tmp_path / "tilt.nii.gz", np.ascontiguousarray(vol[::-1]), aff))
    np.testing.assert_array_equal(x[0].numpy(), vol)
    np.testing.assert_allclose(x.meta["spacing"], SPACING, rtol=1e-6)


def test_no_orientation_codes_reads_as_stored(tmp_path, vol):
    p = _save(tmp_path / "raw.nii.gz", vol, np.diag([-1.0, 1, 1, 1]), qform=False, sform=False)
    x = load_oct(p)
    np.testing.assert_array_equal(x[0].numpy(), vol)
    assert x.meta["orientation"].startswith("as stored")


def test_ambiguous_orientations_are_refused_naming_the_file(tmp_path, vol):
    t = np.radians(45)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag(SPACING)
    p = _save(tmp_path / "oblique.nii.gz", vol, aff)
    with pytest.raises(OCTInputError, match="oblique.nii.gz: NIfTI affine is oblique"):
        load_oct(p)
    img = nib.Nifti1Image(vol, np.diag([*SPACING, 1]))
    img.set_sform(np.diag([*SPACING, 1]), code=1)
    img.set_qform(np.diag([-SPACING[0], SPACING[1], SPACING[2], 1]), code=1)
    p2 = tmp_path / "disagree.nii.gz"
    nib.save(img, str(p2))
    with pytest.raises(OCTInputError, match=r"disagree.nii.gz: NIfTI qform \(LAS\) and sform \(RAS\) disagree"):
        load_oct(p2)
    sing = np.diag([*SPACING, 1.0])
    sing[:3, 2] = sing[:3, 1]
    with pytest.raises(OCTInputError, match="singular.nii.gz: NIfTI affine is singular"):
        load_oct(_save(tmp_path / "singular.nii.gz", vol, sing, qform=False))
