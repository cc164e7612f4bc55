"""oct_maisi_vae_encode through the real CLI on 2D+time inputs: an .avi, an .mp4, a multi-page TIFF and a PNG
folder (encode streamed and loaded whole, decode back to each kind)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "oct_maisi_vae_encode"


def test_encode_video_tiff_and_png_folder_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    clip = rng.integers(0, 255, size=(6, 16, 24, 3)).astype(np.uint8)
    iio.imwrite(data / "clip.avi", clip, plugin="FFMPEG", fps=10, codec="png", pixelformat="rgb24",
                macro_block_size=1)
    iio.imwrite(data / "clip.mp4", rng.integers(0, 255, size=(7, 16, 16, 3)).astype(np.uint8), plugin="FFMPEG",
                fps=12, codec="libx264", pixelformat="yuv444p", macro_block_size=1)
    tifffile.imwrite(data / "stack.tif", rng.integers(0, 255, size=(5, 16, 16)).astype(np.uint8))
    frames = data / "frames"
    frames.mkdir()
    for i in range(4):
        iio.imwrite(frames / f"frame{i}.png", rng.integers(0, 255, size=(16, 16)).astype(np.uint8))
    datalist = data / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "clip.avi"}, {"image": "clip.mp4"}, {"image": "stack.tif"},
                                           {"image": "frames"}]}))
    out = tmp_path / "lat"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--bundle_root", str(BUNDLE),
           "--datalist", str(datalist), "--output_dir", str(out), "--weights_path", str(tmp_path / "none.pt"),
           "--allow_random_init", "true", "--device", "cpu", "--num_channels", "[8, 8, 8]",
           "--num_res_blocks", "[1, 1, 1]", "--norm_num_groups", "8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done"] * 4, rows
    assert sorted(r["input_shape"] for r in rows) == ["1x4x16x16", "1x5x16x16", "1x6x16x24", "1x7x16x16"]
    for r in rows:
        z = torch.load(out / f"{r['id']}_latent.pt", weights_only=True)
        assert "x".join(map(str, z.shape)) == r["latent_shape"] and torch.isfinite(z).all()
    # the streamed encode (default: frames decoded frame_chunk at a time, two passes) gives the latents of the
    # encode of the whole loaded volume (--stream_video false), with frame chunks that split the stacks
    loaded = tmp_path / "lat_loaded"
    cmd_loaded = [c if c != str(out) else str(loaded) for c in cmd] + ["--stream_video", "false", "--frame_chunk", "3"]
    p = subprocess.run(cmd_loaded, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    for r in rows:
        a = torch.load(out / f"{r['id']}_latent.pt", weights_only=True)
        b = torch.load(loaded / f"{r['id']}_latent.pt", weights_only=True)
        assert torch.allclose(a, b, atol=1e-5), (r["input_shape"], (a - b).abs().max())

    # decode writes each input's kind of file back beside the NIfTI (--video_format same, the default):
    # .avi -> .avi, TIFF -> TIFF, PNG folder -> PNG folder, with the input's frame count and size
    from oct_foundation.data import LoadOCTd

    rec = tmp_path / "rec"
    cmd_decode = [c for c in cmd if c not in ("--datalist", str(datalist))]
    cmd_decode[cmd_decode.index("--config_file") + 1] = \
        f"['{BUNDLE / 'configs' / 'inference.json'}', '{BUNDLE / 'configs' / 'decode.json'}']"
    cmd_decode[cmd_decode.index("--output_dir") + 1] = str(rec)
    p = subprocess.run(cmd_decode + ["--latent_dir", str(out)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    kinds = {r["input_shape"]: r["id"] for r in rows}
    expect = {"1x6x16x24": "_recon.avi", "1x7x16x16": "_recon.mp4", "1x5x16x16": "_recon.tif",
              "1x4x16x16": "_recon_frames"}
    for shape, suffix in expect.items():
        path = rec / f"{kinds[shape]}{suffix}"
        assert path.exists() and (rec / f"{kinds[shape]}_recon.nii.gz").exists(), sorted(os.listdir(rec))
        back = LoadOCTd(keys=["image"])({"image": str(path)})["image"]
        assert "x".join(map(str, back.shape)) == shape
        side = json.loads((out / f"{kinds[shape]}_latent.json").read_text())
        assert side["input_format"] == {"_recon.avi": "avi", "_recon.mp4": "mp4", "_recon.tif": "tiff",
                                        "_recon_frames": "png"}[suffix]
    assert json.loads((out / f"{kinds['1x6x16x24']}_latent.json").read_text())["fps"] == 10.0
    from oct_foundation.data.video import video_fps

    assert video_fps(str(rec / f"{kinds['1x7x16x16']}_recon.mp4")) == 12.0  # written at the input's rate
