"""MAISI latents that say how they were made: one posterior draw per latent position, provenance in sidecars."""
from __future__ import annotations

import torch

from oct_foundation.networks.maisi import StackedVideoVAE

TINY = {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}


def test_sliding_sample_is_one_draw_per_latent_position():
    torch.manual_seed(0)
    # window 8 / stride 4 over 24 frames: interior latent frames are covered by two windows, the ends by one
    net = StackedVideoVAE(TINY, strategy="sliding", window=8, stride=4, chunk_size=2).eval()
    x = torch.rand(1, 1, 24, 16, 16)
    with torch.no_grad():
        mean = net.encode(x, sample=False)
        draws = torch.stack([net.encode(x, sample=True) for _ in range(24)])
    noise = draws - mean  # [N, 1, C, T', H', W']
    assert noise.abs().max() > 0
    # the noise of each latent frame has the posterior std of that frame, whether 1 or 2 windows cover it:
    # averaging independent draws from 2 windows would shrink the std of interior frames by about 1/sqrt(2)
    ratio = noise.std(dim=0) / _posterior_std(net, x)
    per_frame = ratio.mean(dim=(0, 1, 3, 4))
    assert torch.allclose(per_frame, torch.ones_like(per_frame), atol=0.2), per_frame


def _posterior_std(net, x):
    """The window-averaged posterior std per latent position, from the autoencoder directly."""
    win, st = net.window_and_stride
    cf = net.compression
    t = x.shape[2]
    acc = cnt = None
    with torch.no_grad():
        for s in range(0, t - win + 1, st):
            _, sigma = net.autoencoder.encode(x[:, :, s:s + win])
            if acc is None:
                acc = torch.zeros(*sigma.shape[:2], t // cf, *sigma.shape[3:])
                cnt = torch.zeros(t // cf)
            acc[:, :, s // cf:(s + win) // cf] += sigma
            cnt[s // cf:(s + win) // cf] += 1
    return acc / cnt.view(1, 1, -1, 1, 1) * net.effective_scale


def test_sidecar_says_mean_or_sample(tmp_path):
    import json

    from oct_foundation.engines.maisi_inference import MaisiEncodeProcessor

    torch.manual_seed(0)
    for sample, word in ((False, "posterior means"), (True, "posterior samples")):
        net = StackedVideoVAE(TINY, strategy="stack", stack_size=4, sample=sample)
        MaisiEncodeProcessor(net)({"image": torch.rand(1, 4, 16, 16)}, str(tmp_path / word.replace(" ", "_")))
        info = json.loads((tmp_path / (word.replace(" ", "_") + "_latent.json")).read_text())
        assert info["latents"] == word and info["strategy"] == "stack" and info["window"] == 4


def _cli(*args, expect_ok=True):
    """``python -m monai.bundle run`` of the encode config, as a user types it (tiny autoencoder)."""
    import subprocess
    import sys
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "oct_maisi_vae_encode"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
           "--num_channels", "[8, 8, 8]", "--num_res_blocks", "[1, 1, 1]", "--norm_num_groups", "8",
           "--device", "$torch.device('cpu')", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert (p.returncode == 0) == expect_ok, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def test_encode_sidecar_names_the_autoencoder_scale_auto_and_refuses_mixed_reruns(tmp_path):
    import hashlib
    import json

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(rng.random((8, 16, 16)).astype(np.float32), np.diag([0.1, 0.004, 0.01, 1])),
                 str(data / f"v{i}.nii.gz"))
    weights = tmp_path / "ae.pt"
    torch.manual_seed(1)
    torch.save(StackedVideoVAE(TINY).autoencoder.state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    out = tmp_path / "lat"
    common = ["--dataset_dir", str(data), "--output_dir", str(out), "--weights_path", str(weights)]

    log = _cli(*common, "--scale_factor", "auto", "--scale_factor_inputs", "2")
    sides = sorted(out.glob("*_latent.json"))
    assert len(sides) == 3 and "MAISI scale factor (auto, 2 input(s))" in log
    infos = [json.loads(p.read_text()) for p in sides]
    assert {i["autoencoder"] for i in infos} == {f"sha256:{sha}"}
    assert {i["scale_factor_source"] for i in infos} == {"auto: 1/std of the mean latents of 2 input(s)"}
    assert {i["latents"] for i in infos} == {"posterior means"} and "replication" in infos[0]["padding"]
    scale = infos[0]["scale_factor"]
    # the auto value is 1/std of the unscaled mean latents of the first two inputs (sorted file order)
    net = StackedVideoVAE(TINY)
    net.autoencoder.load_state_dict(torch.load(weights, weights_only=True))
    vols = [torch.from_numpy(nib.load(str(data / f"v{i}.nii.gz")).get_fdata().astype(np.float32)) for i in (0, 1)]
    vols = [(v - v.min()) / (v.max() - v.min()) for v in vols]  # the bundle's [0, 1] scaling
    expected = net.compute_scale_factor([v[None, None] for v in vols])
    assert abs(scale - expected) < 1e-3 * expected
    manifest = (out / "manifest.csv").read_text()
    assert f"sha256:{sha}" in manifest and "posterior means" in manifest

    # the same settings again: finished latents are kept (nothing mixed)
    mtimes = {p: p.stat().st_mtime_ns for p in sides}
    _cli(*common, "--scale_factor", str(scale))
    assert {p: p.stat().st_mtime_ns for p in sides} == mtimes
    # other settings: refused before any work, naming what differs; --overwrite true redoes every latent
    log = _cli(*common, "--scale_factor", "auto", "--scale_factor_inputs", "2", "--sample", "true", expect_ok=False)
    assert "made with other settings" in log and "latents was 'posterior means'" in log
    assert {p: p.stat().st_mtime_ns for p in sides} == mtimes
    torch.save(StackedVideoVAE(TINY).autoencoder.state_dict(), tmp_path / "other.pt")
    log = _cli("--dataset_dir", str(data), "--output_dir", str(out), "--weights_path", str(tmp_path / "other.pt"),
               "--scale_factor", str(scale), expect_ok=False)
    assert "autoencoder was 'sha256:" in log
    _cli(*common, "--sample", "true", "--scale_factor", "0.5", "--overwrite", "true")
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("*_latent.json"))]
    assert {i["latents"] for i in infos} == {"posterior samples"} and {i["scale_factor"] for i in infos} == {0.5}
    assert {i["scale_factor_source"] for i in infos} == {"given"}
    # a random-init autoencoder says so
    _cli("--dataset_dir", str(data), "--output_dir", str(tmp_path / "rand"), "--allow_random_init", "true",
         "--weights_path", str(tmp_path / "missing.pt"))
    assert {json.loads(p.read_text())["autoencoder"] for p in (tmp_path / "rand").glob("*_latent.json")} == \
        {"random-init"}
    log = _cli(*common, "--scale_factor", "fast", expect_ok=False)
    assert "neither a number nor 'auto'" in log


def test_encode_applies_the_readers_limits_from_the_command_line(tmp_path):
    import csv

    import nibabel as nib
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32),
                             np.diag([0.1, 0.004, 0.01, 1])), str(data / "v.nii.gz"))
    out = tmp_path / "lat"
    _cli("--dataset_dir", str(data), "--output_dir", str(out), "--allow_random_init", "true",
         "--weights_path", str(tmp_path / "none.pt"), "--max_voxels", "1000")
    with open(out / "manifest.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "error" and "max_voxels=1000" in row["reason"]
