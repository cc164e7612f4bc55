"""Pre-flight check of training data: every bad item listed at once, before the first step; --skip_bad_items."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oct_foundation.data.preflight import preflight_datalist
from oct_foundation.errors import OCTInputError

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "bundles" / "oct_layer_segmentation"


def _vol(path, d=8, zooms=(0.1, 0.004, 0.01)):
    img = nib.Nifti1Image(np.random.default_rng(0).random((d, 32, 32)).astype(np.float32), np.eye(4))
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return str(path)


@pytest.fixture
def datalist(tmp_path):
    good = [{"image": _vol(tmp_path / f"g{i}.nii.gz"), "label": _vol(tmp_path / f"l{i}.nii.gz")} for i in range(2)]
    short = {"image": _vol(tmp_path / "short.nii.gz", d=2), "label": good[0]["label"]}
    nolabel = {"image": good[1]["image"]}
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8bjunk")
    junk = {"image": str(tmp_path / "junk.nii.gz"), "label": good[0]["label"]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": good + [short, nolabel], "validation": [good[0], junk]}))
    return path


def test_all_bad_items_listed_at_once(datalist, tmp_path):
    with pytest.raises(OCTInputError) as e:
        preflight_datalist(str(datalist), image_keys=["image", "label"], required_keys=["image", "label"],
                           min_depth=4)
    msg = str(e.value)
    assert "3 bad item(s)" in msg
    assert "training[2]" in msg and "short.nii.gz: depth 2 < 4" in msg
    assert "training[3]" in msg and "missing key(s) ['label']" in msg
    assert "validation[1]" in msg and "junk.nii.gz" in msg
    out = preflight_datalist(str(datalist), image_keys=["image", "label"], required_keys=["image", "label"],
                             min_depth=4, skip_bad_items=True, report_dir=str(tmp_path / "ck"))
    assert len(out["training"]) == 2 and len(out["validation"]) == 1
    with open(tmp_path / "ck" / "bad_items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["position"]) for r in rows] == [("training", "2"), ("training", "3"),
                                                             ("validation", "1")]


def test_cli_training_refuses_before_the_first_step(datalist, tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           str(SEG / "configs" / "train.json"), "--bundle_root", str(tmp_path / "b"),
           "--datalist", str(datalist), "--output_dir", str(tmp_path / "runs"), "--num_workers", "0",
           "--d_target", "4", "--image_size", "[32, 32]", "--embed_dim", "32", "--depth", "2", "--num_heads", "2",
           "--encoder_path", str(tmp_path / "never_read.pt")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    log = p.stdout + p.stderr
    assert p.returncode != 0
    assert "3 bad item(s)" in log and "short.nii.gz: depth 2 < 4" in log and "junk.nii.gz" in log, log[-3000:]
    assert not (tmp_path / "runs" / "checkpoints").exists() or not any((tmp_path / "runs" / "checkpoints").iterdir())


# the other training configs check their data the same way (their pipelines resample depth, so no minimum
# depth): (bundle, config files, extra keys)
OTHER_TRAINING = [
    ("oct_vjepa_pretrain", ["train.json"], ["--d_target", "4", "--d_full", "8"]),
    ("oct_disease_classification", ["train.json"], ["--d_target", "4", "--encoder_path", "never_read.pt"]),
    ("oct_latent_diffusion", ["train_autoencoder.json"], ["--num_frames", "4"]),
    ("oct_latent_diffusion", ["inference.json", "train_diffusion.json"], ["--num_frames", "4"]),
]


def test_cli_every_training_config_checks_its_data_and_skip_bad_items(tmp_path):
    good = [{"image": _vol(tmp_path / f"g{i}.nii.gz"), "class": i % 2} for i in range(3)]
    flat = tmp_path / "flat.nii.gz"  # a single B-scan, not a volume
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(flat))
    short = {"image": str(flat), "class": 0}
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8bjunk")
    junk = {"image": str(tmp_path / "junk.nii.gz"), "class": 1}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": good + [short], "validation": [good[0], junk]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

    def cli(bundle, files, extra, name, *more):
        cfg = ROOT / "bundles" / bundle / "configs"
        paths = [str(cfg / f) for f in files]
        config_arg = paths[0] if len(paths) == 1 else "[" + ",".join(f"'{p}'" for p in paths) + "]"
        out = tmp_path / name
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg,
               "--meta_file", str(cfg / "metadata.json"), "--bundle_root", str(out), "--datalist", str(datalist),
               "--output_dir", str(out / "runs"), "--num_workers", "0", "--image_size", "[32, 32]", *extra, *more]
        return out, subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    for i, (bundle, files, extra) in enumerate(OTHER_TRAINING):
        out, p = cli(bundle, files, extra, f"case{i}")
        log = p.stdout + p.stderr
        where = f"{bundle} {files}: {log[-3000:]}"
        assert p.returncode != 0, where
        # the diffusion config trains on the training list only; the others check validation too
        n_bad = 1 if files[-1] == "train_diffusion.json" else 2
        assert f"{n_bad} bad item(s)" in log and "flat.nii.gz: expected a 3D volume" in log, where
        assert ("junk.nii.gz" in log) == (n_bad == 2), where
        assert not (out / "runs" / "checkpoints").exists(), where

    # --skip_bad_items true (as typed) trains on the rest and writes the list next to the checkpoints
    out, p = cli("oct_vjepa_pretrain", ["train.json"], OTHER_TRAINING[0][2], "skip", "--skip_bad_items", "true",
                 "--num_epochs", "1", "--patch_size", "8", "--embed_dim", "32", "--depth", "2", "--num_heads", "2",
                 "--predictor_embed_dim", "32", "--predictor_depth", "1", "--predictor_num_heads", "2",
                 "--batch_size", "2", "--progress_bar", "false", "--val_interval", "0", "--rank_interval", "0")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    with open(out / "runs" / "checkpoints" / "bad_items.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["position"], Path(r["file"]).name) for r in rows] == \
        [("training", "3", "flat.nii.gz"), ("validation", "1", "junk.nii.gz")]
    assert (out / "runs" / "checkpoints" / "checkpoint_1.pt").exists()
