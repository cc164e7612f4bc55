"""oct_vjepa_pretrain: the real configs through ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls) on a
tiny synthetic cohort, plus ``torchrun`` with 2 CPU processes (gloo) for the multi-GPU config."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "oct_vjepa_pretrain" / "configs"
TINY = {
    "d_target": 8,
    "d_full": 10,
    "image_size": [32, 32],
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "predictor_embed_dim": 32,
    "predictor_depth": 1,
    "predictor_num_heads": 2,
    "batch_size": 2,
    "num_workers": 0,
    "progress_bar": False,
    "log_interval": 1,
    "learning_rate": 0.002,
    "warmup_epochs": 1,
}
NET_KEYS = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "predictor_embed_dim", "predictor_depth",
            "predictor_num_heads", "d_target")


def _run(run_id, configs, **overrides):
    from monai.bundle import run

    files = [str(CONFIGS / c) for c in configs]
    run(run_id, config_file=files if len(files) > 1 else files[0], logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"), **overrides)


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle_root")
    _run("training", ["train.json"], dataset_dir=str(cohort), bundle_root=str(root), num_epochs=3, cache_rate=1.0, **TINY)
    return root


def test_check_properties(cohort):
    from monai.bundle import ConfigWorkflow

    w = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
                       workflow_type="train", logging_file=False, dataset_dir=str(cohort), **TINY)
    w.initialize()
    assert w.check_properties() == []
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for k in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "name", "task",
              "description", "authors", "copyright", "data_source", "data_type", "network_data_format"):
        assert meta[k], k
    assert meta["monai_version"] == "1.6.1" and meta["pytorch_version"] == "2.13.0"


def test_train_writes_checkpoint_model_and_loss_falls(trained):
    ckpts = sorted(os.listdir(trained / "runs" / "checkpoints"))
    assert ckpts == ["checkpoint_2.pt", "checkpoint_3.pt"]  # n_saved=2, atomic (no partial files left)
    state = torch.load(trained / "runs" / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    assert {"network", "optimizer", "trainer", "lr_scheduler", "wd_scheduler"} <= set(state)
    assert state["trainer"]["iteration"] == 3 * 2  # 5 training volumes, batch 2, drop_last -> 2 per epoch

    from oct_foundation.networks import VJEPA3D

    sd = torch.load(trained / "models" / "model.pt", weights_only=True)
    net = VJEPA3D(img_size=(8, 32, 32), patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=2,
                  predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=2)
    net.load_state_dict(sd)  # strict: a plain state_dict of network_def
    for k, v in state["network"].items():
        torch.testing.assert_close(sd[k], v)

    losses = _scalars(trained / "runs" / "tensorboard", "train/loss")
    assert len(losses) >= 6
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    print(f"pretrain loss: first {first:.4f} -> last {last:.4f}")
    assert last < first - 0.02, f"loss did not fall: {losses}"
    assert _scalars(trained / "runs" / "tensorboard", "train/tokens_per_s")[-1] > 0
    # the collapse monitor of the bundle logs both encoders' token effective rank every epoch
    for enc in ("target", "context"):
        ranks = _scalars(trained / "runs" / "tensorboard", f"collapse/{enc}_effective_rank")
        assert len(ranks) == 3 and all(1.0 <= r <= 32.0 for r in ranks), (enc, ranks)


def test_resume_latest_continues_from_checkpoint(trained, cohort, tmp_path):
    import shutil

    root = tmp_path / "resume"
    shutil.copytree(trained / "runs" / "checkpoints", root / "runs" / "checkpoints")
    _run("training", ["train.json"], dataset_dir=str(cohort), bundle_root=str(root), num_epochs=4, resume="latest",
         val_interval=0, **TINY)
    state = torch.load(root / "runs" / "checkpoints" / "checkpoint_4.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4 * 2
    # one epoch run after the resume: its iterations are logged from iteration 7 on
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "runs" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [7, 8]


def test_evaluate_validation_loss(trained, cohort):
    _run("evaluating", ["train.json", "evaluate.json"], dataset_dir=str(cohort), bundle_root=str(trained), **TINY)
    with open(trained / "runs" / "eval" / "metrics.csv") as f:
        name, value = f.read().strip().split(",")
    assert name == "val_jepa_loss" and 0 < float(value) < 10


def test_inference_writes_embeddings_and_manifest(trained, cohort, tmp_path):
    out = tmp_path / "emb"
    net = {k: TINY[k] for k in NET_KEYS}
    _run("run", ["inference.json"], input_dir=str(cohort / "datalist.json"), datalist_key="training",
         output_dir=str(out), model_path=str(trained / "models" / "model.pt"), save_tokens=True, **net)
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    datalist = json.loads((cohort / "datalist.json").read_text())
    assert len(rows) == len(datalist["training"]) and all(r["status"] == "done" for r in rows)
    import nibabel as nib

    depths = sorted(int(nib.load(str(cohort / it["image"])).shape[0]) for it in datalist["training"])
    assert sorted(int(r["depth"]) for r in rows) == depths  # full depth, no subsampling
    for r in rows:
        emb = torch.load(out / r["embedding"], weights_only=True)
        tok = torch.load(out / r["tokens"], weights_only=True)
        assert emb.shape == (32,) and tok.shape == (int(r["n_tokens"]), 32)
        torch.testing.assert_close(emb, tok.mean(0))
        assert "/" not in r["embedding"] and str(cohort) not in ",".join(r.values())
    # a second run skips finished volumes
    _run("run", ["inference.json"], input_dir=str(cohort / "datalist.json"), datalist_key="training",
         output_dir=str(out), model_path=str(trained / "models" / "model.pt"), save_tokens=True, **net)
    with open(out / "manifest.csv") as f:
        assert all(r["status"] == "skipped" for r in csv.DictReader(f))


_RUNNER = """
import json, sys
from monai.bundle import run
run(sys.argv[1], **json.loads(sys.argv[2]))
"""


def test_multi_gpu_config_with_torchrun_two_cpu_processes(cohort, tmp_path):
    runner = tmp_path / "run_bundle.py"
    runner.write_text(_RUNNER)
    root = tmp_path / "ddp"
    args = dict(TINY, config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")],
                logging_file=str(CONFIGS / "logging.conf"), meta_file=str(CONFIGS / "metadata.json"),
                dataset_dir=str(cohort), bundle_root=str(root), num_epochs=2, val_interval=1,
                finalize=["$torch.save(@network_def.state_dict(), @output_dir + '/rank' + str(dist.get_rank()) + '.pt')",
                          "$dist.destroy_process_group()"])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(runner), "training", json.dumps(args)]
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (root / "models" / "model.pt").exists()
    state = torch.load(root / "runs" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    # 5 training volumes over 2 ranks (DistributedSampler, even) with batch 2 -> 1 iteration per epoch per rank
    assert state["trainer"]["iteration"] == 2
    assert "val_jepa_loss" in proc.stdout + proc.stderr
    # different shards and masks per rank, yet identical weights: DDP averaged the gradients
    r0 = torch.load(root / "runs" / "rank0.pt", weights_only=True)
    r1 = torch.load(root / "runs" / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    exported = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], r0[k]) for k in r0)


def test_plan_controls_through_config(cohort, tmp_path):
    """Pretrained init + LR multiplier, frozen blocks with gradual unfreezing, progressive resize, tokens-per-step
    equalisation and keep-ratio masks, all set from the command line."""
    from oct_foundation.networks import VJEPA3D

    src = VJEPA3D(img_size=(8, 32, 32), patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=2,
                  predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=2)
    pre = tmp_path / "pretrained.pt"
    torch.save({"encoder": src.encoder.state_dict(), "target_encoder": src.target_encoder.state_dict()}, pre)
    root = tmp_path / "plan"
    overrides = dict(TINY, dataset_dir=str(cohort), bundle_root=str(root), num_epochs=2, val_interval=0,
                     pretrained_path=str(pre), pretrained_lr_mult=0.1, freeze_first_n=2, unfreeze_start_epoch=1,
                     unfreeze_every=1, resize_schedule={"0": [16, 16], "1": [32, 32]}, tokens_per_step=256,
                     mask_keep_ratio=0.5)
    _run("training", ["train.json"], **overrides)
    q1 = "encoder.blocks.1.attn.qkv.weight"
    epoch1 = torch.load(root / "runs" / "checkpoints" / "checkpoint_1.pt", weights_only=True)["network"]
    sd = torch.load(root / "models" / "model.pt", weights_only=True)
    # phase 1: patch embedding and both blocks frozen -> the encoder is still the pretrained one after epoch 1
    torch.testing.assert_close(epoch1[q1], src.encoder.blocks[1].attn.qkv.weight)
    pk = next(k for k, v in epoch1.items() if k.startswith("predictor.") and v.ndim == 2)
    epoch2 = torch.load(root / "runs" / "checkpoints" / "checkpoint_2.pt", weights_only=True)["network"]
    assert not torch.equal(epoch1[pk], epoch2[pk])  # the predictor trains in every phase
    # epoch 2: the deepest frozen block (blocks.1) is unfrozen and trains; blocks.0 and the patch embedding do not
    assert not torch.equal(sd[q1], src.encoder.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(sd["encoder.blocks.0.attn.qkv.weight"], src.encoder.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(sd["encoder.patch_embed.proj.weight"], src.encoder.patch_embed.proj.weight)
    ck = torch.load(root / "runs" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    lrs = sorted({round(g["initial_lr"], 8) for g in ck["optimizer"]["param_groups"]})
    assert lrs == [0.0002, 0.002]  # pretrained groups at 0.1 x the reference LR
    tok = _scalars(root / "runs" / "tensorboard", "train/loss")
    assert len(tok) == 4 and all(torch.isfinite(torch.tensor(tok)))
