#!/usr/bin/env python
"""Autoencoder from scratch vs initialised from pretrained (MAISI) weights, same data and budget.

Runs ``bundles/oct_latent_diffusion/configs/train_autoencoder.json`` twice through ``monai.bundle.run`` (once
with ``pretrained_autoencoder=""``, once with the given weight file), then writes to ``--out``:
``compare_vae.csv`` and ``compare_vae.md`` (reconstruction MSE after the first epoch, epochs until the validation
MSE reaches ``--mse-threshold``, best/final MSE, PSNR and SSIM) and ``compare_vae.png`` (validation MSE and PSNR
per epoch). Without ``--pretrained`` only the scratch run is made and the table says that no pretrained weights
were given.

    python scripts/compare_vae.py --dataset-dir DATA --pretrained models/autoencoder.pt --out results/vae \
        --epochs 20 [--set num_frames=16 --set image_size=[64,64] ...]
"""
from __future__ import annotations

import argparse
import ast
import csv
import io as _pyio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation import io  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "oct_latent_diffusion"
COLUMNS = ["init", "mse_epoch1", "epochs_to_threshold", "best_mse", "final_mse", "final_psnr", "final_ssim", "epochs"]


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def train_once(init: str, pretrained: str, dataset_dir: str, run_dir: str, epochs: int, threshold: float,
               overrides: dict) -> dict:
    """Train one autoencoder through the bundle and return its validation summary."""
    from monai.bundle import run

    run(config_file=str(BUNDLE / "configs" / "train_autoencoder.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        bundle_root=run_dir, dataset_dir=dataset_dir, output_dir=run_dir + "/run", num_epochs=epochs,
        val_interval=1, mse_threshold=threshold, pretrained_autoencoder=pretrained, **overrides)
    summary = io.load_json(run_dir + "/run/validation_summary.json")
    summary["init"] = init
    return summary


def table_row(summary: dict) -> dict:
    hist = sorted(summary["history"], key=lambda r: r["epoch"])
    last = hist[-1] if hist else {}
    first = next((r for r in hist if r["epoch"] == 1), None)
    return {
        "init": summary["init"],
        "mse_epoch1": first["val_mse"] if first else float("nan"),
        "epochs_to_threshold": summary["epochs_to_threshold"] if summary["epochs_to_threshold"] is not None else "not reached",
        "best_mse": summary["best_value"],
        "final_mse": last.get("val_mse", float("nan")),
        "final_psnr": last.get("val_psnr", float("nan")),
        "final_ssim": last.get("val_ssim", float("nan")),
        "epochs": len(hist),
    }


def _fmt(v) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def write_outputs(summaries: list[dict], out: str, threshold: float, note: str) -> list[dict]:
    """CSV, Markdown table and curve plot of the runs; returns the table rows."""
    rows = [table_row(s) for s in summaries]
    io.makedirs(out)
    buf = _pyio.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    io.atomic_write(io.join(out, "compare_vae.csv"), buf.getvalue())
    md = ["# Autoencoder: from scratch vs pretrained initialisation", "",
          f"Validation reconstruction metrics per epoch; threshold for convergence: MSE <= {threshold:g}.", ""]
    if note:
        md += [f"**Note:** {note}", ""]
    md += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    io.atomic_write(io.join(out, "compare_vae.md"), "\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for s in summaries:
        hist = sorted(s["history"], key=lambda r: r["epoch"])
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r.get("val_mse", float("nan")) for r in hist], marker="o", label=s["init"])
        axes[1].plot(ep, [r.get("val_psnr", float("nan")) for r in hist], marker="o", label=s["init"])
    axes[0].axhline(threshold, color="gray", linestyle="--", linewidth=1, label="threshold")
    axes[0].set(xlabel="epoch", ylabel="validation MSE", yscale="log", title="reconstruction MSE")
    axes[1].set(xlabel="epoch", ylabel="validation PSNR (dB)", title="PSNR")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with io.atomic_output(io.join(out, "compare_vae.png")) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset-dir", required=True, help="folder with datalist.json (training/validation splits)")
    ap.add_argument("--pretrained", default="", help="MAISI / zoo-format autoencoder weights (state dict)")
    ap.add_argument("--out", required=True, help="output folder for the table and plot")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per run (the same budget for both)")
    ap.add_argument("--mse-threshold", type=float, default=0.005, help="validation MSE that counts as converged")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra train_autoencoder.json overrides (Python literals), e.g. num_channels=[8,8,8]")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing table in --out")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _value(v.strip())
    if io.exists(io.join(args.out, "compare_vae.csv")) and not args.overwrite:
        ap.error(f"{args.out}/compare_vae.csv exists; pass --overwrite to replace it")
    if args.pretrained and not io.exists(args.pretrained):
        ap.error(f"{args.pretrained}: pretrained weight file not found")
    note = ""
    if not args.pretrained:
        note = ("no pretrained weights were given (--pretrained), so only the from-scratch run was made; "
                "the MAISI weights are not downloaded by this script (see the bundle's large_files.yml)")
        print(f"WARNING: {note}", file=sys.stderr)
    runs = [("scratch", "")] + ([("pretrained", args.pretrained)] if args.pretrained else [])
    summaries = [train_once(name, path, args.dataset_dir, io.join(args.out, name), args.epochs,
                            args.mse_threshold, overrides) for name, path in runs]
    rows = write_outputs(summaries, args.out, args.mse_threshold, note)
    print(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
