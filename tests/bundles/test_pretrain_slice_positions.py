"""oct_vjepa_pretrain --slice_positions true through the real command line: training runs with token depth
positions from the kept slice indices, and the option changes what is learned (same seed, same data)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"
TINY = ["--d_target", "4", "--d_full", "12", "--image_size", "[32, 32]", "--patch_size", "8", "--embed_dim", "32",
        "--depth", "1", "--num_heads", "2", "--predictor_embed_dim", "16", "--predictor_depth", "1",
        "--predictor_num_heads", "2", "--batch_size", "2", "--num_workers", "0", "--progress_bar", "false",
        "--num_epochs", "1", "--warmup_epochs", "0", "--device", "$torch.device('cpu')"]


def _train(cohort, root, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--dataset_dir", str(cohort), "--bundle_root", str(root), *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return torch.load(root / "models" / "model.pt", weights_only=True)


def test_slice_positions_option_trains_and_changes_the_model(cohort, tmp_path):
    plain = _train(cohort, tmp_path / "plain", "--slice_positions", "false")
    again = _train(cohort, tmp_path / "again", "--slice_positions", "false")
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # the runs are deterministic...
    sliced = _train(cohort, tmp_path / "sliced", "--slice_positions", "true")
    assert plain.keys() == sliced.keys()  # ...so a difference comes from the option
    assert any(not torch.equal(plain[k], sliced[k]) for k in plain)
