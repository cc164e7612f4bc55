"""Synthetic OCT cohort: geometry, labels, files, datalist, determinism, learnability, CLI."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oct_foundation.data import synthetic as syn
from oct_foundation.errors import OCTInputError

ROOT = Path(__file__).resolve().parents[2]
ITEM_KEYS = {"image", "label", "class", "class_name", "device", "case_id"}
SPLITS = ("training", "validation", "test")


def _load(path):
    """Read a NIfTI written by the generator with plain nibabel: (array [D, H, W], affine)."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _items(datalist):
    return [it for key in SPLITS for it in datalist[key]]


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "tiny"
    path = syn.generate_cohort(str(out), cases=12, seed=3, size="tiny", progress=False)
    return out, path


# ----------------------------------------------------------------------------------------- single volumes
@pytest.mark.parametrize("device, size, shape", [("A", "tiny", (12, 32, 32)), ("B", "tiny", (8, 32, 32)),
                                                  ("A", "small", (32, 64, 64)), ("B", "small", (24, 64, 64))])
def test_volume_shape_spacing_and_ranges(device, size, shape):
    vol = syn.synthesize_volume(0, device, size, rng=1)
    assert vol.image.shape == shape and vol.label.shape == shape
    assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
    assert np.isfinite(vol.image).all() and vol.image.min() >= 0 and vol.image.max() <= 1
    dev = syn.DEVICES[device]
    np.testing.assert_allclose(vol.spacing, np.array(dev.fov_mm) / np.array(shape))
    np.testing.assert_allclose(vol.affine, np.diag([*vol.spacing, 1.0]))
    # A normal eye shows every layer from vitreous to sclera and no fluid.
    assert set(np.unique(vol.label)) == set(range(syn.FLUID_LABEL))


def test_devices_differ_in_spacing_noise_and_contrast():
    a, b = syn.DEVICES["A"], syn.DEVICES["B"]
    assert a.shape("small")[0] == 32 and b.shape("small")[0] == 24
    assert a.spacing("small") != b.spacing("small")
    va = syn.synthesize_volume(0, "A", "small", rng=4)
    vb = syn.synthesize_volume(0, "B", "small", rng=4)
    # The top rows (vitreous, far from the retina) hold only noise: device B is noisier.
    assert (va.label[:, :3] == 0).all() and (vb.label[:, :3] == 0).all()
    assert vb.image[:, :3].std() > va.image[:, :3].std()
    # Contrast: the RPE-to-ONL difference is larger on device A.
    gap = [v.image[v.label == syn.RPE_LABEL].mean() - v.image[v.label == 5].mean() for v in (va, vb)]
    assert gap[0] > gap[1] > 0


@pytest.mark.parametrize("cls", [0, 1, 2])
@pytest.mark.parametrize("device", ["A", "B"])
def test_layers_ordered_along_each_ascan(cls, device):
    vol = syn.synthesize_volume(cls, device, "tiny", rng=np.random.default_rng([11, cls]))
    lab = vol.label.astype(int)
    lab[lab == syn.FLUID_LABEL] = -1  # ignore fluid
    running = np.maximum.accumulate(lab, axis=1)  # along H (axial depth)
    non_fluid = lab >= 0
    assert (lab[non_fluid] == running[non_fluid]).all(), "a label value decreases with depth"
    assert (vol.label[:, 0, :] == 0).all() and (vol.label[:, -1, :] == 8).all()
    has_fluid = (vol.label == syn.FLUID_LABEL).any()
    assert has_fluid == (cls == 1)
    if cls == 1:  # fluid lies inside the retina (between ILM and RPE), and is dark
        fluid = vol.label == syn.FLUID_LABEL
        tissue = (vol.label >= 1) & (vol.label <= 5)
        assert vol.image[fluid].mean() < 0.6 * vol.image[tissue].mean()


