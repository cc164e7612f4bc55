"""The pretraining-variant driver on the smoke preset, through its command line: one pretrained variant with the
dense loss and augmentations, a random-init reference, the collapse and probe numbers, and refused settings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oct_foundation.experiments.pretrain_variants import build_augmentation, main, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-m", "oct_foundation.experiments.pretrain_variants", "--preset", "smoke"]
KEYS = ("token_rank", "token_rankme", "pooled_rank", "pooled_rankme", "pooled_min_std", "token_min_std", "auroc",
        "accuracy", "knn20")


def _run(*args):
    return subprocess.run([*CMD, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_variant_and_random_reference(tmp_path, capsys):
    out = str(tmp_path / "pv")
    p = _run("--out", out, "--name", "dense_aug", "--set", "dense_loss=true", "--set", "augment=crop,flip,intensity",
             "--set", "ema_start=0.996", "--set", "eval_depth=subsampled")
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((tmp_path / "pv" / "variants" / "dense_aug.json").read_text())
    assert rec["settings"]["dense_loss"] is True and rec["settings"]["ema_start"] == 0.996
    assert rec["settings"]["augment"] == "crop,flip,intensity"
    assert len(rec["epoch_losses"]) == 1 and rec["epoch_losses"][0] > 0
    for enc in ("target", "context"):
        r = rec[enc]
        assert set(KEYS) <= set(r)
        assert 1.0 <= r["token_rank"] <= r["token_rankme"] + 1e-6 <= 32 + 1e-6  # embed_dim 32 in the smoke preset
        assert 0.0 <= r["auroc"] <= 1.0 and r["pooled_min_std"] > 0
    # the saved network carries the training: its target encoder moved away from the context encoder's copy
    state = torch.load(tmp_path / "pv" / "variants" / "dense_aug.pt", map_location="cpu")
    assert any(not torch.equal(state[k], state[k.replace("target_encoder.", "encoder.", 1)])
               for k in state if k.startswith("target_encoder.") and k.endswith("weight"))
    assert "| dense_aug | target |" in p.stdout
    assert (tmp_path / "pv" / "variants.md").read_text().count("| dense_aug |") == 2

    r = _run("--out", out, "--name", "random", "--random")
    assert r.returncode == 0, r.stderr[-3000:]
    rnd = json.loads((tmp_path / "pv" / "variants" / "random.json").read_text())
    assert rnd["random_init"] is True and set(KEYS) <= set(rnd["random_0"])
    assert "target" not in rnd
    # a finished variant is not recomputed
    assert main(["--out", out, "--name", "random", "--random", "--preset", "smoke"]) == 0
    assert (tmp_path / "pv" / "variants.md").read_text().count("| random |") == 1
    # paired bootstrap between two finished encoders on the same held-out volumes
    capsys.readouterr()
    assert main(["--out", out, "--compare", "dense_aug:target", "random:random_0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("dense_aug:target minus random:random_0: auroc ")
    assert main(["--out", out, "--compare", "dense_aug:target", "nothing:random_0"]) == 2
    assert "nothing:random_0" in capsys.readouterr().err
    # linear CKA of the trained encoders to their own initial weights: the context encoder moved (below 1), the
    # EMA target (momentum 0.996, 4 steps) stays closer to the initial weights
    assert main(["--out", out, "--cka", "dense_aug"]) == 0
    line = capsys.readouterr().out.strip()
    target, context = (float(v.strip(",")) for v in line.split()[-3::2])
    assert line.startswith("dense_aug: linear CKA to the initial encoder: target ")
    assert 0.0 < context < 0.999 and context <= target <= 1.0, line
    assert main(["--out", out, "--cka", "random"]) == 2  # no saved network


def test_bad_settings_are_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--name", "x", "--set", "dense_los=true"]) == 2
    assert "unknown setting 'dense_los'" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--name", "x", "--set", "augment=rotate"]) == 2
    assert "rotate" in capsys.readouterr().err
    assert not (tmp_path / "variants").exists()
    assert parse_overrides(["dense_loss=false", "epochs=3", "random_seeds=1,2"]) == {
        "dense_loss": False, "epochs": 3, "random_seeds": (1, 2)}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["dense_loss"])


def test_augmentations_change_the_volume_and_keep_its_shape():
    x = {"image": torch.rand(1, 8, 32, 32)}
    t = build_augmentation("crop,flip,intensity", 32)
    for i, tr in enumerate(t):
        tr.set_random_state(i) if hasattr(tr, "set_random_state") else None
    y = x
    for tr in t:
        y = tr(y)
    assert tuple(y["image"].shape) == (1, 8, 32, 32)
    assert not torch.allclose(torch.as_tensor(y["image"]), x["image"])
    assert build_augmentation("", 32) == []
