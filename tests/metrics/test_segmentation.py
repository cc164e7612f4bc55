import csv
import json
import math

import pytest
import torch

from oct_foundation.metrics import SegmentationReport, segmentation_metrics
from oct_foundation.metrics.segmentation import per_case_scores


def _pair():
    """Label 1: reference 8 voxels, prediction 4 of them (+0 extra) -> Dice 2*4/(8+4)=2/3, IoU 4/8=1/2.
    Label 2: reference 4 voxels, prediction 4 voxels overlapping 2 -> Dice 2*2/8=1/2, IoU 2/6=1/3.
    Label 3: absent from both.
    """
    y = torch.zeros(1, 1, 2, 4, 4, dtype=torch.long)
    p = torch.zeros_like(y)
    y[0, 0, :, 0:2, 0:2] = 1  # 8 voxels
    p[0, 0, :, 0:1, 0:2] = 1  # 4 voxels inside
    y[0, 0, 0, 2:4, 2:4] = 2  # 4 voxels
    p[0, 0, 0, 3:4, 2:4] = 2  # 2 voxels overlapping
    p[0, 0, 1, 3:4, 2:4] = 2  # 2 voxels outside
    return p, y


def test_hand_computed_values_and_empty_conventions():
    p, y = _pair()
    s = per_case_scores(p, y, num_classes=4)
    assert s["dice"][0, :2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert s["iou"][0, :2].tolist() == pytest.approx([1 / 2, 1 / 3])
    assert math.isnan(s["dice"][0, 2]) and math.isnan(s["iou"][0, 2])  # absent from both -> NaN
    one = per_case_scores(p, y, num_classes=4, empty="one")
    assert one["dice"][0, 2] == 1.0 and one["iou"][0, 2] == 1.0
    # absent from the reference but predicted -> 0 under both conventions
    p2 = p.clone()
    p2[0, 0, 1, 0, 3] = 3
    for empty in ("nan", "one"):
        assert per_case_scores(p2, y, 4, empty=empty)["dice"][0, 2] == 0.0
    # background included: 32 voxels, reference bg = 32-12=20, prediction bg = 32-8=24, overlap = 18
    bg = per_case_scores(p, y, 4, include_background=True)["dice"][0, 0]
    assert float(bg) == pytest.approx(2 * 18 / (20 + 24))


def test_means_over_cases_and_layers():
    p, y = _pair()
    perfect = y.clone()
    res = segmentation_metrics(torch.cat([p, perfect]), torch.cat([y, y]), num_classes=4,
                               layer_names=["bg", "ilm", "rpe", "fluid"])
    assert res["layers"] == ["ilm", "rpe", "fluid"]
    assert res["n_cases"] == 2
    assert res["dice_per_layer"]["ilm"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["iou_per_layer"]["rpe"] == pytest.approx((1 / 3 + 1) / 2)
    assert math.isnan(res["dice_per_layer"]["fluid"])
    assert res["dice_mean"] == pytest.approx(((2 / 3 + 1) / 2 + (1 / 2 + 1) / 2) / 2)
    # [B, D, H, W] maps accepted; float maps rounded
    res2 = segmentation_metrics(p[:, 0].float(), y[:, 0], num_classes=4)
    assert res2["dice_per_layer"]["layer_1"] == pytest.approx(2 / 3)


def test_bad_inputs():
    p, y = _pair()
    with pytest.raises(ValueError, match="values"):
        segmentation_metrics(p, y, num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(p[..., :2], y, num_classes=4)
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics(p, y, num_classes=4, empty="zero")


def test_report_accumulates_any_size_and_saves(tmp_path):
    p, y = _pair()
    rep = SegmentationReport(num_classes=4)
    rep.update(p, y, case_ids=["a"])
    big_y = torch.zeros(1, 1, 5, 6, 7, dtype=torch.long)
    big_y[..., :3, :] = 1
    rep.update(big_y, big_y, case_ids=["b"])  # different size, perfect
    out = rep.save(tmp_path / "seg.json", tmp_path / "seg.csv")
    assert out["dice_per_layer"]["layer_1"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["dice_per_layer"]["layer_2"] == pytest.approx(1 / 2)  # case b: layer 2 absent -> NaN, ignored
    assert [c["case"] for c in out["cases"]] == ["a", "b"]
    js = json.loads((tmp_path / "seg.json").read_text())
    assert js["dice_per_layer"]["layer_3"] is None
    rows = list(csv.DictReader(open(tmp_path / "seg.csv")))
    assert [r["layer"] for r in rows] == ["layer_1", "layer_2", "layer_3", "mean"]
    assert float(rows[-1]["dice"]) == pytest.approx(out["dice_mean"])
