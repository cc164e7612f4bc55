"""Initialisation comparison: pretrain from scratch on one device's data, from scratch on all devices, and adapted
from V-JEPA 2 weights, with the same budget (optimizer steps), then evaluate each encoder downstream.

Each arm is a unit folder ``<out>/arms/<arm>/`` with the layout of an ablation cell (``cell.json``, ``pretrain/``,
``classification/``, ``segmentation/``), so a rerun skips finished arms. Outputs: ``results.csv``,
``results.md`` (final metrics and steps to threshold), ``convergence.png`` (validation JEPA loss vs step) and
``downstream_convergence.png`` (downstream validation metric vs step).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from oct_foundation import io
from oct_foundation.errors import OCTInputError
from oct_foundation.experiments.cli import add_common_arguments, settings_from_args
from oct_foundation.experiments.history import read_history
from oct_foundation.experiments.runner import PRETRAIN_BUNDLE, PRETRAIN_VAL_KEY, BundleRunner
from oct_foundation.experiments.units import (ExperimentSettings, _bundle_default, add_steps_to_threshold,
                                             common_threshold, detect_depth, execute_unit, run_pipeline)

__all__ = ["filter_datalist_by_device", "comparison_arms", "run_comparison", "write_comparison_report",
           "COMPARISON_COLUMNS", "main"]

SPLITS = ("training", "validation", "test")


def filter_datalist_by_device(datalist: str, device: str, out_path: str,
                              splits: Sequence[str] = ("training",)) -> dict[str, int]:
    """Write a datalist whose ``splits`` keep only the items with ``device == device`` (other lists kept whole),
    paths made absolute so that the file works from any folder. Returns the item count per list.

    Raises :class:`OCTInputError` (naming the datalist) when a filtered split has no item of that device.
    """
    from oct_foundation.data import load_datalist

    raw = io.load_json(datalist)
    if not isinstance(raw, dict):
        raise OCTInputError(datalist, "datalist must be a JSON object with lists")
    out: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for key, value in raw.items():
        if key in SPLITS and isinstance(value, list):
            items = load_datalist(datalist, key)
            if key in splits:
                devices = sorted({str(it.get("device")) for it in items})
                items = [it for it in items if str(it.get("device")) == str(device)]
                if not items:
                    raise OCTInputError(datalist, f"no {key} items with device {device!r} (devices: {devices})")
            out[key] = items
            counts[key] = len(items)
        else:
            out[key] = value
    io.save_json(out, out_path)
    return counts


def _devices(datalist: str) -> list[str]:
    from oct_foundation.data import load_datalist

    return sorted({str(it.get("device")) for it in load_datalist(datalist, "training") if it.get("device") is not None})


def comparison_arms(datalist: str, device: str | None, vjepa2: str | None) -> list[dict[str, Any]]:
    """The arms in order: scratch on one device, scratch on all devices, V-JEPA 2 (when a checkpoint is given)."""
    devices = _devices(datalist)
    if device is None:
        if not devices:
            raise OCTInputError(datalist, "training items have no 'device' field; cannot build the one-device arm")
        device = devices[0]
    elif str(device) not in devices:
        raise OCTInputError(datalist, f"no training items with device {device!r} (devices: {devices})")
    arms = [{"arm": f"scratch_device_{device}", "data": f"device {device}", "init": "random", "device": str(device)},
            {"arm": "scratch_all", "data": "all devices", "init": "random"}]
    if vjepa2:
        arms.append({"arm": "vjepa2_all", "data": "all devices", "init": "V-JEPA 2", "pretrained_path": vjepa2})
    return arms


COMPARISON_COLUMNS = [("Arm", "arm"), ("Pretraining data", "data"), ("Init", "init"), ("Steps", "pretrain_steps"),
                      ("Val Loss", "final_val_loss"), ("Val Acc", "val_acc"), ("AUROC", "auroc"), ("Dice", "dice"),
                      ("Steps->Thresh", "steps_to_thresh"), ("Notes", "notes")]
CSV_COLUMNS = ["arm", "data", "init", "status", "n_train", "pretrain_epochs", "pretrain_steps", "final_val_loss",
               "best_val_loss", "val_acc", "auroc", "macro_f1", "dice", "iou", "steps_to_thresh", "threshold",
               "tokens_seen", "tokens_per_s", "peak_memory_mb", "pretrain_train_s", "elapsed_s", "notes", "error",
               "error_log", "pretrained_path", "cell_dir"]


def _notes(r: Mapping[str, Any]) -> str:
    if r.get("status") != "done":
        return f"{r.get('status', 'not run')}: {r.get('error', '')}".strip()
    parts = [f"{r.get('n_train')} training volumes", f"{r.get('pretrain_epochs')} epochs"]
    if r.get("tokens_per_s") is not None:
        parts.append(f"{float(r['tokens_per_s']):.0f} tok/s")
    return ", ".join(parts)


def _downstream_curve(history_path: str) -> tuple[str, list[tuple[float, float]]]:
    rows = read_history(history_path)
    for key, label in (("val_accuracy", "validation accuracy"), ("val_mean_dice", "validation Dice")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            return label, pts
    return "", []


def write_comparison_report(out_dir: str, records: Sequence[dict[str, Any]], threshold: float | None = None,
                            vjepa2_note: str | None = None, command: str | None = None) -> dict[str, str]:
    """``results.csv``, ``results.md``, ``convergence.png`` and ``downstream_convergence.png``; returns the paths."""
    from oct_foundation.experiments.report import markdown_table, plot_curves, write_csv

    thr = threshold if threshold is not None else common_threshold(records)
    add_steps_to_threshold(records, thr)
    for r in records:
        r["notes"] = _notes(r)
    paths = {"csv": os.path.join(out_dir, "results.csv"), "markdown": os.path.join(out_dir, "results.md"),
             "convergence": os.path.join(out_dir, "convergence.png"),
             "downstream_convergence": os.path.join(out_dir, "downstream_convergence.png")}
    write_csv(records, paths["csv"], CSV_COLUMNS)
    curves = {r["arm"]: [(h["step"], h[PRETRAIN_VAL_KEY]) for h in read_history(r.get("pretrain_history", ""))
                         if PRETRAIN_VAL_KEY in h] for r in records}
    plot_curves(curves, paths["convergence"], "optimizer step", "validation JEPA loss",
                title="Pretraining convergence by initialisation", threshold=thr)
    down, label = {}, "validation metric"
    for r in records:
        for task in ("classification", "segmentation"):
            lab, pts = _downstream_curve(r.get(f"{task}_history", ""))
            if pts:
                down[r["arm"]], label = pts, lab
                break
    plot_curves(down, paths["downstream_convergence"], "downstream optimizer step", label,
                title="Downstream training from each encoder")
    md = ["# Initialisation comparison\n"]
    if command:
        md.append(f"Command: `{command}`\n")
    md.append(markdown_table(records, COMPARISON_COLUMNS))
    md.append(f"\nSame budget: every arm pretrains for the same number of optimizer steps (the one-device arm runs "
              f"more epochs over its smaller training set). Steps->Thresh: optimizer steps until the validation "
              f"JEPA loss reached {'%.4f' % thr if thr is not None else 'n/a'}"
              + (" (given threshold)." if threshold is not None else " (a level every arm reached).")
              + " Val Acc / AUROC / Dice: downstream evaluation on full-depth volumes.\n")
    if vjepa2_note:
        md.append(f"\n{vjepa2_note}\n")
    md.append("\nPlots: `convergence.png` (validation JEPA loss vs step), `downstream_convergence.png`.\n")
    io.atomic_write(paths["markdown"], "\n".join(md))
    return paths


def run_comparison(out_dir: str, settings: ExperimentSettings, d_target: int, strategy: str = "uniform",
                   device: str | None = None, vjepa2: str | None = None, runner: BundleRunner | None = None,
                   threshold: float | None = None, printer: Callable[[str], None] = print,
                   command: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the arms into ``out_dir/arms/<arm>/`` and write the report. Returns the arm records."""
    from oct_foundation.data import load_datalist

    runner = runner or BundleRunner()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    datalist = settings.datalist_path
    d_full = settings.d_full or detect_depth(datalist)
    arms = comparison_arms(datalist, device, vjepa2)
    vjepa2_note = None if vjepa2 else ("The V-JEPA 2 arm was not run: no checkpoint given (pass `--vjepa2 PATH`, "
                                       "a local file or a gs:// URL, to add it).")
    if vjepa2_note:
        printer(vjepa2_note)
    batch = int(settings.pretrain.get("batch_size", _bundle_default(PRETRAIN_BUNDLE, "batch_size", runner.bundles_dir)))
    epochs = int(settings.pretrain.get("num_epochs", _bundle_default(PRETRAIN_BUNDLE, "num_epochs", runner.bundles_dir)))
    n_all = len(load_datalist(datalist, "training"))
    steps_budget = epochs * max(1, n_all // batch)  # train dataloader: drop_last
    printer(f"comparison: {len(arms)} arms, budget {steps_budget} optimizer steps "
            f"({epochs} epochs x {n_all // batch} batches of {batch}), output {out_dir}")
    records = []
    for i, arm in enumerate(arms, 1):
        unit = os.path.join(out_dir, "arms", arm["arm"])
        pre: dict[str, Any] = {"d_full": d_full}
        n_train = n_all
        if "device" in arm:
            sub = os.path.join(out_dir, f"datalist_device_{arm['device']}.json")
            n_train = filter_datalist_by_device(datalist, arm["device"], sub)["training"]
            pre["datalist"] = sub
        if arm.get("pretrained_path"):
            pre["pretrained_path"] = arm["pretrained_path"]
        n_epochs = max(1, math.ceil(steps_budget / max(1, n_train // batch)))
        pre["num_epochs"] = n_epochs
        params = {**arm, "n_train": n_train, "pretrain_epochs": n_epochs, "d_target": int(d_target),
                  "strategy": strategy, "cell_dir": unit}

        def work(record, stage, unit=unit, pre=pre):
            run_pipeline(unit, settings, runner, d_target, strategy, pre, record=record, on_stage=stage)

        rec, _ = execute_unit(unit, params, work, arm["arm"], i, len(arms), printer)
        records.append(rec)
    paths = write_comparison_report(out_dir, records, threshold, vjepa2_note, command)
    done = sum(r.get("status") == "done" for r in records)
    printer(f"comparison: {done}/{len(records)} arms done; table {paths['markdown']}")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/compare_init.py``."""
    p = argparse.ArgumentParser(description="Initialisation comparison: scratch on one device, scratch on all "
                                            "devices, V-JEPA 2 adapted; same budget; tables and convergence plots.")
    add_common_arguments(p)
    p.add_argument("--vjepa2", help="V-JEPA 2 checkpoint (local path or gs:// URL) for the adapted arm")
    p.add_argument("--device-name", help="device of the one-device arm (default: the first in the datalist)")
    p.add_argument("--d-target", type=int, help="pretraining slice count (default: the preset's)")
    p.add_argument("--strategy", default="uniform", choices=["uniform", "contiguous", "random"])
    args = p.parse_args(argv)
    settings, preset, runner = settings_from_args(args)
    command = "python scripts/compare_init.py " + " ".join(argv if argv is not None else sys.argv[1:])
    records = run_comparison(args.out, settings, args.d_target or preset["d_target"], args.strategy,
                             args.device_name, args.vjepa2, runner, args.threshold, command=command)
    return 0 if all(r.get("status") == "done" for r in records) else 1
