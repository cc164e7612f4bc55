import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from oct_foundation.metrics import classification_metrics, save_classification_report


def _data(n=60, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    dev = np.where(rng.random(n) < 0.5, "A", "B")
    return y, logits, prob, dev


def test_pooled_and_per_device_match_sklearn():
    y, _, prob, dev = _data()
    rep = classification_metrics(y, prob, groups=dev)
    pred = prob.argmax(1)
    assert rep["pooled"]["n"] == 60
    assert rep["pooled"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert rep["pooled"]["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert rep["pooled"]["auroc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert set(rep["per_group"]) == {"A", "B"}
    for d in ("A", "B"):
        s = dev == d
        m = rep["per_group"][d]
        assert m["n"] == int(s.sum())
        assert m["accuracy"] == pytest.approx(accuracy_score(y[s], pred[s]))
        assert m["macro_f1"] == pytest.approx(f1_score(y[s], pred[s], average="macro"))
        assert m["auroc"] == pytest.approx(roc_auc_score(y[s], prob[s], multi_class="ovr", average="macro"))
        assert m["notes"] == []


def test_logits_binary_and_vector_scores():
    y, logits, prob, _ = _data(c=3)
    a = classification_metrics(y, logits, from_logits=True)
    b = classification_metrics(y, prob)
    assert a["pooled"]["auroc"] == pytest.approx(b["pooled"]["auroc"])
    rng = np.random.default_rng(1)
    yb = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * yb + 0.7 * rng.random(40), 0, 1)
    rep = classification_metrics(yb, p1)
    assert rep["num_classes"] == 2
    assert rep["pooled"]["auroc"] == pytest.approx(roc_auc_score(yb, p1))
    assert rep["pooled"]["accuracy"] == pytest.approx(accuracy_score(yb, (p1 > 0.5).astype(int)))


def test_absent_class_in_subgroup_gives_nan_with_note():
    y, _, prob, _ = _data(n=60)
    dev = np.where(y == 2, "A", np.where(np.arange(60) % 2 == 0, "A", "B"))  # class 2 only on device A
    rep = classification_metrics(y, prob, groups=dev)
    b = rep["per_group"]["B"]
    assert math.isnan(b["auroc"]) and math.isnan(b["auroc_per_class"][2])
    assert b["class_counts"][2] == 0
    assert any("absent" in n and "2" in n for n in b["notes"])
    s = dev == "B"
    expected = np.mean([roc_auc_score(y[s] == c, prob[s, c]) for c in (0, 1)])
    assert b["auroc_present"] == pytest.approx(expected)
    assert not math.isnan(rep["per_group"]["A"]["auroc"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="columns"):
        classification_metrics([0, 1], np.ones((2, 3)), num_classes=2)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 3], np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="scores"):
        classification_metrics([0, 1, 1], np.ones((2, 3)) / 3)


def test_report_written_as_json_and_csv(tmp_path, memfs):
    y, _, prob, dev = _data()
    y = np.where(dev == "B", np.minimum(y, 1), y)  # class 2 absent on device B -> NaN in the files
    rep = classification_metrics(y, prob, groups=dev, class_names=["normal", "fluid", "drusen"])
    save_classification_report(rep, tmp_path / "m.json", tmp_path / "m.csv")
    js = json.loads((tmp_path / "m.json").read_text())
    assert js["pooled"]["accuracy"] == pytest.approx(rep["pooled"]["accuracy"])
    assert js["per_group"]["B"]["auroc"] is None
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [r["group"] for r in rows] == ["pooled", "A", "B"]
    assert float(rows[1]["macro_f1"]) == pytest.approx(rep["per_group"]["A"]["macro_f1"])
    assert "auroc_drusen" in rows[0] and rows[2]["notes"]
    save_classification_report(rep, "memory://out/m.json", "memory://out/m.csv")
    assert memfs.exists("/out/m.json") and memfs.exists("/out/m.csv")
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]
