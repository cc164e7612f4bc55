"""Header geometry rules of every reader (oct_foundation.data.validation): spacing, max_voxels, non-OCT DICOM;
and a file that fails inside a MONAI Compose is named in the error."""
import gzip
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from oct_foundation.data.readers import (DicomOCTReader, HeidelbergVolReader, LoadOCTd, NiftiOCTReader,
                                         NumpyOCTReader, OCTVolumeReader, load_oct, write_dicom_oct,
                                         write_heyex_vol)
from oct_foundation.data.validation import ReaderLimits, check_spacing
from oct_foundation.errors import OCTInputError

ROOT = Path(__file__).resolve().parents[2]
VOL = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)


def _nifti(path, zooms, vol=VOL):
    img = nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return str(path)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), 150.0])
def test_nifti_bad_spacing_is_an_error_naming_the_file(tmp_path, bad):
    path = _nifti(tmp_path / "scan.nii.gz", (0.1, 0.004, 0.01))
    # nibabel fixes some of these values on write: patch pixdim[1] (offset 80, float32) in the stored bytes
    raw = bytearray(gzip.decompress(Path(path).read_bytes()))
    raw[80:84] = np.float32(bad).tobytes()
    Path(path).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(OCTInputError) as e:
        load_oct(path)
    assert path in str(e.value) and "invalid voxel spacing" in str(e.value)


def test_assume_spacing_is_used_with_a_warning(tmp_path):
    path = _nifti(tmp_path / "zero.nii", (0.0, 0.004, 0.01))
    with pytest.warns(UserWarning, match="assume_spacing"):
        t = load_oct(path, OCTVolumeReader(assume_spacing=(0.1, 0.004, 0.01)))
    assert np.allclose(t.meta["spacing"], (0.1, 0.004, 0.01))
    good = _nifti(tmp_path / "good.nii", (0.2, 0.004, 0.01))  # valid spacing is kept, not replaced
    assert np.allclose(load_oct(good, OCTVolumeReader(assume_spacing=(0.1, 0.004, 0.01))).meta["spacing"],
                       (0.2, 0.004, 0.01))


def test_check_spacing_rules():
    assert check_spacing("f", (0.1, 0.004, 0.01)) == (0.1, 0.004, 0.01)
    for bad in [(0, 1, 1), (1, -1, 1), (1, 1, math.nan), (1, math.inf, 1), (101, 1, 1), (1, 1)]:
        with pytest.raises(OCTInputError, match="f: invalid voxel spacing"):
            check_spacing("f", bad)
    with pytest.raises(ValueError):
        ReaderLimits(assume_spacing=(0, 1, 1))


def test_heyex_zero_spacing_refused(tmp_path):
    path = write_heyex_vol(str(tmp_path / "a.vol"), (VOL * 255).astype(np.uint8), spacing=(0.1, 0.004, 0.01))
    raw = bytearray(Path(path).read_bytes())
    # header field scale_z (float64) follows size_x, num_bscans, size_z (uint32) and scale_x (float64) at 12
    off = 12 + 4 * 3 + 8
    raw[off:off + 8] = np.float64(0.0).tobytes()  # scale_z
    Path(path).write_bytes(bytes(raw))
    import eyepy

    assert float(eyepy.import_heyex_vol(path).scale_z) == 0.0  # the patch hit the field eyepy reads
    with pytest.raises(OCTInputError, match="invalid voxel spacing"):
        HeidelbergVolReader().read(path)


def test_max_voxels_from_nifti_header_before_decompressing(tmp_path):
    path = _nifti(tmp_path / "small.nii.gz", (0.1, 0.004, 0.01))
    with pytest.raises(OCTInputError, match="exceeds max_voxels=1000.*NIfTI header|NIfTI header.*max_voxels=1000"):
        NiftiOCTReader(max_voxels=1000).read(path)
    # a gzip bomb: the header claims 1024^3 uint8 voxels, the stream inflates to 64 MiB of zeros
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 1024))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        zeros = b"\0" * (8 << 20)
        for _ in range(8):
            f.write(zeros)
    del zeros
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(OCTInputError, match="bomb.nii.gz.*1073741824 voxels.*exceeds max_voxels"):
        OCTVolumeReader(max_voxels=512 * 1024 * 1024).read(str(bomb))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes allocated: the stream was inflated"
    assert time.perf_counter() - t0 < 2.0


def test_truncated_gzip_still_named(tmp_path):
    path = _nifti(tmp_path / "t.nii.gz", (0.1, 0.004, 0.01))
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OCTInputError, match="t.nii.gz: .*truncated or corrupt"):
        load_oct(path)


