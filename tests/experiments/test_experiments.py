"""Experiment drivers end to end on real bundles with a tiny cohort and tiny networks: the depth ablation grid
(tables, plots, resume, a failing cell), the initialisation comparison, and the subprocess command line."""
import json
import math
import os
import struct

import pytest

from oct_foundation.experiments.ablation import run_ablation
from oct_foundation.experiments.history import read_history
from oct_foundation.experiments.runner import PRETRAIN_BUNDLE, BundleRun, BundleRunner
from oct_foundation.experiments.units import ExperimentSettings, equalized_tokens_per_step
from oct_foundation.experiments.compare_init import filter_datalist_by_device, run_comparison
from oct_foundation.experiments.report import is_finite, markdown_table, read_csv

NET = {"image_size": [32, 32], "patch_size": 8, "tubelet_size": 2, "embed_dim": 32, "depth": 1, "num_heads": 2}
FAST = {"num_workers": 0, "progress_bar": False, "batch_size": 2}
PRETRAIN = {**FAST, "predictor_embed_dim": 16, "predictor_depth": 1, "predictor_num_heads": 2, "num_epochs": 1,
            "warmup_epochs": 1, "log_interval": 1}
CLS = {**FAST, "num_epochs": 1}
SEG = {**FAST, "num_epochs": 1, "decoder_channels": [8]}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from oct_foundation.data.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), cases=12, seed=1, size="tiny", progress=False)
    return str(out)


def _settings(cohort, tasks=("classification", "segmentation")):
    return ExperimentSettings(dataset_dir=cohort, network=NET, pretrain=PRETRAIN, classification=CLS,
                              segmentation=SEG, tasks=tasks)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def grid(cohort, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ablation"))
    runner = BundleRunner(mode="inprocess")
    lines = []
    records = run_ablation(out, _settings(cohort), [2, 4], ["uniform"], runner, printer=lines.append)
    return out, records, runner, lines


def test_grid_writes_complete_tables_and_plots(grid):
    out, records, runner, lines = grid
    assert [r["status"] for r in records] == ["done", "done"], [r.get("error") for r in records]
    assert len(runner.launched) == 2 * 5  # per cell: pretrain, 2 x (train, evaluate)
    assert any("[2/2] d_target=4 strategy=uniform: done" in ln for ln in lines)
    rows = read_csv(os.path.join(out, "results.csv"))
    assert [(r["d_target"], r["strategy"]) for r in rows] == [(2, "uniform"), (4, "uniform")]
    for r in rows:
        for k in ("val_acc", "auroc", "dice", "tokens_per_step", "tokens_per_s", "peak_memory_mb", "tokens_seen",
                  "steps_to_thresh", "final_val_loss"):
            assert is_finite(r[k]), (k, r[k])
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["dice"] <= 1
    # tokens-per-step equalisation: one step of the deepest cell's batch, the 2-slice cell accumulates to it
    tps = equalized_tokens_per_step([2, 4], NET, 2)
    assert tps == 2 * (2 * 4 * 4) and all(r["tokens_per_step"] == tps for r in rows)
    by_d = {r["d_target"]: r for r in rows}
    assert by_d[4]["tokens_per_step_measured"] == tps
    assert by_d[2]["pretrain_steps"] < by_d[4]["pretrain_steps"]  # half the tokens per micro-batch
    # steps to the default threshold: the worst best loss is reached by every cell
    assert all(r["steps_to_thresh"] <= r["pretrain_steps"] for r in rows)
    md = open(os.path.join(out, "results.md")).read()
    header = "| D_target | Strategy | Val Acc | AUROC | Dice | Steps->Thresh | Tokens/Step | Notes |"
    assert header in md
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln != header]
    assert len(table_rows) == 2 and all("—" not in ln for ln in table_rows)
    for name in ("metric_vs_d_target.png", "metric_vs_compute.png", "metric_vs_walltime.png",
                 "pretrain_convergence.png"):
        w, h = _png_size(os.path.join(out, name))
        assert w > 100 and h > 100
    # per-cell artefacts: the bundles' logs and the history written by the appended handler
    cell = records[1]
    hist = read_history(cell["pretrain_history"])
    assert hist[-1]["step"] == cell["pretrain_steps"] and "val_jepa_loss" in hist[-1]
    assert os.path.getsize(cell["pretrain_log"]) > 0
    assert "val_accuracy" in read_history(cell["classification_history"])[-1]


