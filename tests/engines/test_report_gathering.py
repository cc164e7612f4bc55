"""With several processes each scoring its share of the cases, the classification and segmentation reports
gather every rank's predictions: rank 0's report and every rank's metrics equal those of one process scoring all
cases (two gloo processes on the CPU, real ignite engines, the handlers as the bundles attach them)."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine

N, K, SEG = 10, 3, 3


def _case(i: int) -> dict:
    """Case i: fixed logits and a segmentation with a case-dependent error (so each case scores differently)."""
    g = torch.Generator().manual_seed(i)
    logits = torch.randn(K, generator=g)
    label = torch.zeros(1, 2, 6, 6)
    label[0, :, 2:] = 1
    label[0, :, 4:] = 2
    pred = label.clone()
    pred[0, :, : 1 + i % 4] = 2  # i-dependent error
    return {"pred": logits, "label": torch.tensor(i % K), "seg_pred": pred, "seg_label": label,
            "case_id": f"case_{i:02d}", "device": "A" if i % 2 else "B"}


def _score(out_dir: str, cases: list[int]) -> dict:
    from oct_foundation.engines import ClassificationReportHandler, SegmentationReportHandler

    engine = Engine(lambda e, b: [{k: v for k, v in _case(b["i"][0]).items()
                                   if k in ("pred", "label", "seg_pred", "seg_label")}])
    ClassificationReportHandler(out_dir, num_classes=K).attach(engine)
    SegmentationReportHandler(out_dir, num_classes=SEG, pred_key="seg_pred", label_key="seg_label").attach(engine)
    data = [{"i": [i], "case_id": [_case(i)["case_id"]], "device": [_case(i)["device"]]} for i in cases]
    engine.run(data, max_epochs=1)
    return dict(engine.state.metrics)


def _worker(rank: int, world: int, port: int, out_dir: str, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # DistributedSampler(shuffle=False, even_divisible=False): rank r scores cases r, r + world, ...
        metrics = _score(out_dir, list(range(rank, N, world)))
        with open(os.path.join(results, f"metrics_{rank}.json"), "w") as f:
            json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_ranks_report_every_case(tmp_path):
    one = tmp_path / "one"
    single = _score(str(one), list(range(N)))
    two, results = tmp_path / "two", tmp_path / "results"
    results.mkdir()
    mp.start_processes(_worker, args=(2, _free_port(), str(two), str(results)), nprocs=2, join=True,
                       start_method="spawn")
    per_rank = [json.loads((results / f"metrics_{r}.json").read_text()) for r in range(2)]
    for m in per_rank:  # every rank holds the pooled metrics of all cases
        assert m.keys() == single.keys()
        for k, v in single.items():
            assert m[k] == pytest.approx(v, rel=1e-6), k  # float32 sums in another case order
    # rank 0's report: every case once, the same numbers as one process scoring them all
    c1 = json.loads((one / "classification_metrics.json").read_text())
    c2 = json.loads((two / "classification_metrics.json").read_text())
    assert c2["pooled"]["n"] == N
    assert sorted(c["case"] for c in c2["cases"]) == sorted(c["case"] for c in c1["cases"])
    for k, v in c1["pooled"].items():
        assert c2["pooled"][k] == (pytest.approx(v) if not isinstance(v, (list, str)) else v), k
    s1 = json.loads((one / "segmentation_metrics.json").read_text())
    s2 = json.loads((two / "segmentation_metrics.json").read_text())
    assert s2["n_cases"] == N and s2["dice_mean"] == pytest.approx(s1["dice_mean"])
    assert sorted(c["case"] for c in s2["cases"]) == sorted(c["case"] for c in s1["cases"])
    # the cases score differently, so a report of one rank's share would not match
    dice = [tuple(v for k, v in c.items() if k.startswith("dice_")) for c in s1["cases"]]
    assert len(set(dice)) > 1
    half = [d for c, d in zip(s1["cases"], dice) if int(c["case"][-2:]) % 2 == 0]
    assert sum(map(sum, half)) / len(half) != pytest.approx(sum(map(sum, dice)) / len(dice))
