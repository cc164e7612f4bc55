"""oct_latent_diffusion: the real configs through monai.bundle.run on a tiny synthetic cohort, and scripts/compare_vae.py."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "oct_latent_diffusion"
ROOT = BUNDLE.parents[1]
TINY = dict(num_channels=[8, 8, 8], num_res_blocks=[1, 1, 1], norm_num_groups=8, num_frames=8, image_size=[32, 32],
            num_workers=0, progress_bar=False, batch_size=2)
TINY_UNET = dict(unet_channels=[16, 16], unet_attention_levels=[False, False], unet_num_head_channels=[8, 8],
                 unet_num_res_blocks=1, unet_norm_num_groups=8)


def _run(configs, **overrides):
    from monai.bundle import run

    files = [str(BUNDLE / "configs" / c) for c in configs]
    declared = set().union(*(json.loads(Path(f).read_text()) for f in files))
    tiny = {k: v for k, v in TINY.items() if k in declared}  # the bundle refuses keys its configs do not declare
    run(config_file=files if len(files) > 1 else files[0], meta_file=str(BUNDLE / "configs" / "metadata.json"),
        **{**tiny, **overrides})


@pytest.fixture(scope="module")
def trained_autoencoder(cohort, tmp_path_factory):
    """The autoencoder bundle trained for 2 epochs (1 iteration each) with the adversarial term."""
    root = tmp_path_factory.mktemp("ae")
    torch.manual_seed(0)
    _run(["train_autoencoder.json"], bundle_root=str(root), dataset_dir=str(cohort), num_epochs=2, epoch_length=1,
         adv_weight=0.1, disc_channels=8, disc_layers=2, mse_threshold=1.0)
    return root


def test_train_autoencoder_validation_checkpoints_resume(trained_autoencoder, cohort):
    root = trained_autoencoder
    run_dir = root / "runs" / "autoencoder"
    with open(run_dir / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0 < float(r["val_mse"]) < 1 and float(r["val_psnr"]) > 0 and -1 <= float(r["val_ssim"]) <= 1
    summary = json.loads((run_dir / "validation_summary.json").read_text())
    assert summary["epochs_to_threshold"] == 1  # threshold 1.0: reached at the first validation
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    ckpt = torch.load(run_dir / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert {"network", "optimizer", "trainer", "discriminator", "d_optimizer"} <= set(ckpt)
    # the exported weight is a zoo-format autoencoder state dict: loads strictly into a fresh wrapper
    from oct_foundation.networks.maisi import StackedVideoVAE
    from oct_foundation.networks.weights import load_weights

    report = load_weights(StackedVideoVAE({k: TINY[k] for k in ("num_channels", "num_res_blocks",
                                                                 "norm_num_groups")}),
                          str(root / "models" / "autoencoder.pt"), source="maisi")
    assert report.ok and report.loaded
    # resume: one more epoch continues from the checkpoint (epoch 3, not a fresh epoch 1)
    _run(["train_autoencoder.json"], bundle_root=str(root), dataset_dir=str(cohort), num_epochs=3, epoch_length=1,
         adv_weight=0.1, disc_channels=8, disc_layers=2, resume="latest")
    with open(run_dir / "validation.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    assert "checkpoint_3.pt" in os.listdir(run_dir / "checkpoints")


def test_diffusion_train_sample_evaluate(trained_autoencoder, cohort, tmp_path):
    ae_path = str(trained_autoencoder / "models" / "autoencoder.pt")
    common = dict(bundle_root=str(tmp_path), dataset_dir=str(cohort), autoencoder_path=ae_path, **TINY_UNET)
    torch.manual_seed(0)
    # latents encoded on the fly by the trained autoencoder, rectified flow (default)
    _run(["inference.json", "train_diffusion.json"], num_epochs=1, epoch_length=2, **common)
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert float(sd["scale_factor"]) > 0  # 1/std of the training latents, stored with the weights
    assert (tmp_path / "runs" / "diffusion" / "checkpoints" / "checkpoint_1.pt").exists()

    out = tmp_path / "samples"
    _run(["inference.json"], output_dir=str(out), num_samples=3, num_inference_steps=2, **common)
    files = sorted(p.name for p in out.glob("sample_*.nii.gz"))
    assert files == ["sample_0000.nii.gz", "sample_0001.nii.gz", "sample_0002.nii.gz"]
    vol = nib.load(str(out / files[0])).get_fdata()
    assert vol.shape == (8, 32, 32) and vol.min() >= 0 and vol.max() <= 1  # decoded back to [T, H, W]
    assert (out / "samples_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun keeps finished samples; asking for more only adds the missing ones (same seeds -> same files)
    mtime = os.path.getmtime(out / files[0])
    _run(["inference.json"], output_dir=str(out), num_samples=4, num_inference_steps=2, **common)
    assert os.path.getmtime(out / files[0]) == mtime
    with open(out / "samples.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["kept", "kept", "kept", "generated"]

    ev = tmp_path / "eval"
    _run(["inference.json", "evaluate.json"], output_dir=str(ev), sample_dir=str(out), real_key="training",
         feature_embed_dim=32, feature_depth=1, feature_num_heads=2, **common)
    res = json.loads((ev / "frechet.json").read_text())
    assert res["n_generated"] == 4 and res["n_real"] >= 4 and res["volume_shape"] == [1, 8, 32, 32]
    assert res["fd_real_vs_real"] >= 0 and res["fd_generated_vs_real"] >= 0
    assert "real half A vs real half B" in (ev / "frechet.csv").read_text()


def test_diffusion_on_encoded_latent_files(cohort, tmp_path):
    """Latents written by the oct_maisi_vae_encode processors (files + sidecars) train the U-Net."""
    from oct_foundation.data import load_datalist
    from oct_foundation.engines.maisi_inference import MaisiEncodeProcessor
    from oct_foundation.networks.maisi import StackedVideoVAE

    torch.manual_seed(0)
    vae = StackedVideoVAE({k: TINY[k] for k in ("num_channels", "num_res_blocks", "norm_num_groups")},
                          scale_factor=0.5)
    lat = tmp_path / "latents"
    lat.mkdir()
    proc = MaisiEncodeProcessor(vae)
    for i, item in enumerate(load_datalist(str(cohort / "datalist.json"), "training")[:3]):
        proc(item, str(lat / f"case{i}"))
    _run(["inference.json", "train_diffusion.json"], bundle_root=str(tmp_path), dataset_dir=str(cohort),
         latent_dir=str(lat), num_epochs=1, epoch_length=1, scheduler_type="ddpm", **TINY_UNET)
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert float(sd["scale_factor"]) > 0


def test_config_properties_and_bundle_files(cohort):
    from monai.bundle import ConfigWorkflow

    meta = str(BUNDLE / "configs" / "metadata.json")
    for files, kind in ((["train_autoencoder.json"], "train"), (["inference.json", "train_diffusion.json"], "train"),
                        (["inference.json"], "infer")):
        wf = ConfigWorkflow(config_file=[str(BUNDLE / "configs" / f) for f in files], meta_file=meta,
                            workflow_type=kind, bundle_root=str(BUNDLE), dataset_dir=str(cohort))
        wf.initialize()
        assert not wf.check_properties(), files
    for rel in ["configs/metadata.json", "configs/train_autoencoder.json", "configs/train_diffusion.json",
                "configs/inference.json", "configs/evaluate.json", "configs/logging.conf", "docs/README.md",
                "LICENSE", "large_files.yml"]:
        assert (BUNDLE / rel).is_file(), rel
    readme = (BUNDLE / "docs" / "README.md").read_text()
    assert "non-commercial" in readme


def test_compare_vae_script(trained_autoencoder, cohort, tmp_path):
    """Scratch vs pretrained (a tiny autoencoder trained by the bundle stands in for the MAISI weights)."""
    spec = importlib.util.spec_from_file_location("compare_vae", ROOT / "scripts" / "compare_vae.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sets = [f"{k}={v!r}" for k, v in TINY.items()] + ["epoch_length=1"]
    out = tmp_path / "cmp"
    args = ["--dataset-dir", str(cohort), "--out", str(out), "--epochs", "1", "--mse-threshold", "0.2",
            "--pretrained", str(trained_autoencoder / "models" / "autoencoder.pt")]
    for s in sets:
        args += ["--set", s]
    assert mod.main(args) == 0
    with open(out / "compare_vae.csv") as f:
        rows = {r["init"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"scratch", "pretrained"}
    for r in rows.values():
        assert float(r["mse_epoch1"]) > 0 and r["epochs"] == "1"
    # the pretrained start has seen 3 epochs of the same data before: lower MSE after the first epoch
    assert float(rows["pretrained"]["mse_epoch1"]) < float(rows["scratch"]["mse_epoch1"])
    assert "| scratch |" in (out / "compare_vae.md").read_text()
    assert (out / "compare_vae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # an existing table is not overwritten without --overwrite
        mod.main(args)
