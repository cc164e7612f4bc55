"""Batch inference keeps its promises, through the real command line (the MAISI encode bundle, a tiny autoencoder):
unreadable entries are listed with a reason, an empty input is an error, IDs do not depend on how the folder is
spelled, ID-map values cannot leave the output folder, a duplicate entry is named, a full disk names the file and
leaves no temporary file, and reasons name inputs by position (the index file's rows)."""
from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "oct_maisi_vae_encode"


def _cli(cwd, *args, ok=True, fsize=None):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--bundle_root", str(BUNDLE),
           "--num_channels", "[8, 8, 8]", "--num_res_blocks", "[1, 1, 1]", "--norm_num_groups", "8",
           "--device", "$torch.device('cpu')", "--allow_random_init", "true", "--weights_path", "none.pt", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    p = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert (p.returncode == 0) == ok, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def _vol(path, shape=(8, 16, 16)):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32),
                             np.diag([0.1, 0.004, 0.01, 1])), str(path))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_entry_listed_and_ids_stable(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _vol(data / "a.nii.gz")
    os.symlink(data / "gone.nii.gz", data / "dangling.nii.gz")
    os.symlink(data / "loop2.nii.gz", data / "loop1.nii.gz")
    os.symlink(data / "loop1.nii.gz", data / "loop2.nii.gz")
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("not an input")
    out = tmp_path / "out"
    _cli(tmp_path, "--input_dir", "data", "--output_dir", str(out), "--index_file", str(tmp_path / "index.csv"))
    rows = {r["position"]: r for r in _rows(out / "manifest.csv")}
    index = {r["position"]: r for r in _rows(tmp_path / "index.csv")}
    reasons = {os.path.basename(index[p]["input"]): r["reason"] for p, r in rows.items() if r["status"] == "error"}
    assert reasons == {"dangling.nii.gz": f"<input #{_pos(index, 'dangling.nii.gz')}>: dangling symbolic link (its "
                                          "target does not exist)",
                       "loop1.nii.gz": f"<input #{_pos(index, 'loop1.nii.gz')}>: symbolic link loop",
                       "loop2.nii.gz": f"<input #{_pos(index, 'loop2.nii.gz')}>: symbolic link loop",
                       "notes": f"<input #{_pos(index, 'notes')}>: a folder, not an input (only folders of .png "
                                "frames are read as one video each)"}
    assert [r["status"] for r in rows.values()].count("done") == 1
    # the same folder spelled as an absolute path: the same IDs, so the finished latent is kept, not duplicated
    _cli(tmp_path, "--input_dir", str(data), "--output_dir", str(out))
    assert len(list(out.glob("*_latent.pt"))) == 1
    assert [r["status"] for r in _rows(out / "manifest.csv")].count("skipped") == 1


def _pos(index, name):
    return next(p for p, r in index.items() if os.path.basename(r["input"]) == name)


def test_empty_input_duplicate_entry_and_id_map_escape_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no inputs found" in _cli(tmp_path, "--input_dir", "empty", "--output_dir", "o1", ok=False)
    _vol(tmp_path / "a.nii.gz")
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"test": [{"image": "a.nii.gz"}, {"image": "a.nii.gz"}]}))
    log = _cli(tmp_path, "--datalist", str(dl), "--output_dir", "o2", ok=False)
    assert "inputs #0 and #1 (the same entry listed twice:" in log and "a.nii.gz" in log
    ids = tmp_path / "ids.csv"
    ids.write_text("input,id\na.nii.gz,../../escaped\n")
    log = _cli(tmp_path, "--input_dir", str(tmp_path), "--output_dir", "o3", "--id_map", str(ids), ok=False)
    assert "'../../escaped' is not a plain name" in log
    assert not list(tmp_path.parent.glob("escaped*"))


def test_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _vol(data / "big.nii.gz", (32, 128, 128))  # latent [4, 8, 32, 32] float32 = 128 KiB > the 64 KiB limit
    out = tmp_path / "out"
    _cli(tmp_path, "--input_dir", str(data), "--output_dir", str(out), fsize=64 * 1024)
    (row,) = _rows(out / "manifest.csv")
    assert row["status"] == "error" and "File too large: could not write" in row["reason"]
    assert f"{row['id']}_latent.pt" in row["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]  # no temporary or partial file
