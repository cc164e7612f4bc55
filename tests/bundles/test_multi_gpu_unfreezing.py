"""Multi-GPU pretraining never deadlocks: torchrun with 2 CPU processes (gloo) and gradual unfreezing, typed as a
user types it (``torchrun ... -m monai.bundle run training ... --freeze_first_n 1 --unfreeze_start_epoch 1``).
Every rank unfreezes at the same epoch and the DDP wrapper is rebuilt on both; the run ends within the timeout with
identical weights on both ranks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"


def test_torchrun_gradual_unfreezing_finishes_on_both_ranks(cohort, tmp_path):
    root = tmp_path / "ddp"
    configs = f"['{CONFIGS / 'train.json'}', '{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "monai.bundle", "run", "training", "--config_file", configs,
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--dataset_dir", str(cohort), "--bundle_root", str(root),
           "--d_target", "4", "--d_full", "12", "--image_size", "[32, 32]", "--patch_size", "8", "--embed_dim", "32",
           "--depth", "2", "--num_heads", "2", "--predictor_embed_dim", "16", "--predictor_depth", "1",
           "--predictor_num_heads", "2", "--batch_size", "2", "--num_workers", "0", "--progress_bar", "false",
           "--num_epochs", "3", "--warmup_epochs", "0", "--val_interval", "0", "--rank_interval", "0",
           "--freeze_first_n", "1", "--unfreeze_start_epoch", "1", "--unfreeze_every", "1", "--n_saved", "3",
           "--finalize", "['$torch.save(@network_def.state_dict(), @output_dir + \"/rank\" + str(dist.get_rank()) "
                         "+ \".pt\")', '$dist.destroy_process_group()']"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    # own process group, so a deadlocked run is killed with its workers (the run takes ~10 s; a hang fails here)
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError("torchrun pretraining with gradual unfreezing deadlocked:\n" + err[-3000:])
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    r0 = torch.load(root / "runs" / "rank0.pt", weights_only=True)
    r1 = torch.load(root / "runs" / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    start = torch.load(root / "runs" / "checkpoints" / "checkpoint_1.pt", weights_only=True)["network"]
    # block 0 was frozen in epoch 1 and trained after unfreezing (epochs 2, 3) on both ranks
    key = next(k for k in r0 if k.startswith("encoder.blocks.0.") and k.endswith("weight"))
    assert not torch.equal(start[key], r0[key])