def test_intensity_profile_has_layer_structure():
    vol = syn.synthesize_volume(0, "A", "small", rng=5)
    mean = {k: vol.image[vol.label == k].mean() for k in range(9)}
    assert mean[0] < 0.2  # dark vitreous
    assert mean[6] > mean[5] and mean[1] > mean[2] > mean[3] < mean[4] > mean[5]  # bright/dark bands
    assert mean[7] > mean[8]  # choroid above the darker sclera


def test_foveal_pit_and_smooth_surfaces():
    vol = syn.synthesize_volume(0, "A", "small", rng=6)
    sd, sh, sw = vol.spacing
    inner = ((vol.label >= 1) & (vol.label <= 3)).sum(axis=1) * sh  # inner-retina thickness [D, W] in mm
    D, W = inner.shape
    d0, w0 = np.unravel_index(np.argmin(inner), inner.shape)
    # The thinnest point is the foveal pit, near the scan centre and far thinner than the periphery.
    assert abs((d0 + 0.5) * sd - D * sd / 2) < 1.0 and abs((w0 + 0.5) * sw - W * sw / 2) < 1.0
    assert inner.min() < 0.25 * np.median(inner)
    # Surfaces vary smoothly in both directions: the ILM moves by at most a few voxels between neighbours.
    ilm = np.argmax(vol.label > 0, axis=1)
    assert np.abs(np.diff(ilm, axis=0)).max() <= 6 and np.abs(np.diff(ilm, axis=1)).max() <= 6
    assert np.ptp(ilm) > 3  # not flat


def test_drusen_elevate_rpe():
    for device in ("A", "B"):
        vol = syn.synthesize_volume(2, device, "small", rng=8)
        assert any(les["type"] == "druse" for les in vol.lesions)
        # Drusen deposits are labelled RPE: the RPE-drusen complex is thicker than a normal RPE somewhere.
        rpe_n = (syn.synthesize_volume(0, device, "small", rng=8).label == syn.RPE_LABEL).sum(axis=1)
        rpe_d = (vol.label == syn.RPE_LABEL).sum(axis=1)
        assert rpe_d.max() >= rpe_n.max() + 2


def test_invalid_arguments():
    with pytest.raises(ValueError, match="class_id"):
        syn.synthesize_volume(3)
    with pytest.raises(ValueError, match="unknown size"):
        syn.synthesize_volume(0, "A", "huge")
    with pytest.raises(ValueError, match="unknown device"):
        syn.synthesize_volume(0, "Z")
    with pytest.raises(ValueError, match="cases"):
        syn.generate_cohort("/nonexistent/never", cases=0)


# ----------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("n", [3, 5, 12, 37, 60])
def test_stratified_split_sizes_and_strata(n):
    strata = [syn.case_design(i, ["A", "B"]) for i in range(n)]
    assignment = syn.stratified_split(strata, (0.6, 0.2, 0.2), seed=0)
    counts = Counter(assignment)
    assert sum(counts.values()) == n and all(counts[k] >= 1 for k in range(3))
    for k, frac in enumerate((0.6, 0.2, 0.2)):
        assert abs(counts[k] - frac * n) <= 1.5
    if n >= 30:  # every (class, device) stratum is represented in the training split
        assert {s for s, a in zip(strata, assignment) if a == 0} == set(strata)
    assert syn.stratified_split(strata, (3, 1, 1), seed=0) == assignment  # fractions are normalised


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        syn.stratified_split([0, 1], (0.5, -0.1, 0.6))


