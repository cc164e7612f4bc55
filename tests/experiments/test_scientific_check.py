"""The scientific-check driver end to end on the smoke preset: cohorts, pretraining, probes, bootstrap, report."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from oct_foundation.experiments.scientific_check import PRESETS, CheckSettings, run_check

    out = tmp_path_factory.mktemp("check")
    settings = CheckSettings(**{**PRESETS["smoke"], "lesion_scales": (1.0,)})
    return out, settings, run_check(str(out), settings)


def test_results_hold_every_encoder_and_pair(smoke):
    out, settings, res = smoke
    (scale,) = res["scales"]
    assert scale["n_heldout"] + scale["n_probe_train"] == settings.probe_cases
    assert scale["n_unlabelled"] == settings.unlabelled_cases
    names = set(scale["encoders"])
    assert names == {"random_0", "random_1", "pretrained_0_target", "pretrained_0_context"}
    for rec in scale["encoders"].values():
        assert 1.0 <= rec["effective_rank"] <= settings.embed_dim
        for pool in ("meanmax", "mean"):
            assert 0.0 <= rec[pool]["accuracy"] <= 1.0 and "probabilities" not in rec[pool]
    pre = scale["encoders"]["pretrained_0_target"]
    assert len(pre["epoch_losses"]) == settings.epochs and pre["epoch_losses"][0] > 0
    # 2 pretrained encoders x 2 random seeds x 2 poolings, each with an AUROC and an accuracy bootstrap
    assert len(scale["comparisons"]) == 8
    c = scale["comparisons"][0]
    assert c["auroc"]["ci_low"] <= c["auroc"]["estimate"] <= c["auroc"]["ci_high"]
    # two random encoders of different seeds are different encoders
    r0, r1 = scale["encoders"]["random_0"], scale["encoders"]["random_1"]
    assert r0["effective_rank"] != r1["effective_rank"]
    assert json.loads((out / "results.json").read_text()) == res
    md = (out / "results.md").read_text()
    assert "## Lesion scale 1" in md and "| pretrained_0_target | random_1 | meanmax |" in md
    assert (out / "scale_1" / "pretrained_0.pt").exists()


def test_rerun_reuses_finished_units(smoke):
    from oct_foundation.experiments.scientific_check import run_check

    out, settings, res = smoke
    unit = out / "scale_1" / "pretrained_0.json"
    before = unit.stat().st_mtime_ns
    again = run_check(str(out), settings)
    assert unit.stat().st_mtime_ns == before
    assert again["scales"][0]["encoders"] == res["scales"][0]["encoders"]


def test_cli_help_and_bad_output(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "scientific_check.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--lesion-scales" in res.stdout
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "scientific_check.py"), "--preset", "smoke",
                          "--out", str(blocker / "sub")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "error:" in res.stderr
