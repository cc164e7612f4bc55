"""oct_maisi_vae_encode: the real configs through monai.bundle.run on tiny volumes (tiny autoencoder)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from oct_foundation.errors import CheckpointError

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "oct_maisi_vae_encode"
TINY = {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}


def _run(configs, **overrides):
    from monai.bundle import run

    files = [str(BUNDLE / "configs" / c) for c in configs]
    run(config_file=files if len(files) > 1 else files[0], meta_file=str(BUNDLE / "configs" / "metadata.json"),
        bundle_root=str(BUNDLE), **{**TINY, **overrides})


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    nib.save(nib.Nifti1Image(rng.random((6, 20, 24)).astype(np.float32), np.diag([0.1, 0.004, 0.01, 1])),
             str(d / "a.nii.gz"))
    np.save(d / "b.npy", rng.random((5, 16, 16)).astype(np.float32))
    (d / "broken.nii.gz").write_bytes(b"not a nifti")
    return d


def test_encode_decode_evaluate(data, tmp_path):
    lat, rec, ev = tmp_path / "lat", tmp_path / "rec", tmp_path / "ev"
    torch.manual_seed(0)
    # random weights only when asked: otherwise a clear error naming the missing weight file
    with pytest.raises(Exception) as err:  # the config parser wraps the CheckpointError of the loader
        _run(["inference.json"], dataset_dir=str(data), output_dir=str(lat), weights_path=str(tmp_path / "autoencoder.pt"))
    cause = err.value
    while not isinstance(cause, CheckpointError) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, CheckpointError) and "autoencoder.pt" in str(cause) and "allow_random_init" in str(cause)
    assert not lat.exists()
    weights = tmp_path / "autoencoder.pt"
    from oct_foundation.networks.maisi import StackedVideoVAE

    torch.save(StackedVideoVAE(TINY).autoencoder.state_dict(), weights)
    _run(["inference.json"], dataset_dir=str(data), output_dir=str(lat), weights_path=str(weights),
         strategy="sliding", window=8, stride=4, scale_factor=0.5)
    rows = {r["status"]: r for r in _rows(lat / "manifest.csv")}
    manifest = _rows(lat / "manifest.csv")
    assert sorted(r["status"] for r in manifest) == ["done", "done", "error"]
    assert "not a NIfTI" in rows["error"]["reason"] and "broken" not in rows["error"]["reason"]
    done = [r for r in manifest if r["status"] == "done"]
    assert {r["input_shape"] for r in done} == {"1x6x20x24", "1x5x16x16"}
    assert {r["latent_shape"] for r in done} == {"4x2x5x6", "4x2x4x4"}  # one 8-frame window each
    assert all(r["strategy"] == "sliding" and r["window"] == "8" and r["stride"] == "4" and r["scale_factor"] == "0.5"
               for r in done)
    assert "a.nii" not in (lat / "manifest.csv").read_text() and "b.npy" not in (lat / "manifest.csv").read_text()
    first = lat / f"{done[0]['id']}_latent.pt"
    z = torch.load(first, weights_only=True)
    assert isinstance(z, torch.Tensor) and "x".join(map(str, z.shape)) == done[0]["latent_shape"]
    side = json.loads((lat / f"{done[0]['id']}_latent.json").read_text())
    assert side["scale_factor"] == 0.5 and side["strategy"] == "sliding"
    # a rerun skips finished inputs and does not rewrite them
    mtime = os.path.getmtime(first)
    _run(["inference.json"], dataset_dir=str(data), output_dir=str(lat), weights_path=str(weights),
         strategy="sliding", window=8, stride=4, scale_factor=0.5)
    assert os.path.getmtime(first) == mtime
    assert sorted(r["status"] for r in _rows(lat / "manifest.csv")) == ["error", "skipped", "skipped"]

    # decode: same IDs, NIfTI of the original shape
    _run(["inference.json", "decode.json"], latent_dir=str(lat), output_dir=str(rec), weights_path=str(weights),
         strategy="sliding", window=8, stride=4)
    for r in done:
        img = nib.load(str(rec / f"{r['id']}_recon.nii.gz"))
        assert "x".join(map(str, (1, *img.shape))) == r["input_shape"]
    a_id = next(r["id"] for r in done if r["input_shape"] == "1x6x20x24")
    assert np.allclose(np.diag(nib.load(str(rec / f"{a_id}_recon.nii.gz")).affine)[:3], [0.1, 0.004, 0.01])
    # decoding with other stack settings than the latents were made with is refused per file
    _run(["inference.json", "decode.json"], latent_dir=str(lat), output_dir=str(tmp_path / "rec2"),
         weights_path=str(weights))
    assert {r["status"] for r in _rows(tmp_path / "rec2" / "decode_summary.csv")} == {"error"}

    # evaluate: per-input metrics, summary JSON/CSV, PNG grid
    _run(["inference.json", "evaluate.json"], dataset_dir=str(data), output_dir=str(ev), weights_path=str(weights))
    per_input = [r for r in _rows(ev / "metrics_per_input.csv") if r["status"] == "done"]
    assert len(per_input) == 2 and all(0 <= float(r["mse"]) <= 1 for r in per_input)
    summary = json.loads((ev / "metrics_summary.json").read_text())
    assert summary["evaluated"] == 2 and summary["failed"] == 1
    assert summary["metrics"]["psnr"]["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in per_input]), rel=1e-4)
    png = (ev / f"{per_input[0]['id']}_grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ev / "metrics_summary.csv").read_text().startswith("metric,mean,std")


def test_bundle_files_present():
    for rel in ["configs/metadata.json", "configs/inference.json", "configs/decode.json", "configs/evaluate.json",
                "configs/logging.conf", "docs/README.md", "LICENSE", "large_files.yml"]:
        assert (BUNDLE / rel).is_file(), rel
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    for k in ["version", "changelog", "monai_version", "pytorch_version", "numpy_version", "optional_packages_version",
              "name", "task", "description", "authors", "copyright", "data_source", "data_type", "image_classes",
              "network_data_format"]:
        assert k in meta, k
    assert meta["network_data_format"]["outputs"]["latent"]["num_channels"] == 4
    assert "models/autoencoder.pt" in (BUNDLE / "large_files.yml").read_text()
    assert "non-commercial" in (BUNDLE / "docs" / "README.md").read_text()