# ----------------------------------------------------------------------------------------- cohort on disk
def test_datalist_structure_and_files(tiny_cohort):
    out, path = tiny_cohort
    assert path == os.path.join(str(out), "datalist.json")
    datalist = json.loads(Path(path).read_text())
    assert set(SPLITS) <= set(datalist)
    items = _items(datalist)
    assert [len(datalist[k]) for k in SPLITS] == [7, 3, 2]
    assert sorted(it["case_id"] for it in items) == [f"case_{i:04d}" for i in range(12)]
    assert Counter(it["class"] for it in items) == {0: 4, 1: 4, 2: 4}
    assert Counter(it["device"] for it in items) == {"A": 6, "B": 6}
    assert datalist["labels"][str(syn.FLUID_LABEL)] == "fluid"
    for it in items:
        assert set(it) == ITEM_KEYS
        assert it["image"] == f"images/{it['case_id']}.nii.gz" and it["label"] == f"labels/{it['case_id']}.nii.gz"
        assert it["class_name"] == syn.CLASS_NAMES[it["class"]]
        image, affine = _load(out / it["image"])
        label, laffine = _load(out / it["label"])
        dev = syn.DEVICES[it["device"]]
        assert image.shape == label.shape == dev.shape("tiny")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        np.testing.assert_allclose(affine, np.diag([*dev.spacing("tiny"), 1.0]), rtol=1e-6)
        np.testing.assert_allclose(laffine, affine)
        assert nib.load(str(out / it["image"])).header.get_xyzt_units()[0] == "mm"
        assert set(np.unique(label)) <= set(range(syn.NUM_LABELS))
        assert ((label == syn.FLUID_LABEL).any()) == (it["class"] == 1)
    # The files hold exactly what the in-memory generator draws for that case.
    idx = 4
    vol = syn.synthesize_volume(*syn.case_design(idx, ["A", "B"]), "tiny", np.random.default_rng([3, idx]))
    np.testing.assert_array_equal(_load(out / f"images/case_{idx:04d}.nii.gz")[0], vol.image)
    np.testing.assert_array_equal(_load(out / f"labels/case_{idx:04d}.nii.gz")[0], vol.label)


def test_determinism(tiny_cohort, tmp_path):
    out, _ = tiny_cohort
    again = Path(syn.generate_cohort(str(tmp_path / "again"), cases=12, seed=3, size="tiny", progress=False)).parent
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = Path(syn.generate_cohort(str(tmp_path / "other"), cases=12, seed=4, size="tiny", progress=False)).parent
    for rel in ("images/case_0000.nii.gz", "labels/case_0000.nii.gz"):
        assert not np.array_equal(_load(out / rel)[0], _load(other / rel)[0])


def test_case_content_does_not_depend_on_cohort_size(tiny_cohort, tmp_path):
    out, _ = tiny_cohort
    small = Path(syn.generate_cohort(str(tmp_path / "c"), cases=3, seed=3, size="tiny", progress=False)).parent
    for i in range(3):
        rel = f"images/case_{i:04d}.nii.gz"
        assert (small / rel).read_bytes() == (out / rel).read_bytes()


def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OCTInputError, match="not empty.*overwrite") as err:
        syn.generate_cohort(str(out), cases=2, size="tiny", progress=False)
    assert str(out) in str(err.value)
    assert sorted(os.listdir(out)) == ["notes.txt"]  # nothing written
    path = syn.generate_cohort(str(out), cases=2, size="tiny", progress=False, overwrite=True)
    assert os.path.exists(path) and (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine
    assert os.path.exists(syn.generate_cohort(str(empty), cases=1, size="tiny", progress=False))


def test_writes_to_fsspec_url(memfs):
    path = syn.generate_cohort("memory://cohorts/run1", cases=3, seed=0, size="tiny", devices=["B"],
                               progress=False, split=(1, 1, 1))
    assert path == "memory://cohorts/run1/datalist.json"
    with memfs.open("/cohorts/run1/datalist.json") as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in SPLITS] == [1, 1, 1]
    item = datalist["test"][0]
    with memfs.open(f"/cohorts/run1/{item['image']}") as f:
        img = nib.Nifti1Image.from_bytes(gzip.decompress(f.read()))
    assert img.shape == syn.DEVICES["B"].shape("tiny") and item["device"] == "B"
    with pytest.raises(OCTInputError, match="not empty"):
        syn.generate_cohort("memory://cohorts/run1", cases=1, size="tiny", progress=False)


