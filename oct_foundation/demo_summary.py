"""Print (and write to ``<out>/summary.md``) what ``scripts/demo.sh`` produced, reading the bundles' outputs.

    python -m oct_foundation.demo_summary demo_output
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import sys


def _json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(v, nd=3):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def epoch_losses(run_dir: str) -> list[float]:
    """``train/epoch_loss`` scalars from the TensorBoard files under ``run_dir``, in epoch order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for ev in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(ev, size_guidance={"scalars": 0})
        acc.Reload()
        if "train/epoch_loss" in acc.Tags().get("scalars", []):
            values.update({e.step: e.value for e in acc.Scalars("train/epoch_loss")})
    return [values[k] for k in sorted(values)]


def summarise(out: str) -> str:
    lines = [f"# oct-foundation demo results ({out})", ""]
    losses = epoch_losses(os.path.join(out, "pretrain"))
    if losses:
        lines.append(f"- V-JEPA pretraining: epoch loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs"
                     f" ({out}/pretrain/models/model.pt)")
    emb = next((p for p in (os.path.join(out, "embeddings", n) for n in ("manifest.csv", "summary.csv")) if os.path.exists(p)), "")
    if os.path.exists(emb):
        rows = list(csv.DictReader(open(emb)))
        ok = sum(r["status"] in ("done", "skipped") for r in rows)
        lines.append(f"- Embeddings: {ok}/{len(rows)} volumes at full depth ({out}/embeddings)")
    rec = _json(os.path.join(out, "maisi", "eval", "metrics_summary.json"))
    if rec:
        m = rec["metrics"]
        lines.append(f"- MAISI stacked reconstruction (random-init small autoencoder): PSNR {_fmt(m['psnr']['mean'], 2)} dB,"
                     f" SSIM {_fmt(m['ssim']['mean'])}, {rec['evaluated']} inputs ({out}/maisi)")
    seg = _json(os.path.join(out, "segmentation", "runs", "eval", "segmentation_metrics.json"))
    if seg:
        lines.append(f"- Layer segmentation (frozen pretrained encoder), full depth: mean Dice {_fmt(seg.get('dice_mean'))},"
                     f" mean IoU {_fmt(seg.get('iou_mean'))} ({out}/segmentation/runs/eval)")
    ae = _json(os.path.join(out, "latent_diffusion", "runs", "autoencoder", "validation_summary.json"))
    if ae and ae.get("history"):
        last = ae["history"][-1]
        n = len(glob.glob(os.path.join(out, "latent_diffusion", "samples", "sample_*.nii.gz")))
        lines.append(f"- Latent diffusion: autoencoder validation PSNR {_fmt(last.get('val_psnr'), 2)} dB, SSIM "
                     f"{_fmt(last.get('val_ssim'))} after {last.get('epoch')} epochs; {n} decoded samples "
                     f"({out}/latent_diffusion/samples)")
    table, pooled = [], {}
    for src in ("pretrained", "random"):
        rep = _json(os.path.join(out, f"classification_{src}", "runs", "eval", "classification_metrics.json"))
        if rep:
            p = pooled[src] = rep["pooled"]
            table.append(f"| {src} | {_fmt(p.get('accuracy'))} | {_fmt(p.get('macro_f1'))} | {_fmt(p.get('auroc'))} |")
    if table:
        lines += ["", "Disease classification, linear probe on frozen features, test split (same probe, data, seed):", "",
                  "| encoder | accuracy | macro-F1 | AUROC |", "|---|---|---|---|", *table]
    if len(pooled) == 2:
        wins = [m for m in ("accuracy", "macro_f1", "auroc")
                if (pooled["pretrained"].get(m) or 0) > (pooled["random"].get(m) or 0)]
        lines += ["", f"Pretrained beats random init on {len(wins)} of 3 metrics ({', '.join(wins) or 'none'})."
                  + ("" if len(wins) == 3 else " See docs/scientific_check.md for what is known about short CPU runs.")]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else "demo_output"
    print()
    print(summarise(out))
    print(f"Everything is under {os.path.abspath(out)} (summary: {os.path.join(os.path.abspath(out), 'summary.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
