"""Print (and write to ``<out>/summary.md``) what ``scripts/demo.sh`` produced, reading the bundles' outputs.

    python -m oct_foundation.experiments.demo_summary demo_output
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


def epoch_scalars(run_dir: str, tag: str = "train/epoch_loss") -> list[float]:
    """The ``tag`` scalars from the TensorBoard files under ``run_dir``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for ev in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(ev, size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return [values[k] for k in sorted(values)]


def epoch_losses(run_dir: str) -> list[float]:
    """``train/epoch_loss`` scalars from the TensorBoard files under ``run_dir``, in epoch order."""
    return epoch_scalars(run_dir, "train/epoch_loss")


#: the supervised segmentation baseline's row (``--model unet``: MONAI UNet, no pretraining)
BASELINE = "UNet baseline (no pretraining)"
DICE = "segmentation mean Dice"
#: the smallest difference counted as one model being better (a smaller one, even when its interval excludes 0, is
#: reported as negligible): a hundredth of Dice overlap; 0.02 AUROC or accuracy (under one test case in 36)
MIN_EFFECT = {DICE: 0.01, "classification AUROC": 0.02, "classification accuracy": 0.02}


def _seg_report(out: str, src: str):
    """``src``: ``pretrained``, ``random`` (frozen encoders) or ``unet`` (the supervised baseline)."""
    names = [f"segmentation_{src}"] + (["segmentation"] if src == "pretrained" else [])  # older demo folders
    for name in names:
        rep = _json(os.path.join(out, name, "runs", "eval", "segmentation_metrics.json"))
        if rep:
            return rep
    return None


def _case_dice(report) -> dict[str, float]:
    """Mean Dice over the layers of each case (NaN layers, absent in both maps, left out)."""
    import numpy as np

    out = {}
    for case in report.get("cases") or []:
        vals = [v for k, v in case.items() if k.startswith("dice_") and v is not None]
        vals = [float(v) for v in vals if not math.isnan(float(v))]
        if vals:
            out[str(case["case"])] = float(np.mean(vals))
    return out


def _case_probs(report, names) -> dict[str, tuple[int, list[float]]]:
    return {str(c["case"]): (int(c["label"]), [float(c[f"prob_{n}"]) for n in names])
            for c in report.get("cases") or []}


def comparison_lines(out: str) -> list[str]:
    """The pretrained-vs-random table and the paired bootstrap verdicts, from the bundles' evaluation reports."""
    import numpy as np

    from oct_foundation.metrics.comparison import compare_classifiers, compare_per_case, outcome, verdict

    seg = {src: _seg_report(out, src) for src in ("pretrained", "random")}
    clf = {src: _json(os.path.join(out, f"classification_{src}", "runs", "eval", "classification_metrics.json"))
           for src in ("pretrained", "random")}
    rows = []
    for src in ("pretrained", "random"):
        s, c = seg[src] or {}, (clf[src] or {}).get("pooled", {})
        if seg[src] or clf[src]:
            rows.append(f"| {src} | {_fmt(s.get('dice_mean'))} | {_fmt(s.get('iou_mean'))} | {_fmt(c.get('accuracy'))}"
                        f" | {_fmt(c.get('macro_f1'))} | {_fmt(c.get('auroc'))} |")
    seg["unet"] = _seg_report(out, "unet")
    if seg["unet"]:
        s = seg["unet"]
        rows.append(f"| {BASELINE} | {_fmt(s.get('dice_mean'))} | {_fmt(s.get('iou_mean'))} | n/a | n/a | n/a |")
    if not rows:
        return []
    n_seg = (seg["pretrained"] or seg["random"] or {}).get("n_cases")
    n_clf = ((clf["pretrained"] or clf["random"] or {}).get("pooled") or {}).get("n")
    lines = ["", f"Pretrained vs random-init encoder of the same shape (same head, data and seed; test split:"
             f" segmentation {n_seg if n_seg is not None else 'n/a'} volumes on full depth, frozen encoder; "
             f"classification {n_clf if n_clf is not None else 'n/a'} volumes, linear probe on frozen features):", "",
             "| encoder | seg. mean Dice | seg. mean IoU | accuracy | macro-F1 | AUROC |",
             "|---|---|---|---|---|---|", *rows, ""]
    verdicts = {}
    if seg["pretrained"] and seg["random"]:
        a, b = _case_dice(seg["pretrained"]), _case_dice(seg["random"])
        common = sorted(set(a) & set(b))
        if len(common) >= 2:
            r = compare_per_case([a[k] for k in common], [b[k] for k in common])
            verdicts["segmentation mean Dice"] = r
    if clf["pretrained"] and clf["random"]:
        names = clf["pretrained"].get("class_names") or []
        a, b = _case_probs(clf["pretrained"], names), _case_probs(clf["random"], names)
        common = sorted(set(a) & set(b))
        if len(common) >= 2:
            y = np.array([a[k][0] for k in common])
            res = compare_classifiers(y, [a[k][1] for k in common], [b[k][1] for k in common],
                                      metrics=("auroc", "accuracy"), num_classes=len(names))
            verdicts["classification AUROC"] = res["auroc"]
            verdicts["classification accuracy"] = res["accuracy"]
    if verdicts:
        lines.append("Paired bootstrap over test volumes (pretrained minus random, 2000 resamples; a difference "
                     "counts when its interval excludes 0 and it is at least "
                     + ", ".join(f"{v:g} {k}" for k, v in MIN_EFFECT.items()) + "):")
        lines.append("")
        lines += [f"- {name}: {verdict(r, 'pretrained', 'random init', MIN_EFFECT.get(name, 0.0))}"
                  for name, r in verdicts.items()]
        wins = [n for n, r in verdicts.items() if outcome(r, MIN_EFFECT.get(n, 0.0)) == "a"]
        losses = [n for n, r in verdicts.items() if outcome(r, MIN_EFFECT.get(n, 0.0)) == "b"]
        lines += ["", f"Pretrained beats random init on {len(wins)} of {len(verdicts)} comparisons"
                  f"{' (' + ', '.join(wins) + ')' if wins else ''}; random init is better on {len(losses)}"
                  f"{' (' + ', '.join(losses) + ')' if losses else ''}."
                  + ("" if len(wins) == len(verdicts) else " See docs/scientific_check.md for what is known.")]
    if seg["unet"]:
        base = _case_dice(seg["unet"])
        extra = []
        for src in ("pretrained", "random"):
            if seg[src]:
                a = _case_dice(seg[src])
                common = sorted(set(a) & set(base))
                if len(common) >= 2:
                    r = compare_per_case([a[k] for k in common], [base[k] for k in common])
                    extra.append(f"- segmentation mean Dice, frozen {src} encoder minus the UNet baseline: "
                                 f"{verdict(r, f'{src} encoder', 'UNet baseline', MIN_EFFECT[DICE])}")
        if extra:
            lines += ["", "Against the supervised baseline (MONAI UNet trained from scratch on the same split, "
                      "paired bootstrap over test volumes):", "", *extra]
    return lines


#: the arms drawn in the overlay, in order: (folder under the demo output, panel name)
OVERLAY_ARMS = (("segmentation_pretrained", "frozen pretrained encoder"), ("segmentation_random", "frozen random encoder"),
                ("segmentation_unet", "UNet baseline"))


def segmentation_overlay(out: str, path: str | None = None) -> tuple[str, str] | None:
    """Draw one held-out B-scan with its reference layers and each model's prediction (the segmentation bundle's
    inference outputs under ``<arm>/predictions``) -> ``(png path, the case and B-scan shown)``, or None.

    The B-scan shown is chosen from the reference alone, so it does not favour any model: the test case and slice
    with the most fluid (the hardest class), else the middle B-scan of the first test case."""
    import numpy as np

    from oct_foundation.data.readers import load_oct
    from oct_foundation.experiments.report import plot_segmentation_overlay

    datalist = _json(os.path.join(out, "cohort", "datalist.json"))
    tests = (datalist or {}).get("test") or []
    arms = []
    for folder, name in OVERLAY_ARMS:
        summary = os.path.join(out, folder, "predictions", "summary.csv")
        if os.path.exists(summary):
            with open(summary) as f:
                rows = {int(r["position"]): r for r in csv.DictReader(f) if r.get("status") in ("done", "skipped")}
            arms.append((folder, name, rows))
    if not tests or not arms:
        return None
    report = _seg_report(out, "pretrained") or _seg_report(out, "unet") or {}
    names = ["background"] + list(report.get("layers") or [])
    fluid = names.index("fluid") if "fluid" in names else None
    base = os.path.join(out, "cohort")
    best = None  # (fluid voxels, position, slice)
    for pos, item in enumerate(tests):
        if fluid is None or "label" not in item:
            break
        lab = np.asarray(load_oct(os.path.join(base, item["label"])))[0]
        per_slice = (lab == fluid).reshape(lab.shape[0], -1).sum(1)
        if best is None or per_slice.max() > best[0]:
            best = (int(per_slice.max()), pos, int(per_slice.argmax()))
    if best is None or best[0] == 0:
        first = np.asarray(load_oct(os.path.join(base, tests[0]["image"])))
        best = (0, 0, first.shape[1] // 2)
    _, pos, z = best
    item = tests[pos]
    case = str(item.get("case_id", f"test case {pos}"))
    image = np.asarray(load_oct(os.path.join(base, item["image"])))[0]
    panels = {}
    if "label" in item:
        panels["reference"] = np.asarray(load_oct(os.path.join(base, item["label"])))[0][z].astype(np.int64)
    for folder, name, rows in arms:
        row = rows.get(pos)
        if not row:
            continue
        pred = np.asarray(load_oct(os.path.join(out, folder, "predictions", row["label_map"])))[0]
        if pred.shape != image.shape:
            raise ValueError(f"{folder}: prediction {row['label_map']} has shape {pred.shape}, the image {image.shape}")
        rep = _seg_report(out, folder.split("_", 1)[1]) or {}
        dice = _case_dice(rep).get(case)
        panels[f"{name} (case Dice {dice:.3f})" if dice is not None else name] = pred[z].astype(np.int64)
    path = path or os.path.join(out, "segmentation_overlay.png")
    shown = f"{case}, B-scan {z + 1} of {image.shape[0]}"
    plot_segmentation_overlay(image[z], panels, path, names, title=f"Layer segmentation, held-out {shown}")
    return path, shown


def _embeddings(folder: str, ids: list[str]):
    """``[len(ids), E]`` embeddings of the batch-inference outputs ``<id>_embedding.pt`` in ``folder``, or None."""
    import torch

    rows = []
    for i in ids:
        path = os.path.join(folder, f"{i}_embedding.pt")
        if not os.path.exists(path):
            return None
        rows.append(torch.load(path, map_location="cpu", weights_only=True).float().reshape(-1))
    return torch.stack(rows) if rows else None


def feature_lines(out: str) -> list[str]:
    """Frozen-feature quality on held-out volumes from the demo's embeddings of the pretrained encoder and of a
    random-init encoder of the same shape: kNN top-1 (training split as the bank, test split as queries), RankMe
    and the smallest per-dimension std of the pooled features (the collapse criteria, on held-out volumes), and
    linear CKA between the two encoders' features."""
    import torch

    from oct_foundation.engines.batch_inference import anonymous_id
    from oct_foundation.metrics.representation import effective_rank, knn_top1, linear_cka

    datalist = _json(os.path.join(out, "cohort", "datalist.json"))
    if not datalist or any("class" not in it for name in ("training", "test") for it in datalist.get(name) or []):
        return []  # kNN needs a class for every bank and query volume
    base = os.path.join(out, "cohort")

    def split(name):
        items = datalist.get(name) or []
        return [anonymous_id(os.path.join(base, it["image"])) for it in items], [int(it["class"]) for it in items]

    (bank_ids, bank_y), (test_ids, test_y) = split("training"), split("test")
    feats = {}
    for arm, folder in (("pretrained", "embeddings"), ("random", "embeddings_random")):
        bank, test = _embeddings(os.path.join(out, folder), bank_ids), _embeddings(os.path.join(out, folder), test_ids)
        if bank is not None and test is not None and len(test) >= 2:
            feats[arm] = (bank, test)
    if not feats:
        return []
    k = min(20, len(bank_ids))
    lines = ["", f"Frozen features of held-out volumes (pooled target-encoder embeddings at full depth; kNN: the "
             f"{len(bank_ids)} training volumes as the bank, k={k}, cosine, the {len(test_ids)} test volumes as "
             f"queries; chance {1 / max(1, len(set(test_y))):.2f}):", "",
             "| encoder | kNN top-1 | RankMe (of the width) | min per-dim std |", "|---|---|---|---|"]
    for arm, (bank, test) in feats.items():
        acc = knn_top1(bank, torch.tensor(bank_y), test, torch.tensor(test_y), k=k)
        rank = effective_rank(test, method="rankme")
        lines.append(f"| {arm} | {acc:.3f} | {rank:.1f} of {test.shape[1]} | {float(test.std(0).min()):.4f} |")
    if len(feats) == 2:
        cka = linear_cka(feats["pretrained"][1], feats["random"][1])
        lines += ["", f"Linear CKA between the pretrained and the random-init encoder's test features: {cka:.3f} "
                      "(1 = the same representation up to rotation and scale)."]
    return lines


def ablation_lines(out: str) -> list[str]:
    """The demo's depth-subsampling ablation (``<out>/ablation``, written by ``scripts/ablate_depth.py``): one row per
    cell, and the paired bootstrap of the smallest against the largest ``d_target`` on the same test volumes, so
    a reader sees whether the curve's differences are more than noise."""
    import numpy as np

    from oct_foundation.metrics.comparison import compare_classifiers, verdict

    path = os.path.join(out, "ablation", "results.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f)]
    done = sorted((r for r in rows if r.get("status") == "done"), key=lambda r: (r["strategy"], int(r["d_target"])))

    def num(r, k, nd=3):
        try:
            return _fmt(float(r.get(k)), nd)
        except (TypeError, ValueError):
            return "n/a"

    lines = ["", f"Depth-subsampling ablation ({len(done)} of {len(rows)} cells done; one encoder pretrained per "
             "d_target, the same linear probe, scored on the test split at full depth; "
             f"{os.path.join(out, 'ablation', 'metric_vs_d_target.png')}):", "",
             "| d_target | strategy | AUROC | accuracy | pretraining tokens | pretraining s | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for r in done:
        lines.append(f"| {r['d_target']} | {r['strategy']} | {num(r, 'auroc')} | {num(r, 'val_acc')} | "
                     f"{num(r, 'tokens_seen', 0)} | {num(r, 'pretrain_train_s', 0)} | {num(r, 'tokens_per_s', 0)} |")
    failed = [r for r in rows if r.get("status") != "done"]
    lines += [f"- cell d_target={r.get('d_target')} {r.get('strategy')}: {r.get('status')} {r.get('error', '')}"
              for r in failed]
    if len(done) >= 2:
        lo, hi = done[0], max(done, key=lambda r: int(r["d_target"]))
        reps = [_json(os.path.join(r["cell_dir"], "classification", "eval", "classification_metrics.json"))
                for r in (lo, hi)]
        if all(reps):
            names = reps[0].get("class_names") or []
            a, b = _case_probs(reps[0], names), _case_probs(reps[1], names)
            common = sorted(set(a) & set(b))
            if len(common) >= 2 and names:
                res = compare_classifiers(np.array([a[k][0] for k in common]), [a[k][1] for k in common],
                                          [b[k][1] for k in common], metrics=("auroc",), num_classes=len(names))
                first, last = f"d_target {lo['d_target']}", f"d_target {hi['d_target']}"
                said = verdict(res["auroc"], first, last, MIN_EFFECT["classification AUROC"])
                lines += ["", f"- AUROC, {first} minus {last} (paired bootstrap over the test volumes): {said}"]
    return lines


def summarise(out: str) -> str:
    lines = [f"# oct-foundation demo results ({out})", ""]
    losses = epoch_losses(os.path.join(out, "pretrain"))
    if losses:
        lines.append(f"- V-JEPA pretraining: epoch loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs"
                     f" ({out}/pretrain/models/model.pt)")
    ranks = {enc: epoch_scalars(os.path.join(out, "pretrain"), f"collapse/{enc}_effective_rank")
             for enc in ("target", "context")}
    if all(ranks.values()):
        lines.append("- Token effective rank (collapse monitor; a random-init encoder scores about 8-12): target "
                     f"{ranks['target'][0]:.1f} -> {ranks['target'][-1]:.1f}, context {ranks['context'][0]:.1f} -> "
                     f"{ranks['context'][-1]:.1f}")
    last = {}
    for name in ("rankme", "pooled_rankme", "min_feature_std"):
        for enc in ("target", "context"):
            v = epoch_scalars(os.path.join(out, "pretrain"), f"collapse/{enc}_{name}")
            if v:
                last[f"{enc}_{name}"] = v[-1]
    if len(last) == 6:
        lines.append("- Collapse monitor at the end (RankMe of tokens / of volume-pooled features; target for a "
                     "healthy run >= 25% of the embedding width; smallest per-dimension std of the pooled features, "
                     f"healthy > 0.01): target {last['target_rankme']:.1f} / {last['target_pooled_rankme']:.1f}, "
                     f"std {last['target_min_feature_std']:.4f}; context {last['context_rankme']:.1f} / "
                     f"{last['context_pooled_rankme']:.1f}, std {last['context_min_feature_std']:.4f}")
    emb = next((p for p in (os.path.join(out, "embeddings", n) for n in ("manifest.csv", "summary.csv")) if os.path.exists(p)), "")
    if os.path.exists(emb):
        rows = list(csv.DictReader(open(emb)))
        ok = sum(r["status"] in ("done", "skipped") for r in rows)
        lines.append(f"- Embeddings: {ok}/{len(rows)} volumes at full depth ({out}/embeddings)")
    for folder, what in (("eval", "random-init small autoencoder, the reference"),
                         ("eval_trained", "the small autoencoder trained in step 7, on volumes it did not see")):
        rec = _json(os.path.join(out, "maisi", folder, "metrics_summary.json"))
        if rec:
            m = rec["metrics"]
            lines.append(f"- MAISI stacked reconstruction ({what}): PSNR {_fmt(m['psnr']['mean'], 2)} dB, SSIM "
                         f"{_fmt(m['ssim']['mean'])}, {rec['evaluated']} inputs ({out}/maisi/{folder})")
    ae = _json(os.path.join(out, "latent_diffusion", "runs", "autoencoder", "validation_summary.json"))
    if ae and ae.get("history"):
        last = ae["history"][-1]
        n = len(glob.glob(os.path.join(out, "latent_diffusion", "samples", "sample_*.nii.gz")))
        lines.append(f"- Latent diffusion: autoencoder validation PSNR {_fmt(last.get('val_psnr'), 2)} dB, SSIM "
                     f"{_fmt(last.get('val_ssim'))} after {last.get('epoch')} epochs; {n} decoded samples "
                     f"({out}/latent_diffusion/samples)")
    lines += comparison_lines(out)
    overlay = segmentation_overlay(out)
    if overlay:
        lines += ["", f"Segmentation overlay of one held-out B-scan ({overlay[1]}; chosen from the reference alone: "
                      f"the slice with the most fluid): {overlay[0]}"]
    lines += feature_lines(out)
    lines += ablation_lines(out)
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
