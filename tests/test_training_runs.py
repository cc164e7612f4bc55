"""Nothing finished is replaced silently: a fresh training run over existing results refuses (every training
config), ``--resume latest`` continues only checkpoints of the same run config, ``--overwrite true`` replaces, and
checkpoint / resume paths may be fsspec URLs (``memory://``) without a local folder named ``memory:``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oct_foundation.engines.runs import checkpoint_run, run_id_of, run_settings, start_training_run
from oct_foundation.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
PRETRAIN = BUNDLES / "oct_vjepa_pretrain" / "configs"

# (bundle, config files): every training config
TRAINING = [
    ("oct_vjepa_pretrain", ["train.json"]),
    ("oct_disease_classification", ["train.json"]),
    ("oct_layer_segmentation", ["train.json"]),
    ("oct_latent_diffusion", ["train_autoencoder.json"]),
    ("oct_latent_diffusion", ["inference.json", "train_diffusion.json"]),
]
TINY = {"d_target": 8, "d_full": 10, "image_size": [32, 32], "patch_size": 8, "embed_dim": 32, "depth": 2,
        "num_heads": 2, "predictor_embed_dim": 32, "predictor_depth": 1, "predictor_num_heads": 2, "batch_size": 2,
        "num_workers": 0, "progress_bar": False, "val_interval": 0, "rank_interval": 0, "log_interval": 1}


def _cmd(bundle, files, *args):
    cfg = BUNDLES / bundle / "configs"
    paths = [str(cfg / f) for f in files]
    config_arg = paths[0] if len(paths) == 1 else "[" + ",".join(f"'{p}'" for p in paths) + "]"
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg,
            "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"), *args]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _cli(bundle, files, *args, cwd):
    return subprocess.run(_cmd(bundle, files, *args), cwd=str(cwd), env=_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("bundle,files", TRAINING, ids=[f"{b}:{f[-1]}" for b, f in TRAINING])
def test_fresh_run_over_existing_checkpoints_refuses_before_any_work(bundle, files, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"trainer": {"epoch": 3}}, ckpt_dir / "checkpoint_3.pt")
    out = tmp_path / "out"
    proc = _cli(bundle, files, "--bundle_root", str(tmp_path / "root"), "--output_dir", str(out),
                "--ckpt_dir", str(ckpt_dir), "--dataset_dir", str(tmp_path / "no_data"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "a fresh training run would replace what is already there" in proc.stderr, proc.stderr[-2000:]
    assert str(ckpt_dir / "checkpoint_3.pt") in proc.stderr
    assert "pass --resume latest to continue that run, or --overwrite true to replace it" in proc.stderr
    assert not out.exists(), "work started before the refusal"
    assert (ckpt_dir / "checkpoint_3.pt").exists()


def test_cli_overwrite_true_replaces_a_finished_run(tmp_path):
    from oct_foundation.data.synthetic import generate_cohort

    generate_cohort(str(tmp_path / "cohort"), cases=6, seed=0, size="tiny", progress=False)
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    (root / "models" / "model.pt").write_bytes(b"an older model")
    ckpt_dir = root / "runs" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save({"run": {"run_id": "0123456789ab", "settings": {}}}, ckpt_dir / "checkpoint_7.pt")
    args = ["--dataset_dir", str(tmp_path / "cohort"), "--bundle_root", str(root), "--num_epochs", "1"]
    for k, v in TINY.items():
        args += [f"--{k}", str(v).replace(" ", "").lower() if isinstance(v, (bool, list)) else str(v)]
    proc = _cli("oct_vjepa_pretrain", ["train.json"], *args, "--overwrite", "true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in ckpt_dir.glob("checkpoint_*.pt")) == ["checkpoint_1.pt"]  # the old run's gone
    assert set(torch.load(root / "models" / "model.pt", weights_only=True))  # a state dict, not the old bytes
    assert checkpoint_run(str(ckpt_dir / "checkpoint_1.pt"))["run_id"] != "0123456789ab"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from oct_foundation.data.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), cases=6, seed=0, size="tiny", progress=False)
    return out


def _run(**overrides):
    from monai.bundle import run

    run("training", config_file=str(PRETRAIN / "train.json"), meta_file=str(PRETRAIN / "metadata.json"),
        logging_file=str(PRETRAIN / "logging.conf"), **{**TINY, **overrides})


def _raised(excinfo, kind=CheckpointError):
    """The ``kind`` error behind MONAI's 'Failed to evaluate ...' wrapper."""
    e = excinfo.value
    while e is not None and not isinstance(e, kind):
        e = e.__cause__ or e.__context__
    assert e is not None, f"no {kind.__name__} in {excinfo.value!r}"
    return e


