import csv
import json
import os

import numpy as np
import pytest

from oct_foundation import io
from oct_foundation.engines.batch_inference import BatchInference, anonymous_id, list_inputs
from oct_foundation.errors import OCTInputError


class MeanProcessor:
    """Reads a .npy volume and writes its mean: a real processor, small enough for a unit test."""

    def __init__(self):
        self.calls = 0

    def outputs(self, out_stem):
        return [out_stem + "_mean.json"]

    def __call__(self, item, out_stem):
        self.calls += 1
        with io.open_file(item["image"], "rb") as f:
            try:
                arr = np.load(f)
            except ValueError as e:
                raise OCTInputError(item["image"], f"not a .npy array ({e})") from None
        if arr.ndim != 3:
            raise OCTInputError(item["image"], f"expected 3 dimensions [D, H, W], got {arr.ndim}")
        io.save_json({"mean": float(arr.mean())}, out_stem + "_mean.json")
        return {"shape": list(arr.shape), "mean": float(arr.mean())}


def _folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "Doe_John_1.npy", np.ones((2, 3, 4), np.float32))
    np.save(d / "Roe_Jane_2.npy", np.full((2, 3, 4), 3.0, np.float32))
    np.save(d / "Bad_Flat.npy", np.ones((3, 4), np.float32))
    (d / "Broken_Name.npy").write_bytes(b"not numpy at all")
    (d / "notes.txt").write_text("ignored")
    return d


