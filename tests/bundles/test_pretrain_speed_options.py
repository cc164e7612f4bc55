"""oct_vjepa_pretrain speed and memory keys through the real command line: --compile_mode, --attention_backend,
--activation_checkpointing train the same model as the eager default (same seed, same data, CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"
TINY = ["--d_target", "4", "--d_full", "12", "--image_size", "[32, 32]", "--patch_size", "8", "--embed_dim", "32",
        "--depth", "1", "--num_heads", "2", "--predictor_embed_dim", "16", "--predictor_depth", "1",
        "--predictor_num_heads", "2", "--batch_size", "2", "--num_workers", "0", "--progress_bar", "false",
        "--num_epochs", "1", "--warmup_epochs", "0", "--device", "$torch.device('cpu')"]


def _train(cohort, root, *extra, ok=True):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--dataset_dir", str(cohort), "--bundle_root", str(root), *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert (p.returncode == 0) == ok, p.stdout[-2000:] + p.stderr[-3000:]
    return torch.load(root / "models" / "model.pt", weights_only=True) if ok else p.stdout + p.stderr


def _close(a, b, tol):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=tol, rtol=tol) for k in a)


def test_attention_backend_and_checkpointing_train_the_eager_model(cohort, tmp_path):
    eager = _train(cohort, tmp_path / "eager")
    assert _close(eager, _train(cohort, tmp_path / "math", "--attention_backend", "math"), 1e-5)
    assert _close(eager, _train(cohort, tmp_path / "ckpt", "--activation_checkpointing", "true"), 1e-5)
    log = _train(cohort, tmp_path / "bad", "--attention_backend", "fastest", ok=False)
    assert "attention_backend must be auto or one of" in log


@pytest.mark.slow  # torch.compile (inductor, C++ on the CPU) takes a minute or more on 2 cores
def test_compiled_step_trains_the_eager_model(cohort, tmp_path):
    eager = _train(cohort, tmp_path / "eager")
    compiled = _train(cohort, tmp_path / "compiled", "--compile_mode", "default")
    assert _close(eager, compiled, 1e-4)  # inductor reorders float ops: equal to rounding