def test_max_voxels_npy_header(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, VOL)
    with pytest.raises(OCTInputError, match="a.npy.*2048 voxels.*npy header"):
        NumpyOCTReader(max_voxels=2000).read(str(path))
    assert NumpyOCTReader(max_voxels=2048).read(str(path)).array.shape == (1, 8, 16, 16)


def _ct_dicom(path):
    write_dicom_oct(str(path), (VOL * 1000).astype(np.uint16), spacing=(0.5, 0.5, 0.5))
    ds = pydicom.dcmread(str(path))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.Modality = "CT"
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def test_non_oct_dicom_refused_unless_allowed(tmp_path):
    path = _ct_dicom(tmp_path / "ct.dcm")
    with pytest.raises(OCTInputError, match="ct.dcm: DICOM is not Ophthalmic Tomography.*modality CT"):
        load_oct(path)
    assert load_oct(path, OCTVolumeReader(allow_non_oct=True)).shape == (1, 8, 16, 16)
    opt = write_dicom_oct(str(tmp_path / "opt.dcm"), (VOL * 1000).astype(np.uint16), spacing=(0.1, 0.004, 0.01))
    assert load_oct(opt).shape == (1, 8, 16, 16)


def test_dicom_voxels_from_header_and_bad_pixel_spacing(tmp_path):
    opt = write_dicom_oct(str(tmp_path / "opt.dcm"), (VOL * 1000).astype(np.uint16), spacing=(0.1, 0.004, 0.01))
    with pytest.raises(OCTInputError, match="opt.dcm.*2048 voxels.*DICOM header"):
        DicomOCTReader(max_voxels=2047).read(opt)
    ds = pydicom.dcmread(opt)
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    pm.PixelSpacing = [0, 0]
    ds.save_as(opt, enforce_file_format=True)
    with pytest.raises(OCTInputError, match="opt.dcm: invalid voxel spacing"):
        load_oct(opt)


def test_compose_error_names_the_file(tmp_path):
    from monai.transforms import Compose

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(RuntimeError) as e:
        Compose([LoadOCTd(["image"])])({"image": str(bad)})
    assert str(bad) in str(e.value) and "object at 0x" not in str(e.value)


def test_cli_inference_refuses_and_then_accepts_with_the_options(tmp_path):
    """The pretrain bundle's batch inference: bad spacing and a CT DICOM are listed with the reason; with
    --assume_spacing and --allow_non_oct true both are read."""
    import torch
    from monai.bundle import ConfigParser

    inputs = tmp_path / "in"
    inputs.mkdir()
    vol = np.random.default_rng(1).random((8, 32, 32)).astype(np.float32)
    _nifti(inputs / "zero_spacing.nii.gz", (0.0, 0.004, 0.01), vol)
    _ct_dicom(inputs / "ct.dcm")
    bundle = ROOT / "bundles" / "oct_vjepa_pretrain"
    enc = {"image_size": [32, 32], "d_target": 4, "patch_size": 16, "tubelet_size": 2, "embed_dim": 32,
           "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "predictor_embed_dim": 32, "predictor_depth": 1,
           "predictor_num_heads": 2}
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), **enc})
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)

    def cmd(out, *extra):
        c = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
             "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
             "--input_dir", str(inputs), "--output_dir", str(out), "--model_path", str(weights), "--device", "cpu"]
        for k, v in enc.items():
            c += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
        return c + list(extra)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / "out1", tmp_path / "out2"]
    cmds = [cmd(outs[0]), cmd(outs[1], "--assume_spacing", "[0.1, 0.004, 0.01]", "--allow_non_oct", "true")]
    procs = [subprocess.Popen(c, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]  # both at once: their imports dominate
    logs = [p.communicate(timeout=180)[0] for p in procs]

    def rows(i):
        import csv

        path = outs[i] / "manifest.csv"
        assert path.exists(), logs[i][-3000:]
        with open(path, newline="") as f:
            return {r["id"]: r for r in csv.DictReader(f)}

    first = rows(0)
    assert len(first) == 2
    reasons = " | ".join(f"{r['status']}: {r['reason']}" for r in first.values())
    assert "invalid voxel spacing" in reasons and "not Ophthalmic Tomography" in reasons, reasons
    assert all(r["status"] == "error" for r in first.values()), reasons
    second = rows(1)
    assert len(second) == 2 and all(r["status"] == "done" for r in second.values()), second