def test_resume_skips_finished_cells_and_failed_cell_is_recorded(grid, cohort):
    out, records, _, _ = grid
    stamps = {r["cell_dir"]: os.path.getmtime(os.path.join(r["cell_dir"], "cell.json")) for r in records}
    runner = BundleRunner(mode="inprocess")
    lines = []
    # the failing cell comes first: strategy "bogus" is refused by the bundle's depth subsampling; the grid goes on
    again = run_ablation(out, _settings(cohort), [2, 4], ["bogus", "uniform"], runner, printer=lines.append)
    status = {(r["d_target"], r["strategy"]): r["status"] for r in again}
    assert status == {(2, "bogus"): "failed", (4, "bogus"): "failed", (2, "uniform"): "done", (4, "uniform"): "done"}
    assert len(runner.launched) == 2  # only the two new (failing) pretraining runs
    assert all(ln["bundle"] == PRETRAIN_BUNDLE for ln in runner.launched)
    for d, t in stamps.items():
        assert os.path.getmtime(os.path.join(d, "cell.json")) == t
    failed = [r for r in again if r["status"] == "failed"][0]
    saved = json.load(open(os.path.join(failed["cell_dir"], "cell.json")))
    assert saved["status"] == "failed" and "bogus" in saved["error"] and os.path.isfile(saved["error_log"])
    assert any("FAILED" in ln for ln in lines) and sum("skipped" in ln for ln in lines) == 2
    rows = read_csv(os.path.join(out, "results.csv"))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done", "failed"}
    md = open(os.path.join(out, "results.md")).read()
    assert md.count("failed:") == 2


def test_filter_datalist_by_device(cohort, tmp_path):
    from oct_foundation.data import load_datalist
    from oct_foundation.errors import OCTInputError

    src = os.path.join(cohort, "datalist.json")
    out = str(tmp_path / "sub" / "dl.json")
    counts = filter_datalist_by_device(src, "B", out)
    items = load_datalist(out, "training")
    assert counts["training"] == len(items) > 0 and {it["device"] for it in items} == {"B"}
    assert all(os.path.isfile(it["image"]) for it in items)  # absolute paths work from the new folder
    assert counts["validation"] == len(load_datalist(src, "validation"))  # evaluation splits kept whole
    with pytest.raises(OCTInputError, match="device 'Z'"):
        filter_datalist_by_device(src, "Z", str(tmp_path / "z.json"))


def test_comparison_two_arms(cohort, tmp_path):
    runner = BundleRunner(mode="inprocess")
    lines = []
    records = run_comparison(str(tmp_path), _settings(cohort, tasks=("classification",)), d_target=4,
                             device="A", runner=runner, printer=lines.append)
    assert [r["arm"] for r in records] == ["scratch_device_A", "scratch_all"]
    assert [r["status"] for r in records] == ["done", "done"], [r.get("error") for r in records]
    assert any("V-JEPA 2 arm was not run" in ln for ln in lines)
    dev, full = records
    assert dev["n_train"] < full["n_train"]
    assert dev["pretrain_epochs"] > full["pretrain_epochs"] == 1  # same step budget over fewer volumes
    assert abs(dev["pretrain_steps"] - full["pretrain_steps"]) <= 1
    pre_dl = json.load(open(os.path.join(tmp_path, "datalist_device_A.json")))
    assert {it["device"] for it in pre_dl["training"]} == {"A"}
    rows = read_csv(str(tmp_path / "results.csv"))
    for r in rows:
        for k in ("val_acc", "auroc", "final_val_loss", "pretrain_steps", "steps_to_thresh"):
            assert is_finite(r[k]), (k, r[k])
    md = open(tmp_path / "results.md").read()
    assert "| Arm | Pretraining data | Init |" in md and "scratch_device_A" in md and "not run" in md
    for name in ("convergence.png", "downstream_convergence.png"):
        assert _png_size(str(tmp_path / name))[0] > 100


