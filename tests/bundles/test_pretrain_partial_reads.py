"""oct_vjepa_pretrain through the real command line reads only the kept slices (``read_kept_slices``, on by
default with ``cache_rate`` 0) and trains exactly the model of reading every slice (same seed, random depth
strategy, so the seeded slice draws must agree too)."""
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
        "--num_epochs", "1", "--warmup_epochs", "0", "--rank_interval", "0", "--depth_strategy", "random",
        "--device", "$torch.device('cpu')"]


def _train(cohort, root, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--dataset_dir", str(cohort), "--bundle_root", str(root), *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return torch.load(root / "models" / "model.pt", weights_only=True)


def test_reading_only_kept_slices_trains_the_same_model(cohort, tmp_path):
    partial = _train(cohort, tmp_path / "partial")  # the default: read_kept_slices = (cache_rate == 0)
    whole = _train(cohort, tmp_path / "whole", "--read_kept_slices", "false")
    assert partial.keys() == whole.keys()
    assert all(torch.equal(partial[k], whole[k]) for k in partial)


def test_config_reads_kept_slices_unless_caching():
    from monai.bundle import ConfigParser

    from oct_foundation.data.readers import LoadOCTd, LoadOCTSlicesd

    for cache_rate, want in ((0.0, LoadOCTSlicesd), (1.0, LoadOCTd)):
        cfg = ConfigParser()
        cfg.read_config(str(CONFIGS / "train.json"))
        cfg["cache_rate"] = cache_rate
        for section in ("train", "validate"):
            first = cfg.get_parsed_content(f"{section}#preprocessing_transforms", instantiate=True)[0]
            assert type(first) is want, (cache_rate, section)
