"""The demo's closing summary reads what the bundles write (file names and fields as the bundles produce them)."""
import json

import numpy as np

from oct_foundation.experiments.demo_summary import summarise
from oct_foundation.metrics import SegmentationReport, classification_metrics, save_classification_report


def _classification(tmp_path, src, y, scores):
    from oct_foundation.engines.reports import ClassificationReportHandler

    d = tmp_path / f"classification_{src}" / "runs" / "eval"
    h = ClassificationReportHandler(str(d), num_classes=3, class_names=["normal", "fluid", "drusen"],
                                    from_logits=False)
    for i, (label, s) in enumerate(zip(y, scores)):
        h.update({"pred": s, "label": label}, {"device": "AB"[i % 2], "case_id": f"case_{i:02d}"})
    h.save(h.compute())


def _segmentation(tmp_path, src, labels, preds):
    import torch

    d = tmp_path / f"segmentation_{src}" / "runs" / "eval"
    d.mkdir(parents=True)
    rep = SegmentationReport(3)
    rep.update(torch.as_tensor(preds), torch.as_tensor(labels), case_ids=[f"case_{i:02d}" for i in range(len(labels))])
    rep.save(str(d / "segmentation_metrics.json"), str(d / "segmentation_metrics.csv"))


def test_summary_table_and_paired_verdicts(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    _classification(tmp_path, "pretrained", y, np.eye(3)[y] * 0.8 + 0.1)  # perfect
    _classification(tmp_path, "random", y, rng.dirichlet(np.ones(3), size=y.size))  # chance
    labels = rng.integers(0, 3, size=(36, 1, 2, 6, 6))
    noisy = np.where(rng.random(labels.shape) < 0.5, rng.integers(0, 3, size=labels.shape), labels)
    _segmentation(tmp_path, "pretrained", labels, noisy)  # worse
    _segmentation(tmp_path, "random", labels, labels)  # perfect
    text = summarise(str(tmp_path))
    rows = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in text.splitlines() if ln.startswith("| pretrained")
            or ln.startswith("| random")}
    assert [v.strip() for v in rows["random"][:2]] == ["1.000", "1.000"]  # random: perfect segmentation
    assert [v.strip() for v in rows["pretrained"][2:]] == ["1.000", "1.000", "1.000"]  # pretrained: perfect probe
    assert "classification 36 volumes" in text and "segmentation 36 volumes" in text
    assert "- classification AUROC: pretrained better" in text
    assert "- segmentation mean Dice: random init better" in text
    assert "Pretrained beats random init on 2 of 3 comparisons (classification AUROC, classification accuracy);" \
           " random init is better on 1 (segmentation mean Dice)." in text
    assert (tmp_path / "summary.md").read_text() == text
    # the per-case probabilities the comparison reads are also a CSV next to the report
    cases = (tmp_path / "classification_random" / "runs" / "eval" / "classification_cases.csv").read_text()
    assert cases.splitlines()[0] == "case,group,label,predicted,prob_normal,prob_fluid,prob_drusen"


def test_segmentation_baseline_row_and_verdict(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(12, 1, 2, 6, 6))
    noisy = np.where(rng.random(labels.shape) < 0.5, rng.integers(0, 3, size=labels.shape), labels)
    _segmentation(tmp_path, "pretrained", labels, noisy)
    _segmentation(tmp_path, "random", labels, noisy)
    _segmentation(tmp_path, "unet", labels, labels)  # the supervised baseline: perfect
    text = summarise(str(tmp_path))
    row = [ln for ln in text.splitlines() if ln.startswith("| UNet baseline (no pretraining) |")]
    assert len(row) == 1 and [v.strip() for v in row[0].split("|")[2:-1]] == ["1.000", "1.000", "n/a", "n/a", "n/a"]
    assert "- segmentation mean Dice, frozen pretrained encoder minus the UNet baseline: UNet baseline better" in text
    assert "- segmentation mean Dice, frozen random encoder minus the UNet baseline: UNet baseline better" in text


def test_pretraining_loss_and_collapse_monitor_lines(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "pretrain" / "runs" / "tensorboard"))
    for epoch, (loss, rt, rc) in enumerate([(0.8, 10.0, 9.0), (0.4, 9.5, 3.0), (0.2, 9.0, 2.25)], start=1):
        w.add_scalar("train/epoch_loss", loss, epoch)
        w.add_scalar("collapse/target_effective_rank", rt, epoch)
        w.add_scalar("collapse/context_effective_rank", rc, epoch)
        for enc, k in (("target", 1.0), ("context", 0.5)):
            w.add_scalar(f"collapse/{enc}_rankme", 60.0 * k / epoch, epoch)
            w.add_scalar(f"collapse/{enc}_pooled_rankme", 30.0 * k / epoch, epoch)
            w.add_scalar(f"collapse/{enc}_min_feature_std", 0.03 * k / epoch, epoch)
    w.close()
    text = summarise(str(tmp_path))
    assert "epoch loss 0.8000 -> 0.2000 over 3 epochs" in text
    assert "target 10.0 -> 9.0, context 9.0 -> 2.2" in text
    assert "target 20.0 / 10.0, std 0.0100; context 10.0 / 5.0, std 0.0050" in text


def test_identical_encoders_give_no_clear_difference(tmp_path):
    y = np.repeat([0, 1, 2], 4)
    scores = np.random.default_rng(1).dirichlet(np.ones(3), size=y.size)
    for src in ("pretrained", "random"):
        _classification(tmp_path, src, y, scores)
    text = summarise(str(tmp_path))
    assert "- classification AUROC: no clear difference (difference +0.000" in text
    assert "Pretrained beats random init on 0 of 2 comparisons; random init is better on 0." in text