def test_subprocess_command_line_runs_the_bundle(cohort, tmp_path):
    """The default runner: ``python -m monai.bundle run training --config_file a,b --key value`` in a subprocess,
    log captured in the run folder; scalar overrides on the command line, lists in the extra config file."""
    runner = BundleRunner()
    overrides = {"dataset_dir": cohort, "output_dir": str(tmp_path / "p"), "models_dir": str(tmp_path / "p" / "m"),
                 **NET, **PRETRAIN, "d_target": 4, "d_full": 12, "tokens_per_step": 64, "depth_strategy": "uniform"}
    run = BundleRun(PRETRAIN_BUNDLE, str(tmp_path / "p"), overrides, history=True)
    files, cli = runner.prepare(run)
    cmd = runner.command(run, files, cli)
    assert cmd[1:5] == ["-m", "monai.bundle", "run", "training"]
    assert "--d_target" in cmd and cmd[cmd.index("--d_target") + 1] == "4"
    assert "--image_size" not in cmd  # a list: in overrides.json
    extra = json.load(open(tmp_path / "p" / "overrides.json"))
    assert extra["image_size"] == [32, 32] and extra["train#handlers"][-1]["_target_"].endswith("MetricsHistory")
    log = runner(run)
    assert os.path.isfile(tmp_path / "p" / "m" / "model.pt")
    hist = read_history(run.history_path)
    assert hist and hist[-1]["tokens_seen"] == hist[-1]["step"] * 64 and math.isfinite(hist[-1]["val_jepa_loss"])
    text = open(log).read()
    assert text.startswith("# ") and "val_jepa_loss" in text


def test_distributed_command_and_markdown_escaping(tmp_path):
    runner = BundleRunner(nproc_per_node=2)
    run = BundleRun(PRETRAIN_BUNDLE, str(tmp_path), {"d_target": 8})
    files, cli = runner.prepare(run)
    cmd = runner.command(run, files, cli)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert "multi_gpu_train.json" in files[1]
    md = markdown_table([{"a": 1.23456, "b": "x|y", "c": float("nan")}], [("A", "a"), ("B", "b"), ("C", "c")])
    assert "| 1.235 | x\\|y | — |" in md


def test_cli_arguments_route_overrides(cohort, tmp_path):
    import argparse

    from oct_foundation.experiments.ablation import main
    from oct_foundation.experiments.cli import add_common_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_common_arguments(p)
    args = p.parse_args(["--out", str(tmp_path), "--preset", "full", "--dataset-dir", cohort, "--set", "embed_dim=64",
                         "--set", "device=cpu", "--pretrain-set", "image_size=[48, 48]", "--pretrain-epochs", "3",
                         "--downstream-epochs", "2", "--tasks", "classification", "--nproc-per-node", "4",
                         "--classification-set", "learning_rate=0.01", "--segmentation-set", "class_weights=null"])
    settings, preset, runner = settings_from_args(args, printer=lambda s: None)
    assert settings.network == {"embed_dim": 64} and settings.common == {"device": "cpu"}
    assert settings.pretrain == {"image_size": [48, 48], "num_epochs": 3}
    assert settings.classification == {"learning_rate": 0.01, "num_epochs": 2} and settings.tasks == ("classification",)
    assert settings.segmentation == {"class_weights": None, "num_epochs": 2}
    assert runner.mode == "subprocess" and runner.nproc_per_node == 4
    with pytest.raises(SystemExit, match="--dataset-dir is required"):
        main(["--out", str(tmp_path / "x"), "--preset", "full"])