# ----------------------------------------------------------------------------------------- learnability
def _features(image, label, spacing):
    """Two hand-made statistics per volume: dark fraction inside the retina, peak RPE elevation (mm)."""
    from scipy.ndimage import gaussian_filter, median_filter

    sd, sh, sw = spacing
    vitreous = np.cumsum(label > 0, axis=1) == 0
    tissue = (label >= 1) & (label <= 5)
    retina = tissue | (label == syn.FLUID_LABEL)
    smooth = gaussian_filter(image, (0, 0.02 / sh, 0.15 / sw))  # axial 20 um, lateral 150 um
    v0, v1 = np.median(smooth[vitreous]), np.median(smooth[tissue])
    dark = (smooth[retina] < v0 + 0.2 * (v1 - v0)).mean()  # about as dark as the vitreous
    rpe = label == syn.RPE_LABEL
    top = np.argmax(rpe, axis=1) * sh  # RPE top depth [D, W]
    baseline = median_filter(top, size=(1, 15), mode="nearest")
    elevation = np.percentile((baseline - top)[rpe.any(axis=1)], 99)
    return [dark, elevation]


def test_classes_learnable_from_simple_statistics(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = tmp_path / "learn"
    datalist = json.loads(Path(syn.generate_cohort(str(out), cases=36, seed=21, size="small",
                                                   progress=False)).read_text())

    def xy(items):
        rows = []
        for it in items:
            image, affine = _load(out / it["image"])
            label, _ = _load(out / it["label"])
            rows.append(_features(image, label, np.diag(affine)[:3]))
        return np.array(rows), np.array([it["class"] for it in items])

    x_train, y_train = xy(datalist["training"])
    x_test, y_test = xy(datalist["validation"] + datalist["test"])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    accuracy = (clf.predict(x_test) == y_test).mean()
    assert accuracy >= 0.85, f"held-out accuracy {accuracy:.2f} (chance 0.33)"
    # Each statistic on its own carries its class: fluid is darkest inside the retina, drusen lift the RPE.
    x_all, y_all = np.vstack([x_train, x_test]), np.concatenate([y_train, y_test])
    assert x_all[y_all == 1, 0].mean() > 2 * x_all[y_all != 1, 0].mean()
    assert x_all[y_all == 2, 1].min() > x_all[y_all == 0, 1].max()


# ----------------------------------------------------------------------------------------- command line
def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "oct_foundation.data.synthetic", *args], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_help():
    res = _cli("--help")
    assert res.returncode == 0
    for flag in ("--out", "--cases", "--seed", "--size", "--overwrite", "--split"):
        assert flag in res.stdout


