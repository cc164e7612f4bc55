"""Datalists on local folders and memory:// URLs, and their error messages."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from oct_foundation.data.datalist import datalist_from_folder, load_datalist
from oct_foundation.data.readers import LoadOCTd, write_dicom_oct
from oct_foundation.errors import OCTInputError


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_load_datalist_resolves_relative_paths(tmp_path):
    dl = _write(tmp_path / "ds" / "datalist.json", {
        "training": [
            {"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "class": 2, "device": "A"},
            {"image": "/abs/b.nii.gz", "class": 0},
            {"image": "gs://bucket/c.nii.gz"},
            "images/d.nii.gz",
        ],
        "validation": [{"image": ["images/e0.nii.gz", "images/e1.nii.gz"]}],
    })
    items = load_datalist(dl)
    root = str(tmp_path / "ds")
    assert items[0] == {"image": os.path.join(root, "images/a.nii.gz"), "label": os.path.join(root, "labels/a.nii.gz"),
                        "class": 2, "device": "A"}
    assert items[1]["image"] == "/abs/b.nii.gz" and items[2]["image"] == "gs://bucket/c.nii.gz"
    assert items[3] == {"image": os.path.join(root, "images/d.nii.gz")}
    assert load_datalist(str(dl), "validation")[0]["image"] == [os.path.join(root, f"images/e{i}.nii.gz") for i in (0, 1)]


def test_load_datalist_memory_url_end_to_end(memfs, tmp_path):
    vol = np.arange(6 * 8 * 10, dtype=np.uint8).reshape(6, 8, 10)
    nib.save(nib.Nifti1Image(vol, np.diag([0.1, 0.01, 0.02, 1])), str(tmp_path / "a.nii.gz"))
    memfs.pipe("/data/images/a.nii.gz", (tmp_path / "a.nii.gz").read_bytes())
    write_dicom_oct("memory://data/images/b.dcm", vol, spacing=(0.2, 0.01, 0.02))
    memfs.pipe("/data/datalist.json", json.dumps(
        {"test": [{"image": "images/a.nii.gz", "class": 1}, {"image": "images/b.dcm", "class": 0}]}).encode())
    items = load_datalist("memory://data/datalist.json", key="test", check_files=True)
    assert [i["image"] for i in items] == ["memory://data/images/a.nii.gz", "memory://data/images/b.dcm"]
    load = LoadOCTd("image")
    for item, sd in zip(items, (0.1, 0.2)):
        x = load(item)["image"]
        assert tuple(x.shape) == (1, 6, 8, 10) and x.meta["spacing"][0] == pytest.approx(sd)
        np.testing.assert_array_equal(x[0].numpy(), vol)


def test_load_datalist_errors_name_the_file(tmp_path, memfs):
    dl = _write(tmp_path / "datalist.json", {"training": [{"image": "x.nii.gz"}]})
    with pytest.raises(OCTInputError) as e:
        load_datalist(dl, key="validation")
    assert str(e.value) == f"{dl}: datalist has no 'validation' list (available: training)"
    with pytest.raises(OCTInputError, match="missing.json: file not found"):
        load_datalist(tmp_path / "missing.json")
    with pytest.raises(OCTInputError, match="memory://nope/dl.json: file not found"):
        load_datalist("memory://nope/dl.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(OCTInputError, match="bad.json: not valid JSON"):
        load_datalist(bad)
    odd = _write(tmp_path / "odd.json", {"training": [3]})
    with pytest.raises(OCTInputError, match=r"odd.json: training\[0\] must be an object"):
        load_datalist(odd)
    with pytest.raises(OCTInputError) as e:
        load_datalist(dl, check_files=True)
    assert str(e.value).startswith(str(tmp_path / "x.nii.gz") + ": file not found (listed in")


def test_datalist_from_folder(tmp_path, memfs):
    for name in ("b.nii.gz", "a.dcm", "c.vol", "notes.txt", "d.NPY"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    items = datalist_from_folder(tmp_path)
    assert [os.path.basename(i["image"]) for i in items] == ["a.dcm", "b.nii.gz", "c.vol", "d.NPY"]
    assert datalist_from_folder(str(tmp_path), suffixes=[".nii.gz"]) == [{"image": str(tmp_path / "b.nii.gz")}]
    memfs.pipe("/f/x.nii.gz", b"x")
    memfs.pipe("/f/y.dcm", b"x")
    memfs.pipe("/f/z.json", b"{}")
    assert datalist_from_folder("memory://f") == [{"image": "memory://f/x.nii.gz"}, {"image": "memory://f/y.dcm"}]
    with pytest.raises(OCTInputError, match="nowhere: folder not found"):
        datalist_from_folder(tmp_path / "nowhere")
    with pytest.raises(OCTInputError, match="sub: no files with suffix"):
        datalist_from_folder(tmp_path / "sub")


def test_reads_the_synthetic_cohort(tmp_path):
    """The cohort generator's NIfTI and DICOM output, through datalists, readers and preprocessing."""
    synthetic = pytest.importorskip("oct_foundation.data.synthetic")
    from monai.transforms import Compose

    from oct_foundation.data.transforms import build_preprocessing

    path = synthetic.generate_cohort(str(tmp_path / "c"), cases=2, seed=0, size="tiny", dicom=True, progress=False)
    items = [i for key in ("training", "validation", "test") for i in load_datalist(path, key)]
    assert len(items) == 2
    t = Compose(build_preprocessing(label_key="label", d_target=4, image_size=(16, 16)))
    for item in items:
        out = t(item)
        assert out["image"].shape == out["label"].shape == (1, 4, 16, 16)
        nifti = LoadOCTd("image")({"image": item["image"]})["image"]
        dcm = item["image"].replace("images/", "dicom/").replace(".nii.gz", ".dcm")
        dicom = LoadOCTd("image")({"image": dcm})["image"]
        assert dicom.shape == nifti.shape
        np.testing.assert_allclose(dicom.meta["spacing"], nifti.meta["spacing"], rtol=1e-5)


def test_training_datalist_datalist_else_folder(tmp_path):
    from oct_foundation.data.datalist import training_datalist

    ds = tmp_path / "ds"
    for sub in ("images", "labels"):
        (ds / sub).mkdir(parents=True)
    for i in range(12):
        for sub in ("images", "labels"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(ds / sub / f"c{i:02d}.nii.gz"))
    dl = ds / "datalist.json"
    # no datalist: images/ scanned, labels paired by name, every 10th pair held out for validation
    got = training_datalist(str(dl), str(ds), label_key="label")
    assert got["_source"] == str(ds) and len(got["training"]) == 10 and len(got["validation"]) == 2
    assert all(it["label"] == str(ds / "labels" / os.path.basename(it["image"])) for it in got["training"])
    # unsupervised: every image trains
    assert len(training_datalist(str(dl), str(ds))["training"]) == 12
    # a label missing: named, with the rule
    os.remove(ds / "labels" / "c03.nii.gz")
    with pytest.raises(OCTInputError, match=r"c03.nii.gz: no label .*labels/c03.nii.gz of the same name"):
        training_datalist(str(dl), str(ds), label_key="label")
    # what a folder cannot give: the datalist is required, and the message says what it must hold
    with pytest.raises(OCTInputError, match=r"datalist.json: datalist not found: the class of each volume"):
        training_datalist(str(dl), str(ds), needs="the class of each volume")
    # a datalist that exists wins
    _write(dl, {"training": [{"image": "images/c00.nii.gz"}], "validation": []})
    assert training_datalist(str(dl), str(ds), needs="the class of each volume") == str(dl)
