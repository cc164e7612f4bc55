"""oct_latent_diffusion multi-GPU autoencoder config through ``torchrun`` with 2 CPU processes (gloo) on a tiny
synthetic cohort."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "oct_latent_diffusion" / "configs"
# the tiny sizes of tests/bundles/test_latent_diffusion_bundle.py
TINY = dict(num_channels=[8, 8, 8], num_res_blocks=[1, 1, 1], norm_num_groups=8, num_frames=8, image_size=[32, 32],
            num_workers=0, progress_bar=False, batch_size=2)

_RUNNER = """
import json, sys
from monai.bundle import run
run(sys.argv[1], **json.loads(sys.argv[2]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, configs: list[str], **args) -> subprocess.CompletedProcess:
    runner = tmp_path / "run_bundle.py"
    runner.write_text(_RUNNER)
    args = dict(config_file=[str(CONFIGS / c) for c in configs], logging_file=str(CONFIGS / "logging.conf"),
                meta_file=str(CONFIGS / "metadata.json"), **args)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(runner), "training", json.dumps(args)]
    return subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)


def test_multi_gpu_autoencoder_torchrun_two_cpu_processes(cohort, tmp_path):
    from oct_foundation.data import load_datalist

    root = tmp_path / "ddp"
    n_train = len(load_datalist(str(cohort / "datalist.json"), "training"))
    proc = _torchrun(tmp_path, ["train_autoencoder.json", "multi_gpu_train_autoencoder.json"], **TINY,
                     bundle_root=str(root), dataset_dir=str(cohort), num_epochs=2, val_interval=1, adv_weight=0.1,
                     disc_channels=8, disc_layers=2, mse_threshold=1.0,
                     finalize=["$torch.save({'ae': @network_def.autoencoder.state_dict(), 'disc': "
                               "@discriminator.state_dict()}, @output_dir + '/rank' + str(dist.get_rank()) + '.pt')",
                               "$dist.destroy_process_group()"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = root / "runs" / "autoencoder"
    # the exported autoencoder is the plain AutoencoderKlMaisi state dict (no DDP "module." prefix)
    exported = torch.load(root / "models" / "autoencoder.pt", weights_only=True)
    assert exported and not any(".module." in k or k.startswith("module.") for k in exported)
    # training volumes split over 2 ranks (DistributedSampler, even) with batch 2
    ckpt = torch.load(run_dir / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    per_rank = -(-n_train // 2)
    assert ckpt["trainer"]["iteration"] == 2 * -(-per_rank // 2)
    assert {"network", "optimizer", "trainer", "discriminator", "d_optimizer"} <= set(ckpt)
    # checkpoints keep plain names (the DDP wrapper is only the trainer's forward module)
    assert not any("module." in k for k in list(ckpt["network"]) + list(ckpt["discriminator"]))
    # validation on rank 0 only: one row per epoch (not one per rank)
    with open(run_dir / "validation.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    # different shards and augmentations per rank, yet identical weights: DDP averaged the gradients of the
    # autoencoder and of the discriminator
    r0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    for part in ("ae", "disc"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    assert all(torch.equal(exported[k], r0["ae"][k]) for k in exported)


TINY_UNET = dict(unet_channels=[16, 16], unet_attention_levels=[False, False], unet_num_head_channels=[8, 8],
                 unet_num_res_blocks=1, unet_norm_num_groups=8)


def test_multi_gpu_diffusion_torchrun_two_cpu_processes(cohort, tmp_path):
    from oct_foundation.data import load_datalist
    from oct_foundation.networks.maisi import StackedVideoVAE

    torch.manual_seed(0)
    ae = StackedVideoVAE({k: TINY[k] for k in ("num_channels", "num_res_blocks", "norm_num_groups")})
    ae_path = tmp_path / "autoencoder.pt"
    torch.save(ae.autoencoder.state_dict(), ae_path)
    root = tmp_path / "ddp"
    n_train = len(load_datalist(str(cohort / "datalist.json"), "training"))
    proc = _torchrun(tmp_path, ["inference.json", "train_diffusion.json", "multi_gpu_train_diffusion.json"],
                     **TINY, **TINY_UNET, bundle_root=str(root), dataset_dir=str(cohort), autoencoder_path=str(ae_path),
                     num_epochs=2,
                     finalize=["$torch.save(@network_def.state_dict(), @output_dir + '/rank' + str(dist.get_rank()) "
                               "+ '.pt')", "$dist.destroy_process_group()"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = root / "runs" / "diffusion"
    exported = torch.load(root / "models" / "model.pt", weights_only=True)
    assert float(exported["scale_factor"]) > 0 and not any(k.startswith("module.") for k in exported)
    ckpt = torch.load(run_dir / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 * -(-(-(-n_train // 2)) // 2)
    assert set(ckpt["network"]) == set(exported)  # the U-Net's own keys: resumable by the single-process config
    # different shards and noise per rank, yet identical weights and one scale factor (rank 0's, broadcast)
    r0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert all(torch.equal(exported[k], r0[k]) for k in r0)
    # a single-process run resumes the multi-GPU checkpoint (epoch 3 follows epoch 2)
    from monai.bundle import run

    run("training", config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "train_diffusion.json")],
        meta_file=str(CONFIGS / "metadata.json"), **TINY, **TINY_UNET, bundle_root=str(root),
        dataset_dir=str(cohort), autoencoder_path=str(ae_path), num_epochs=3, resume="latest")
    assert (run_dir / "checkpoints" / "checkpoint_3.pt").exists()
    state = torch.load(run_dir / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    assert state["trainer"]["iteration"] > ckpt["trainer"]["iteration"]
    assert torch.equal(state["network"]["scale_factor"], exported["scale_factor"])  # kept, not recomputed