def test_cli_tiny_run_and_refusal(tmp_path):
    out = tmp_path / "cli"
    res = _cli("--out", str(out), "--cases", "4", "--seed", "2", "--size", "tiny", "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out / "datalist.json")
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["metadata"]["seed"] == 2 and len(_items(datalist)) == 4
    assert len(list((out / "images").glob("*.nii.gz"))) == 4 == len(list((out / "labels").glob("*.nii.gz")))
    res = _cli("--out", str(out), "--cases", "4", "--size", "tiny", "--quiet")
    assert res.returncode == 2 and "not empty" in res.stderr and str(out) in res.stderr
    res = _cli("--out", str(out), "--cases", "2", "--size", "tiny", "--quiet", "--overwrite")
    assert res.returncode == 0 and len(_items(json.loads((out / "datalist.json").read_text()))) == 2


# ----------------------------------------------------------------------------------------- package readers
def test_package_readers_load_the_cohort_including_dicom(tmp_path):
    import pydicom

    from oct_foundation.data.datalist import load_datalist
    from oct_foundation.data.readers import LoadOCTd

    out = tmp_path / "dcm"
    syn.generate_cohort(str(out), cases=3, seed=1, size="tiny", dicom=True, progress=False, split=(1, 1, 1))
    nifti = {it["case_id"]: it for key in SPLITS for it in load_datalist(str(out / "datalist.json"), key)}
    dicom = {it["case_id"]: it for key in SPLITS for it in load_datalist(str(out / "datalist_dicom.json"), key)}
    assert sorted(nifti) == sorted(dicom) == ["case_0000", "case_0001", "case_0002"]
    load = LoadOCTd(keys=["image", "label"])
    for case_id, item in nifti.items():
        dev = syn.DEVICES[item["device"]]
        assert dicom[case_id]["image"].endswith(f"dicom/{case_id}.dcm")
        assert dicom[case_id]["label"] == item["label"] and dicom[case_id]["class"] == item["class"]
        a, b = load(item), load(dicom[case_id])
        assert a["image"].shape == b["image"].shape == (1, *dev.shape("tiny")) == a["label"].shape
        np.testing.assert_allclose(a["image"].meta["spacing"], dev.spacing("tiny"), rtol=1e-5)
        np.testing.assert_allclose(b["image"].meta["spacing"], dev.spacing("tiny"), rtol=1e-5)
        # DICOM holds the 8-bit quantised image.
        np.testing.assert_array_equal(b["image"].numpy(), np.round(a["image"].numpy() * 255))
        ds = pydicom.dcmread(str(out / f"dicom/{case_id}.dcm"))
        assert ds.Modality == "OPT" and ds.PatientID == case_id and ds.NumberOfFrames == dev.shape("tiny")[0]


def test_custom_device_profile(tmp_path):
    import dataclasses

    dev_c = dataclasses.replace(syn.DEVICES["A"], name="C", slices={"tiny": 9}, fov_mm=(4.5, 1.0, 5.0), looks=8.0)
    path = syn.generate_cohort(str(tmp_path / "c"), cases=3, size="tiny", devices=[dev_c], progress=False)
    datalist = json.loads(Path(path).read_text())
    assert {it["device"] for it in _items(datalist)} == {"C"}
    assert datalist["metadata"]["devices"]["C"]["shape"] == [9, 32, 32]
    image, affine = _load(Path(path).parent / _items(datalist)[0]["image"])
    assert image.shape == (9, 32, 32)
    np.testing.assert_allclose(np.diag(affine)[:3], (0.5, 1.0 / 32, 5.0 / 32), rtol=1e-6)


def test_lesion_scale_extends_lesions_with_the_same_draws(tmp_path):
    synthesize_volume, FLUID_LABEL, RPE_LABEL = syn.synthesize_volume, syn.FLUID_LABEL, syn.RPE_LABEL
    base = synthesize_volume(1, "A", "tiny", 7)
    same = synthesize_volume(1, "A", "tiny", 7, lesion_scale=1.0)
    big = synthesize_volume(1, "A", "tiny", 7, lesion_scale=2.5)
    np.testing.assert_array_equal(base.image, same.image)
    assert (big.label == FLUID_LABEL).sum() > (base.label == FLUID_LABEL).sum() > 0
    # the anatomy and acquisition draws do not change: a normal eye (no lesions) is identical
    np.testing.assert_array_equal(synthesize_volume(0, "B", "tiny", 3, lesion_scale=2.5).image,
                                  synthesize_volume(0, "B", "tiny", 3).image)
    # extended drusen lift the RPE over more columns
    elevated = [(synthesize_volume(2, "A", "tiny", 11, lesion_scale=s).label == RPE_LABEL).sum() for s in (1.0, 2.5)]
    assert elevated[1] > elevated[0]
    with pytest.raises(ValueError, match="lesion_scale"):
        synthesize_volume(1, "A", "tiny", 7, lesion_scale=0)
    from oct_foundation.data.synthetic import main
    assert main(["--out", str(tmp_path / "c"), "--cases", "3", "--size", "tiny", "--quiet", "--lesion-scale", "2"]) == 0
    meta = json.loads((tmp_path / "c" / "datalist.json").read_text())["metadata"]
    assert meta["lesion_scale"] == 2.0
