"""Autoencoder from scratch vs initialised from pretrained (MAISI) weights, same data and budget.

Runs the ``oct_latent_diffusion`` bundle's ``train_autoencoder.json`` once with ``pretrained_autoencoder=""`` and,
when weights are given, once from them, through the shared :class:`~oct_foundation.experiments.runner.BundleRunner`
(one ``python -m monai.bundle run`` per arm, its log in the arm's folder), then writes to ``out``:
``compare_vae.csv`` and ``compare_vae.md`` (reconstruction MSE after the first epoch, epochs until the validation
MSE reaches the threshold, best / final MSE, PSNR and SSIM) and ``compare_vae.png`` / ``compare_vae_psnr.png``
(validation MSE and PSNR per epoch). Without pretrained weights only the scratch arm runs and the table says so.

    python scripts/compare_vae.py --dataset-dir DATA --pretrained models/autoencoder.pt --out results/vae \\
        --epochs 20 [--set num_frames=16 --set image_size=[64,64] ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping, Sequence

from oct_foundation import io
from oct_foundation.experiments.cli import parse_sets
from oct_foundation.experiments.report import markdown_table, plot_curves, write_csv
from oct_foundation.experiments.runner import BundleRun, BundleRunner

__all__ = ["VAE_BUNDLE", "COLUMNS", "train_arm", "table_row", "write_outputs", "compare_vae", "main"]

VAE_BUNDLE = "oct_latent_diffusion"
COLUMNS = ["init", "mse_epoch1", "epochs_to_threshold", "best_mse", "final_mse", "final_psnr", "final_ssim", "epochs"]


def train_arm(runner: BundleRunner, init: str, pretrained: str, dataset_dir: str, run_dir: str, epochs: int,
              threshold: float, overrides: Mapping[str, Any]) -> dict:
    """Train one autoencoder through the bundle; its validation summary with ``init`` added."""
    out_dir = io.join(run_dir, "run")
    runner(BundleRun(VAE_BUNDLE, run_dir, configs=("train_autoencoder.json",), overrides={
        "bundle_root": run_dir, "dataset_dir": dataset_dir, "output_dir": out_dir, "num_epochs": int(epochs),
        "val_interval": 1, "mse_threshold": float(threshold), "pretrained_autoencoder": pretrained,
        **dict(overrides)}))
    summary = io.load_json(io.join(out_dir, "validation_summary.json"))
    summary["init"] = init
    return summary


def table_row(summary: Mapping[str, Any]) -> dict:
    hist = sorted(summary["history"], key=lambda r: r["epoch"])
    last = hist[-1] if hist else {}
    first = next((r for r in hist if r["epoch"] == 1), None)
    reached = summary.get("epochs_to_threshold")
    return {
        "init": summary["init"],
        "mse_epoch1": first["val_mse"] if first else None,
        "epochs_to_threshold": reached if reached is not None else "not reached",
        "best_mse": summary.get("best_value"),
        "final_mse": last.get("val_mse"),
        "final_psnr": last.get("val_psnr"),
        "final_ssim": last.get("val_ssim"),
        "epochs": len(hist),
    }


def write_outputs(summaries: Sequence[Mapping[str, Any]], out: str, threshold: float, note: str = "") -> list[dict]:
    """CSV, Markdown table and convergence plots of the arms; returns the table rows."""
    rows = [table_row(s) for s in summaries]
    io.makedirs(out)
    write_csv(rows, io.join(out, "compare_vae.csv"), COLUMNS)
    md = ["# Autoencoder: from scratch vs pretrained initialisation", "",
          f"Validation reconstruction metrics per epoch; threshold for convergence: MSE <= {threshold:g}.", ""]
    if note:
        md += [f"**Note:** {note}", ""]
    md.append(markdown_table(rows, COLUMNS, digits=5))
    io.atomic_write(io.join(out, "compare_vae.md"), "\n".join(md) + "\n")
    for metric, name, label in (("val_mse", "compare_vae.png", "validation MSE"),
                                ("val_psnr", "compare_vae_psnr.png", "validation PSNR (dB)")):
        curves = {s["init"]: [(r["epoch"], r.get(metric)) for r in s["history"]] for s in summaries}
        plot_curves(curves, io.join(out, name), "epoch", label, title=label,
                    threshold=threshold if metric == "val_mse" else None)
    return rows


def compare_vae(dataset_dir: str, out: str, pretrained: str = "", epochs: int = 20, threshold: float = 0.005,
                overrides: Mapping[str, Any] | None = None, runner: BundleRunner | None = None,
                overwrite: bool = False) -> list[dict]:
    """Run the arms and write the outputs (see the module docstring); returns the table rows."""
    if io.exists(io.join(out, "compare_vae.csv")) and not overwrite:
        raise FileExistsError(f"{out}/compare_vae.csv exists; pass overwrite to replace it")
    if pretrained and not io.exists(pretrained):
        raise FileNotFoundError(f"{pretrained}: pretrained weight file not found")
    note = ""
    if not pretrained:
        note = ("no pretrained weights were given, so only the from-scratch run was made; the MAISI weights are "
                "not downloaded (see the bundle's large_files.yml)")
        print(f"WARNING: {note}", file=sys.stderr)
    runner = runner or BundleRunner()
    arms = [("scratch", "")] + ([("pretrained", pretrained)] if pretrained else [])
    summaries = [train_arm(runner, name, path, dataset_dir, io.join(out, name), epochs, threshold, overrides or {})
                 for name, path in arms]
    return write_outputs(summaries, out, threshold, note)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset-dir", required=True, help="folder with datalist.json (training/validation splits)")
    ap.add_argument("--pretrained", default="", help="MAISI / zoo-format autoencoder weights (state dict)")
    ap.add_argument("--out", required=True, help="output folder for the table and plots")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per arm (the same budget for both)")
    ap.add_argument("--mse-threshold", type=float, default=0.005, help="validation MSE that counts as converged")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra train_autoencoder.json overrides (JSON values), e.g. num_channels=[8,8,8]")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing table in --out")
    args = ap.parse_args(argv)
    try:
        rows = compare_vae(args.dataset_dir, args.out, args.pretrained, args.epochs, args.mse_threshold,
                           parse_sets(args.set), overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError) as e:
        ap.error(str(e))
    print(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