def test_older_reports_without_cases_still_tabulate(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2])
    for src, scores in (("pretrained", np.eye(3)[y]), ("random", np.full((6, 3), 1 / 3))):
        d = tmp_path / f"classification_{src}" / "runs" / "eval"
        d.mkdir(parents=True)
        report = classification_metrics(y, scores, groups=["A", "B"] * 3, num_classes=3)
        save_classification_report(report, str(d / "classification_metrics.json"), str(d / "classification_metrics.csv"))
    seg = tmp_path / "segmentation" / "runs" / "eval"
    seg.mkdir(parents=True)
    (seg / "segmentation_metrics.json").write_text(json.dumps({"dice_mean": 0.5, "iou_mean": 0.25, "n_cases": 6}))
    text = summarise(str(tmp_path))
    assert "| pretrained | 0.500 | 0.250 | 1.000 | 1.000 | 1.000 |" in text
    assert "Paired bootstrap" not in text  # nothing per case to pair


def test_feature_quality_table_from_the_embedding_outputs(tmp_path):
    import torch

    from oct_foundation.engines.batch_inference import anonymous_id

    rng = np.random.default_rng(0)
    cohort = tmp_path / "cohort"
    (cohort / "images").mkdir(parents=True)
    items = {split: [{"image": f"images/{split}_{i:02d}.nii.gz", "class": i % 3} for i in range(n)]
             for split, n in (("training", 12), ("validation", 3), ("test", 9))}
    (cohort / "datalist.json").write_text(json.dumps(items))
    centres = rng.normal(size=(3, 16)) * 5
    for folder, separable in (("embeddings", True), ("embeddings_random", False)):
        (tmp_path / folder).mkdir()
        for split in ("training", "test"):
            for it in items[split]:
                v = centres[it["class"]] + rng.normal(size=16) * 0.1 if separable else rng.normal(size=16)
                path = tmp_path / folder / f"{anonymous_id(str(cohort / it['image']))}_embedding.pt"
                torch.save(torch.tensor(v, dtype=torch.float32), path)
    text = summarise(str(tmp_path))
    assert "the 12 training volumes as the bank, k=12" in text and "the 9 test volumes as queries" in text
    assert "| pretrained | 1.000 |" in text  # class clusters: every neighbour vote is right
    random_row = next(line for line in text.splitlines() if line.startswith("| random |"))
    assert float(random_row.split("|")[2]) < 0.9
    assert "Linear CKA between the pretrained and the random-init encoder's test features" in text


def test_segmentation_overlay_draws_the_reference_chosen_bscan(tmp_path):
    """The overlay reads the segmentation bundle's inference outputs (``predictions/summary.csv`` rows by datalist
    position, ``<id>_seg.nii.gz`` maps) and shows the test B-scan with the most reference fluid (class 9)."""
    import nibabel as nib
    import torch

    from oct_foundation.experiments.demo_summary import segmentation_overlay

    cohort = tmp_path / "cohort"
    for sub in ("images", "labels"):
        (cohort / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    tests = []
    for i in range(3):
        lab = np.zeros((4, 8, 10), np.uint8)
        lab[:, 2:6] = 3
        if i == 1:
            lab[2, 3:5, 4:8] = 9  # the most fluid: case 1, B-scan 3
            lab[0, 3, 4] = 9
        nib.save(nib.Nifti1Image(rng.random(lab.shape).astype(np.float32), np.eye(4)), cohort / f"images/c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), cohort / f"labels/c{i}.nii.gz")
        tests.append({"image": f"images/c{i}.nii.gz", "label": f"labels/c{i}.nii.gz", "case_id": f"case_{i}"})
    (cohort / "datalist.json").write_text(json.dumps({"training": [], "test": tests}))
    names = ["NFL", "GCL_IPL", "INL", "OPL", "ONL", "RPE", "choroid", "sclera", "fluid"]
    pred_dir = tmp_path / "segmentation_pretrained" / "predictions"
    pred_dir.mkdir(parents=True)
    rows = ["id,position,status,reason,label_map"]
    for i in range(3):
        nib.save(nib.Nifti1Image(np.full((4, 8, 10), 3, np.uint8), np.eye(4)), pred_dir / f"id{i}_seg.nii.gz")
        rows.append(f"id{i},{i},done,,id{i}_seg.nii.gz")
    (pred_dir / "summary.csv").write_text("\n".join(rows) + "\n")
    rep = SegmentationReport(10, layer_names=names)
    labels = np.stack([np.asarray(nib.load(cohort / t["label"]).dataobj) for t in tests])[:, None]
    rep.update(torch.as_tensor(np.full_like(labels, 3)), torch.as_tensor(labels), case_ids=[t["case_id"] for t in tests])
    d = tmp_path / "segmentation_pretrained" / "runs" / "eval"
    d.mkdir(parents=True)
    rep.save(str(d / "segmentation_metrics.json"), str(d / "segmentation_metrics.csv"))
    path, shown = segmentation_overlay(str(tmp_path))
    assert shown == "case_1, B-scan 3 of 4"
    assert path == str(tmp_path / "segmentation_overlay.png") and (tmp_path / "segmentation_overlay.png").stat().st_size
    assert "Segmentation overlay of one held-out B-scan (case_1, B-scan 3 of 4" in summarise(str(tmp_path))
