"""The demo's closing summary reads what the bundles write (file names and fields as the bundles produce them)."""
import json

from oct_foundation.demo_summary import summarise
from oct_foundation.metrics import save_classification_report, classification_metrics


def test_summary_puts_pretrained_next_to_random(tmp_path):
    import numpy as np

    y = np.array([0, 1, 2, 0, 1, 2])
    for src, scores in (("pretrained", np.eye(3)[y]), ("random", np.full((6, 3), 1 / 3))):
        d = tmp_path / f"classification_{src}" / "runs" / "eval"
        d.mkdir(parents=True)
        report = classification_metrics(y, scores, groups=["A", "B"] * 3, num_classes=3)
        save_classification_report(report, str(d / "classification_metrics.json"), str(d / "classification_metrics.csv"))
    seg = tmp_path / "segmentation" / "runs" / "eval"
    seg.mkdir(parents=True)
    (seg / "segmentation_metrics.json").write_text(json.dumps({"dice_mean": 0.5, "iou_mean": 0.25}))
    text = summarise(str(tmp_path))
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| pretrained") or ln.startswith("| random")}
    assert "| 1.000 | 1.000 | 1.000 |" in rows["pretrained"]
    assert rows["random"].split("|")[2].strip() != "1.000"
    assert "mean Dice 0.500, mean IoU 0.250" in text
    assert (tmp_path / "summary.md").read_text() == text
    assert "Pretrained beats random init on 3 of 3 metrics" in text
