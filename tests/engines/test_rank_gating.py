"""Every handler that logs or writes knows its rank: on a rank other than 0 (``RANK=1``, as torchrun sets it) none of
them writes a file, while the same handlers on rank 0 write all of theirs."""
from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

N_CLASSES, SEG_CLASSES = 2, 3


def _step(engine, batch):
    i = engine.state.iteration
    y = i % N_CLASSES
    logits = torch.zeros(N_CLASSES)
    logits[y] = 2.0
    seg_label = torch.zeros(1, 2, 4, 4)
    seg_label[0, :, 2:] = 1
    seg_label[0, 1, 3:] = 2
    seg_pred = torch.nn.functional.one_hot(seg_label[0].long(), SEG_CLASSES).permute(3, 0, 1, 2).float()
    return [{"pred": logits, "label": torch.tensor(y), "seg_pred": seg_pred, "seg_label": seg_label,
             "loss": torch.tensor(1.0 / i)}]


def _handlers(tmp_path, net):
    from oct_foundation.engines import (BestModelExport, ClassificationReportHandler, ModelExport,
                                        ProgressBarHandler, RankZeroStatsHandler, RankZeroTensorBoardStatsHandler,
                                        SegmentationReportHandler, TrainingCheckpoint)
    from oct_foundation.engines.generative import ValidationHistory

    return [
        ClassificationReportHandler(str(tmp_path / "reports"), num_classes=N_CLASSES),
        SegmentationReportHandler(str(tmp_path / "reports"), num_classes=SEG_CLASSES, pred_key="seg_pred",
                                  label_key="seg_label"),
        BestModelExport(net, str(tmp_path / "best" / "model.pt"), metric_name="accuracy"),
        TrainingCheckpoint(str(tmp_path / "checkpoints"), save_dict={"network": net}),
        ModelExport(net, str(tmp_path / "models" / "model.pt")),
        RankZeroStatsHandler(output_transform=lambda out: float(out[0]["loss"])),
        RankZeroTensorBoardStatsHandler(log_dir=str(tmp_path / "tensorboard"),
                                        output_transform=lambda out: float(out[0]["loss"])),
        ProgressBarHandler(),
        ValidationHistory(str(tmp_path / "validation.csv"), str(tmp_path / "validation_summary.json"),
                          threshold_metric="accuracy", mode="max"),
    ]


def _run(tmp_path):
    net = torch.nn.Linear(2, 2)
    engine = Engine(_step)
    for h in _handlers(tmp_path, net):
        h.attach(engine)
    data = [{"device": ["A"], "case_id": [f"case_{i}"]} for i in range(4)]
    engine.run(data, max_epochs=2)
    _run_jepa_logger(tmp_path)
    return engine


def _run_jepa_logger(tmp_path):
    """The pretraining statistics logger reads the JEPA trainer's output, a dict."""
    from oct_foundation.engines import JEPAStatsLogger

    engine = Engine(lambda e, b: {"loss": torch.tensor(1.0), "tokens": 8})
    JEPAStatsLogger(log_dir=str(tmp_path / "jepa_tensorboard")).attach(engine)
    engine.run([0, 1], max_epochs=2)


def _files(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


def test_rank_one_writes_no_files(tmp_path, monkeypatch):
    from oct_foundation.engines import RepresentationRankMonitor

    monkeypatch.setenv("RANK", "1")
    engine = _run(tmp_path)
    # the collapse monitor too (on rank 0 it needs a VJEPA3D network, so it is checked here only)
    RepresentationRankMonitor(data_loader=[], log_dir=str(tmp_path / "collapse")).attach(engine)
    engine.run([{"device": ["A"], "case_id": ["case_0"]}], max_epochs=3)
    assert _files(tmp_path) == [] and list(tmp_path.iterdir()) == []
    # every rank still computes the reports' pooled numbers (a best-model metric must exist on every rank)
    assert 0.0 <= engine.state.metrics["accuracy"] <= 1.0 and "dice_mean" in engine.state.metrics


@pytest.mark.parametrize("rank", ["0", ""])
def test_rank_zero_writes_them(tmp_path, monkeypatch, rank):
    monkeypatch.setenv("RANK", rank)
    _run(tmp_path)
    files = _files(tmp_path)
    for expected in ("reports/classification_metrics.json", "reports/classification_cases.csv",
                     "reports/segmentation_metrics.json", "best/model.pt", "best/model.pt.json",
                     "checkpoints/checkpoint_2.pt", "models/model.pt", "validation.csv", "validation_summary.json"):
        assert expected in files, files
    assert any(f.startswith("tensorboard/events.") for f in files), files
    assert any(f.startswith("jepa_tensorboard/events.") for f in files), files


def test_one_ddp_wrap(monkeypatch):
    """``wrap_ddp`` is the one DistributedDataParallel wrap: no device ids on the CPU, ``None`` stays ``None``."""
    import socket

    import torch.distributed as dist

    from oct_foundation.engines import wrap_ddp

    assert wrap_ddp(None, "cpu") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        net = torch.nn.Linear(2, 2)
        ddp = wrap_ddp(net, torch.device("cpu"))
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and ddp.module is net
        assert ddp.device_ids is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rank,prints", [("0", True), ("1", False)])
def test_lr_schedule_steps_on_every_rank_and_prints_on_rank_zero(monkeypatch, caplog, rank, prints):
    import logging

    from oct_foundation.engines import RankZeroLrScheduleHandler

    monkeypatch.setenv("RANK", rank)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    engine = Engine(lambda e, b: None)
    RankZeroLrScheduleHandler(sched, print_lr=True).attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run([0], max_epochs=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125)  # stepped at every epoch on every rank
    assert any("learning rate" in r.getMessage() for r in caplog.records) is prints