def test_memory_checkpoints_resume_only_the_same_run(memfs, cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = "memory://oct_runs/ckpt"
    common = dict(dataset_dir=str(cohort), bundle_root=str(tmp_path / "root"), ckpt_dir=ckpt,
                  models_dir="memory://oct_runs/models")
    _run(num_epochs=1, **common)
    assert memfs.exists("/oct_runs/ckpt/checkpoint_1.pt") and memfs.exists("/oct_runs/models/model.pt")
    first = checkpoint_run(f"{ckpt}/checkpoint_1.pt")
    assert len(first["run_id"]) == 12 and first["settings"]["embed_dim"] == 32

    # a fresh run over it refuses
    with pytest.raises(Exception) as excinfo:
        _run(num_epochs=1, **common)
    assert "pass --resume latest" in str(_raised(excinfo))

    # --resume latest continues the same run (num_epochs may grow) from the memory:// checkpoint
    _run(num_epochs=2, resume="latest", **common)
    with memfs.open("/oct_runs/ckpt/checkpoint_2.pt", "rb") as f:
        state = torch.load(f, weights_only=True)
    assert state["trainer"]["iteration"] == 2 * first_iterations(cohort)
    assert state["run"]["run_id"] == first["run_id"]

    # another config's --resume latest is refused, naming both runs and the setting that differs
    with pytest.raises(Exception) as excinfo:
        _run(num_epochs=3, resume="latest", learning_rate=0.01, **common)
    err = str(_raised(excinfo))
    assert f"belongs to run {first['run_id']}" in err and "learning_rate" in err and "0.01 (this run)" in err
    other = run_id_of(run_settings({**TINY, "learning_rate": 0.01}))
    assert other != first["run_id"]

    # an explicit memory:// resume path works like a local one
    _run(num_epochs=3, resume=f"{ckpt}/checkpoint_2.pt", **common)
    assert memfs.exists("/oct_runs/ckpt/checkpoint_3.pt")

    # nothing became a local folder named memory:
    for where in (tmp_path, ROOT, tmp_path / "root"):
        assert not (where / "memory:").exists(), where


def first_iterations(cohort) -> int:
    import json

    n = len(json.loads((Path(cohort) / "datalist.json").read_text())["training"])
    return n // TINY["batch_size"]  # drop_last


def test_start_training_run_rules(memfs, tmp_path):
    settings = {"learning_rate": 0.1, "embed_dim": 32, "num_epochs": 5, "bundle_root": "/x", "amp": False,
                "network_def": {"_target_": "X"}, "device": "$torch.device('cpu')"}
    assert run_settings(settings) == {"amp": False, "embed_dim": 32, "learning_rate": 0.1}
    ckpt = "memory://rules/ckpt"
    fresh = start_training_run(ckpt, "memory://rules/models/model.pt", config=settings)
    assert fresh.resume_path == "" and fresh.run_id == run_id_of(run_settings(settings))
    # --resume latest with nothing to resume starts afresh; with a finished model and no checkpoint it refuses
    assert start_training_run(ckpt, "", resume="latest", config=settings).resume_path == ""
    memfs.pipe("/rules/models/model.pt", b"x")
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        start_training_run(ckpt, "memory://rules/models/model.pt", resume="latest", config=settings)
    # a checkpoint without a run id is not taken for this run's
    with memfs.open("/rules/ckpt/checkpoint_4.pt", "wb") as f:
        torch.save({"trainer": {"epoch": 4}}, f)
    with pytest.raises(CheckpointError, match="records no run id"):
        start_training_run(ckpt, "", resume="latest", config=settings)
    # a missing explicit resume path, and a resume file that is not a checkpoint, are named
    with pytest.raises(CheckpointError, match="not found"):
        start_training_run(ckpt, "", resume="memory://rules/none.pt", config=settings)
    memfs.pipe("/rules/page.pt", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(CheckpointError, match="memory://rules/page.pt: an HTML"):
        start_training_run(ckpt, "", resume="memory://rules/page.pt", config=settings)
    # --overwrite true removes the old checkpoints, so no later --resume latest can take the old run's epoch
    with pytest.raises(CheckpointError, match="fresh training run would replace"):
        start_training_run(ckpt, "", config=settings)
    start_training_run(ckpt, "", overwrite="true", config=settings)
    assert not memfs.exists("/rules/ckpt/checkpoint_4.pt")
    assert not (tmp_path / "memory:").exists() and not Path("memory:").exists()
