"""Downstream bundles build the encoder from the model file alone: a tiny pretraining run with a non-default shape
(embed 48, depth 2, patch 8) through ``python -m monai.bundle run``, then what scripts/demo.sh runs after it
(embedding inference, classification and segmentation training and evaluation) with no architecture flag; a
conflicting ``--embed_dim`` fails naming the key."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
B = ROOT / "bundles"
PRETRAIN_SHAPE = ["--image_size", "[32, 32]", "--d_target", "8", "--patch_size", "8", "--tubelet_size", "2",
                  "--embed_dim", "48", "--depth", "2", "--num_heads", "2"]
CPU = ["--device", "$torch.device('cpu')"]


def _cli(run_id, configs, *args, check=True):
    """``python -m monai.bundle run RUN_ID --config_file ... ARGS`` as a user types it; returns the process."""
    files = [str(B / c) for c in configs]
    cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    logging_file = str(Path(files[0]).parent / "logging.conf")
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", cfg, "--logging_file", logging_file,
           *[str(a) for a in args]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def _run(run_id, configs, **overrides):
    """The same through ``monai.bundle.run`` in this process (what the command line calls), for the later steps."""
    from monai.bundle import run

    files = [str(B / c) for c in configs]
    run(run_id, config_file=files if len(files) > 1 else files[0],
        logging_file=str(Path(files[0]).parent / "logging.conf"), device="$torch.device('cpu')",
        **{k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})


@pytest.fixture(scope="module")
def pretrained(cohort, tmp_path_factory):
    """A tiny pretraining run (1 epoch) with the shape flags, as scripts/demo.sh step 2 runs it."""
    root = tmp_path_factory.mktemp("pretrain")
    _cli("training", ["oct_vjepa_pretrain/configs/train.json"], "--dataset_dir", cohort, "--bundle_root", root,
         *PRETRAIN_SHAPE, "--predictor_embed_dim", "32", "--predictor_depth", "1", "--predictor_num_heads", "2",
         "--d_full", "10", "--batch_size", "2", "--num_epochs", "1", "--num_workers", "0", "--progress_bar", "false",
         "--val_interval", "0", "--rank_interval", "0", *CPU)
    return root / "models" / "model.pt"


def test_pretraining_writes_the_description(pretrained):
    spec = json.loads(pretrained.with_name("model.json").read_text())
    assert spec["_target_"] == "oct_foundation.networks.vjepa3d.VJEPA3D"
    enc = spec["encoder"]["args"]
    assert (enc["embed_dim"], enc["depth"], enc["num_heads"], enc["patch_size"]) == (48, 2, 2, 8)
    assert enc["img_size"] == [8, 32, 32]
    assert spec["args"]["predictor_embed_dim"] == 32
    state = torch.load(pretrained, weights_only=True)  # still a plain state dict
    assert state["encoder.patch_embed.proj.weight"].shape == (48, 1, 2, 8, 8)


def test_embedding_inference_with_model_path_only(pretrained, cohort, tmp_path):
    out = tmp_path / "embeddings"
    _cli("run", ["oct_vjepa_pretrain/configs/inference.json"], "--input_dir", cohort / "images",
         "--output_dir", out, "--model_path", pretrained, *CPU)
    rows = (out / "manifest.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(list((cohort / "images").glob("*.nii.gz")))
    first = sorted(out.glob("*_embedding.pt"))[0]
    assert torch.load(first, weights_only=True).shape == (48,)


def test_classification_train_and_evaluate_with_encoder_path_only(pretrained, cohort, tmp_path):
    root = tmp_path / "classification"
    _cli("training", ["oct_disease_classification/configs/train.json"], "--dataset_dir", cohort,
         "--bundle_root", root, "--encoder_source", "model_pt", "--encoder_path", pretrained, "--num_epochs", "1",
         "--num_workers", "0", "--progress_bar", "false", *CPU)
    spec = json.loads((root / "models" / "model.json").read_text())
    assert spec["_target_"] == "oct_foundation.networks.heads.ClassificationNet"
    assert spec["encoder"]["args"]["embed_dim"] == 48 and spec["encoder"]["args"]["img_size"] == [8, 32, 32]
    # the frozen probe's encoder is the pretrained target encoder
    pre = torch.load(pretrained, weights_only=True)
    head = torch.load(root / "models" / "model.pt", weights_only=True)
    assert torch.equal(head["encoder.blocks.1.mlp.fc2.weight"], pre["target_encoder.blocks.1.mlp.fc2.weight"])
    # evaluation builds the network from the trained model's description
    _run("evaluating", ["oct_disease_classification/configs/train.json",
                        "oct_disease_classification/configs/evaluate.json"],
         dataset_dir=cohort, bundle_root=root, num_workers=0)
    assert any((root / "runs" / "eval").iterdir())


def test_segmentation_random_encoder_of_the_pretrained_shape(pretrained, cohort, tmp_path):
    """demo.sh's random arm: random weights, the architecture of --encoder_path's model file."""
    root = tmp_path / "segmentation"
    _run("training", ["oct_layer_segmentation/configs/train.json"], dataset_dir=cohort, bundle_root=root,
         encoder_source="random", encoder_path=pretrained, num_epochs=1, num_workers=0, progress_bar=False,
         decoder_channels=[8])
    spec = json.loads((root / "models" / "model.json").read_text())
    assert spec["encoder"]["args"]["embed_dim"] == 48 and spec["encoder"]["args"]["patch_size"] == 8
    pre = torch.load(pretrained, weights_only=True)
    head = torch.load(root / "models" / "model.pt", weights_only=True)
    assert head["encoder.patch_embed.proj.weight"].shape == pre["encoder.patch_embed.proj.weight"].shape
    assert not torch.equal(head["encoder.patch_embed.proj.weight"], pre["target_encoder.patch_embed.proj.weight"])
    _run("evaluating", ["oct_layer_segmentation/configs/train.json", "oct_layer_segmentation/configs/evaluate.json"],
         dataset_dir=cohort, bundle_root=root, num_workers=0, decoder_channels=[8])
    assert (root / "runs" / "eval" / "segmentation_metrics.json").exists()


def test_conflicting_shape_flag_names_the_key(pretrained, cohort, tmp_path):
    proc = _cli("training", ["oct_disease_classification/configs/train.json"], "--dataset_dir", cohort,
                "--bundle_root", tmp_path / "bad", "--encoder_path", pretrained, "--embed_dim", "96",
                "--num_epochs", "1", "--num_workers", "0", *CPU, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "--embed_dim 96 disagrees with the model file" in err and "embed_dim=48" in err
    assert str(pretrained.with_name("model.json")) in err
    assert not (tmp_path / "bad" / "models").exists()


def test_training_from_a_folder_without_datalist(pretrained, cohort, tmp_path):
    """One input rule in every training bundle: the datalist, else the folder. Segmentation pairs images/<name>
    with labels/<name>; classification cannot take classes from a folder and says so, naming the datalist."""
    import shutil

    data = tmp_path / "folder"
    shutil.copytree(cohort / "images", data / "images")
    shutil.copytree(cohort / "labels", data / "labels")
    root = tmp_path / "segmentation"
    _cli("training", ["oct_layer_segmentation/configs/train.json"], "--dataset_dir", data, "--bundle_root", root,
         "--encoder_source", "model_pt", "--encoder_path", pretrained, "--num_epochs", "1", "--num_workers", "0",
         "--progress_bar", "false", "--decoder_channels", "[8]", *CPU)
    assert (root / "models" / "model.pt").exists()
    proc = _cli("training", ["oct_disease_classification/configs/train.json"], "--dataset_dir", data,
                "--bundle_root", tmp_path / "classification", "--encoder_path", pretrained, "--num_epochs", "1",
                "--num_workers", "0", *CPU, check=False)
    assert proc.returncode != 0
    assert f"{data / 'datalist.json'}: datalist not found: the class of each volume" in proc.stderr


def test_random_init_embeddings_are_the_same_every_run(pretrained, cohort, tmp_path):
    """demo.sh's random reference (``--architecture_file F --model_path ""``) is seeded (``--seed``, default 0): two
    runs give the same embeddings, another seed other ones."""
    outs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        outs[name] = tmp_path / name
        _cli("run", ["oct_vjepa_pretrain/configs/inference.json"], "--input_dir", cohort / "images",
             "--output_dir", outs[name], "--architecture_file", pretrained, "--model_path", "", "--seed", seed, *CPU)
    first = sorted(p.name for p in outs["a"].glob("*_embedding.pt"))[0]
    a, b, c = (torch.load(outs[n] / first, weights_only=True) for n in "abc")
    assert torch.equal(a, b) and not torch.allclose(a, c)