def _read_summary(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_mixed_folder_continues_and_hides_names(tmp_path):
    d, out = _folder(tmp_path), tmp_path / "out"
    proc = MeanProcessor()
    rows = BatchInference(str(d), str(out), proc, progress=False).run()
    status = sorted(r["status"] for r in rows)
    assert status == ["done", "done", "error", "error"]
    summary = _read_summary(out / "summary.csv")
    assert len(summary) == 4
    err = [r for r in summary if r["status"] == "error"]
    assert any("expected 3 dimensions" in r["reason"] for r in err)
    assert all(f"<input #{r['position']}>" in r["reason"] for r in err)  # named by position, never by file
    # No input name anywhere in the outputs.
    blob = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    blob += " ".join(os.listdir(out))
    for name in ("Doe", "John", "Roe", "Jane", "Bad_Flat", "Broken_Name", str(d)):
        assert name not in blob
    assert (out / f"{anonymous_id(str(d / 'Doe_John_1.npy'))}_mean.json").exists()


def test_rerun_skips_finished_and_overwrite_redoes(tmp_path):
    d, out = _folder(tmp_path), tmp_path / "out"
    BatchInference(str(d), str(out), MeanProcessor(), progress=False).run()
    target = out / f"{anonymous_id(str(d / 'Roe_Jane_2.npy'))}_mean.json"
    target.write_text('{"mean": -1}')  # a finished output must survive a rerun
    proc = MeanProcessor()
    rows = BatchInference(str(d), str(out), proc, progress=False).run()
    assert proc.calls == 2  # only the two failed files are tried again
    assert json.loads(target.read_text()) == {"mean": -1}
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 2 and all(r.get("shape") for r in skipped)  # earlier fields kept
    proc = MeanProcessor()
    BatchInference(str(d), str(out), proc, overwrite=True, progress=False).run()
    assert proc.calls == 4 and json.loads(target.read_text()) == {"mean": 3.0}


def test_id_map_and_index_file(tmp_path):
    d, out = _folder(tmp_path), tmp_path / "out"
    id_map = tmp_path / "ids.csv"
    id_map.write_text("input,id\nDoe_John_1.npy,subject01\n")
    BatchInference(str(d), str(out), MeanProcessor(), id_map=str(id_map),
                   index_file=str(tmp_path / "private_index.csv"), progress=False).run()
    assert (out / "subject01_mean.json").exists()
    index = _read_summary(tmp_path / "private_index.csv")
    assert {"subject01": str(d / "Doe_John_1.npy")}.items() <= {r["id"]: r["input"] for r in index}.items()


def test_memory_urls_and_datalist(memfs, tmp_path):
    for name, val in (("a.npy", 1.0), ("b.npy", 2.0)):
        with io.atomic_output(f"memory://cohort/{name}") as tmp:
            np.save(tmp, np.full((2, 2, 2), val, np.float32))
    io.save_json({"test": [{"image": "a.npy"}, {"image": "b.npy", "class": 1}]}, "memory://cohort/datalist.json")
    items = list_inputs("memory://cohort/datalist.json")
    assert [i["image"] for i in items] == ["memory://cohort/a.npy", "memory://cohort/b.npy"]
    rows = BatchInference("memory://cohort/datalist.json", "memory://out", MeanProcessor(), progress=False).run()
    assert [r["status"] for r in rows] == ["done", "done"]
    assert io.exists("memory://out/summary.csv")
    with pytest.raises(OCTInputError, match="datalist has no 'validation'"):
        list_inputs("memory://cohort/datalist.json", "validation")


def test_unwritable_output_folder_named(tmp_path):
    d = _folder(tmp_path)
    blocker = tmp_path / "file_not_dir"
    blocker.write_text("x")
    with pytest.raises(OCTInputError, match="file_not_dir.*not writable"):
        BatchInference(str(d), str(blocker / "sub"), MeanProcessor(), progress=False).run()


def test_monai_dataset_inputs_use_its_transform(tmp_path):
    from monai.data import Dataset

    d, out = _folder(tmp_path), tmp_path / "out"

    def load(item):
        with io.open_file(item["image"], "rb") as f:
            arr = np.load(f)
        if arr.ndim != 3:
            raise OCTInputError(item["image"], "expected 3 dimensions")
        return {"image": arr * 2}

    class Doubled:
        def outputs(self, stem):
            return [stem + ".json"]

        def __call__(self, data, stem):
            io.save_json({"mean": float(data["image"].mean())}, stem + ".json")
            return {"mean": float(data["image"].mean())}

    items = [{"image": str(d / n)} for n in ("Doe_John_1.npy", "Bad_Flat.npy")]
    rows = BatchInference(Dataset(items, transform=load), str(out), Doubled(), progress=False).run()
    assert [r["status"] for r in rows] == ["done", "error"]
    assert rows[0]["mean"] == 2.0 and "<input #1>: expected 3 dimensions" in rows[1]["reason"]


def test_command_line_booleans(tmp_path):
    from oct_foundation.engines.batch_inference import as_bool

    assert as_bool("false") is False and as_bool("True") is True and as_bool(0) is False
    with pytest.raises(ValueError, match="not a yes/no value"):
        as_bool("maybe")
    d, out = _folder(tmp_path), tmp_path / "out"
    BatchInference(str(d), str(out), MeanProcessor(), progress="false").run()
    proc = MeanProcessor()
    BatchInference(str(d), str(out), proc, overwrite="false", progress="false").run()
    assert proc.calls == 2  # "false" from the command line must not mean "redo everything"


def test_folder_lists_every_reader_format_and_png_frame_folders(tmp_path, memfs):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("scan.fds", "cirrus.img", "clip.mp4", "stack.tif", "b.nii.gz", "noext", "notes.txt", "grid.png"):
        (d / name).write_bytes(b"x")
    (d / "frames").mkdir()
    for i in range(3):
        (d / "frames" / f"f{i}.png").write_bytes(b"x")
    (d / "outputs").mkdir()  # an output folder (grids beside a CSV) is not a frame folder
    (d / "outputs" / "a_grid.png").write_bytes(b"x")
    (d / "outputs" / "manifest.csv").write_text("id\n")
    names = [os.path.basename(i["image"]) for i in list_inputs(str(d))]
    assert names == ["b.nii.gz", "cirrus.img", "clip.mp4", "frames", "noext", "scan.fds", "stack.tif"]
    for i in range(2):
        io.atomic_write(f"memory://vid/frames/f{i}.png", b"x")
    io.atomic_write("memory://vid/a.avi", b"x")
    assert [i["image"] for i in list_inputs("memory://vid")] == ["memory://vid/a.avi", "memory://vid/frames"]


class _Settings:
    """A processor whose finished outputs record a setting; a rerun with another value must not mix them."""

    def __init__(self, value):
        self.value = value

    def outputs(self, stem):
        return [stem + ".json"]

    def __call__(self, item, stem):
        io.save_json({"value": self.value}, stem + ".json")
        return {}

    def existing_mismatch(self, stem):
        old = io.load_json(stem + ".json")["value"]
        return None if old == self.value else f"value was {old}, this run uses {self.value}"


def test_rerun_with_other_settings_refuses_before_any_work(tmp_path):
    d, out = _folder(tmp_path), tmp_path / "out"
    BatchInference(str(d), str(out), _Settings(1), progress=False).run()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    rows = BatchInference(str(d), str(out), _Settings(1), progress=False).run()
    assert {r["status"] for r in rows} == {"skipped"}
    with pytest.raises(OCTInputError, match=r"finished output\(s\) were made with other settings .*value was 1"):
        BatchInference(str(d), str(out), _Settings(2), progress=False).run()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before
    rows = BatchInference(str(d), str(out), _Settings(2), overwrite=True, progress=False).run()
    assert {r["status"] for r in rows} == {"done"}
