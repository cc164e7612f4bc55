"""Running oct_vjepa_pretrain through the real command line in a subprocess, as the pretrain bundle tests do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"


def tiny_args(d_target: int = 4, d_full: int = 12, depth: int = 1, predictor_embed_dim: int = 16) -> list[str]:
    """A ViT of width 32 on 32 x 32 B-scans, one epoch, no warm-up, CPU: options as a user types them."""
    return ["--d_target", str(d_target), "--d_full", str(d_full), "--image_size", "[32, 32]", "--patch_size", "8",
            "--embed_dim", "32", "--depth", str(depth), "--num_heads", "2", "--predictor_embed_dim",
            str(predictor_embed_dim), "--predictor_depth", "1", "--predictor_num_heads", "2", "--batch_size", "2",
            "--num_workers", "0", "--progress_bar", "false", "--num_epochs", "1", "--warmup_epochs", "0",
            "--device", "$torch.device('cpu')"]


def run_pretrain(cohort, root, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run training`` of the pretrain bundle on ``cohort`` into ``root``; asserts success."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--dataset_dir", str(cohort), "--bundle_root", str(root), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def trained_state(root) -> dict:
    """The exported ``models/model.pt`` of a pretrain run."""
    return torch.load(Path(root) / "models" / "model.pt", weights_only=True)
