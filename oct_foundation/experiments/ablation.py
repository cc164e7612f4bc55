"""Depth-subsampling ablation: pretrain once per ``(d_target, strategy)`` cell through the pretrain bundle, evaluate
each cell's encoder on full-depth volumes through the downstream bundles, and tabulate / plot the grid.

The pieces it shares with :mod:`oct_foundation.experiments.compare_init` live beside it: the per-epoch history
handler (:mod:`~oct_foundation.experiments.history`), the bundle runner (:mod:`~oct_foundation.experiments.runner`),
one unit's pipeline and presets (:mod:`~oct_foundation.experiments.units`), the shared command line
(:mod:`~oct_foundation.experiments.cli`), tables and plots (:mod:`~oct_foundation.experiments.report`).

Layout of one cell folder: ``cell.json`` (status, parameters, metrics, error, log paths), ``pretrain/`` (bundle
outputs, ``models/model.pt``, ``history.json``, ``bundle.log``), ``classification/`` and ``segmentation/``
(``history.json``, ``eval/*_metrics.json``, logs).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from oct_foundation import io


__all__ = ["ABLATION_COLUMNS", "CSV_COLUMNS", "write_ablation_report", "run_ablation", "main"]
from oct_foundation.experiments.cli import add_common_arguments, settings_from_args
from oct_foundation.experiments.history import read_history
from oct_foundation.experiments.runner import PRETRAIN_BUNDLE, PRETRAIN_VAL_KEY, BundleRunner
from oct_foundation.experiments.units import (ExperimentSettings, _bundle_default, add_steps_to_threshold,
                                             common_threshold, detect_depth, equalized_tokens_per_step, execute_unit,
                                             run_pipeline)

logger = logging.getLogger("oct_foundation.experiments")


ABLATION_COLUMNS = [("D_target", "d_target"), ("Strategy", "strategy"), ("Val Acc", "val_acc"),
                    ("AUROC", "auroc"), ("Dice", "dice"), ("Steps->Thresh", "steps_to_thresh"),
                    ("Tokens/Step", "tokens_per_step"), ("Notes", "notes")]
CSV_COLUMNS = ["d_target", "strategy", "status", "val_acc", "auroc", "macro_f1", "dice", "iou",
               "steps_to_thresh", "threshold", "tokens_per_step", "tokens_per_step_measured", "tokens_per_s",
               "peak_memory_mb", "tokens_seen", "pretrain_steps", "pretrain_train_s", "pretrain_wall_s",
               "final_val_loss", "best_val_loss", "mask_rescale", "d_full", "elapsed_s", "notes", "error",
               "error_log", "cell_dir"]


def _notes(r: Mapping[str, Any]) -> str:
    if r.get("status") != "done":
        return f"{r.get('status', 'not run')}: {r.get('error', '')}".strip()
    parts = []
    if r.get("tokens_per_s") is not None:
        parts.append(f"{float(r['tokens_per_s']):.0f} tok/s")
    if r.get("peak_memory_mb") is not None:
        parts.append(f"peak {float(r['peak_memory_mb']):.0f} MiB")
    if r.get("final_val_loss") is not None:
        parts.append(f"val loss {float(r['final_val_loss']):.4f}")
    return ", ".join(parts)


def write_ablation_report(out_dir: str, records: Sequence[dict[str, Any]], threshold: float | None = None,
                          title: str = "Depth-subsampling ablation", command: str | None = None) -> dict[str, str]:
    """``results.csv``, ``results.md`` and the PNG plots of a grid; returns the written paths."""
    from oct_foundation.experiments.report import markdown_table, plot_curves, plot_metric_vs, write_csv

    thr = threshold if threshold is not None else common_threshold(records)
    add_steps_to_threshold(records, thr)
    for r in records:
        r["notes"] = _notes(r)
    rows = sorted(records, key=lambda r: (str(r.get("strategy")), int(r.get("d_target", 0))))
    paths = {"csv": os.path.join(out_dir, "results.csv"), "markdown": os.path.join(out_dir, "results.md"),
             "vs_d_target": os.path.join(out_dir, "metric_vs_d_target.png"),
             "vs_compute": os.path.join(out_dir, "metric_vs_compute.png"),
             "convergence": os.path.join(out_dir, "pretrain_convergence.png")}
    write_csv(rows, paths["csv"], CSV_COLUMNS)
    metrics = [(k, lab) for k, lab in (("val_acc", "Val Acc"), ("auroc", "AUROC"), ("dice", "Dice"))
               if any(r.get(k) is not None for r in rows)] or [("final_val_loss", "val JEPA loss")]
    plot_metric_vs(rows, "d_target", metrics, "strategy", paths["vs_d_target"], xlabel="D_target (slices)",
                   title="Full-depth evaluation vs pretraining depth")
    compute = [(k, lab) for k, lab in metrics] + [("final_val_loss", "val JEPA loss")]
    # metric vs compute: tokens seen in pretraining (x), and the same against pretraining wall time
    plot_metric_vs(rows, "tokens_seen", compute, "strategy", paths["vs_compute"],
                   xlabel="pretraining tokens seen", title="Metric vs compute (tokens)")
    paths["vs_walltime"] = os.path.join(out_dir, "metric_vs_walltime.png")
    plot_metric_vs(rows, "pretrain_train_s", compute, "strategy", paths["vs_walltime"],
                   xlabel="pretraining time (s)", title="Metric vs compute (wall time)")
    curves = {f"d={r['d_target']} {r['strategy']}": [(h["step"], h[PRETRAIN_VAL_KEY])
                                                     for h in read_history(r.get("pretrain_history", ""))
                                                     if PRETRAIN_VAL_KEY in h] for r in rows}
    plot_curves(curves, paths["convergence"], "optimizer step", "validation JEPA loss",
                title="Pretraining convergence", threshold=thr)
    md = [f"# {title}\n"]
    if command:
        md.append(f"Command: `{command}`\n")
    md.append(markdown_table(rows, ABLATION_COLUMNS))
    md.append(f"\nSteps->Thresh: optimizer steps until the validation JEPA loss reached "
              f"{'%.4f' % thr if thr is not None else 'n/a'} (" +
              ("given threshold" if threshold is not None else "the highest best loss over the finished cells, "
               "i.e. a level every cell reached") + "). Tokens/Step: the equalised tokens per optimizer step. "
              "Val Acc / AUROC / Dice: downstream evaluation on full-depth volumes.\n")
    md.append("\nPlots: `metric_vs_d_target.png`, `metric_vs_compute.png`, `metric_vs_walltime.png`, "
              "`pretrain_convergence.png`.\n")
    io.atomic_write(paths["markdown"], "\n".join(md))
    return paths


def run_ablation(out_dir: str, settings: ExperimentSettings, d_targets: Sequence[int], strategies: Sequence[str],
                 runner: BundleRunner | None = None, threshold: float | None = None, mask_rescale: bool = True,
                 equalize_tokens: bool = True, printer: Callable[[str], None] = print,
                 command: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the ``d_targets x strategies`` grid into ``out_dir/cells/d<D>_<strategy>/`` and write the
    tables and plots. Returns the cell records (one per cell, failed ones included)."""
    runner = runner or BundleRunner()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    d_full = settings.d_full or detect_depth(settings.datalist_path)
    batch = int(settings.pretrain.get("batch_size", _bundle_default(PRETRAIN_BUNDLE, "batch_size", runner.bundles_dir)))
    tps = equalized_tokens_per_step(d_targets, settings.network, batch, d_full, runner.bundles_dir) \
        if equalize_tokens else 0
    cells = [(int(d), s) for d in d_targets for s in strategies]
    printer(f"ablation: {len(cells)} cells ({list(d_targets)} x {list(strategies)}), d_full={d_full}, "
            f"tokens/step={tps or 'batch'}, output {out_dir}")
    records = []
    for i, (d, s) in enumerate(cells, 1):
        unit = os.path.join(out_dir, "cells", f"d{d}_{s}")
        params = {"d_target": d, "strategy": s, "tokens_per_step": tps or None, "mask_rescale": bool(mask_rescale),
                  "d_full": d_full, "cell_dir": unit}

        def work(record, stage, d=d, s=s, unit=unit):
            run_pipeline(unit, settings, runner, d, s, {"d_full": d_full, "mask_rescale": bool(mask_rescale),
                                                        "tokens_per_step": tps}, record=record, on_stage=stage)

        rec, _ = execute_unit(unit, params, work, f"d_target={d} strategy={s}", i, len(cells), printer)
        records.append(rec)
    paths = write_ablation_report(out_dir, records, threshold, command=command)
    done = sum(r.get("status") == "done" for r in records)
    printer(f"ablation: {done}/{len(records)} cells done; table {paths['markdown']}, csv {paths['csv']}")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/ablate_depth.py``: the depth-subsampling grid (see the module docstring)."""
    p = argparse.ArgumentParser(description="Depth-subsampling ablation: pretrain per (d_target, strategy) cell, "
                                            "evaluate on full depth, write results.csv / results.md / plots.")
    add_common_arguments(p)
    p.add_argument("--d-targets", nargs="+", type=int, help="slice counts (default: the preset's)")
    p.add_argument("--strategies", nargs="+", choices=["uniform", "contiguous", "random"],
                   help="depth-subsampling strategies (default: uniform contiguous)")
    p.add_argument("--no-token-equalization", action="store_true", help="one batch per optimizer step")
    p.add_argument("--no-mask-rescale", action="store_true", help="keep the mask ratio of d_full")
    args = p.parse_args(argv)
    settings, preset, runner = settings_from_args(args)
    command = "python scripts/ablate_depth.py " + " ".join(argv if argv is not None else sys.argv[1:])
    records = run_ablation(args.out, settings, args.d_targets or preset["d_targets"],
                           args.strategies or preset["strategies"], runner, threshold=args.threshold,
                           mask_rescale=not args.no_mask_rescale, equalize_tokens=not args.no_token_equalization,
                           command=command)
    return 0 if all(r.get("status") == "done" for r in records) else 1
