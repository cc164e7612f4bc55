"""RepresentationRankMonitor on a real JEPATrainer: metrics, TensorBoard scalars, collapse warning, and training
that is bit-for-bit the same with and without the monitor."""
import logging

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import RandFlipd

from oct_foundation.engines import RepresentationRankMonitor
from oct_foundation.networks import VJEPA3D
from tests.engines.test_jepa_trainer import make_trainer

TAGS = ("target_effective_rank", "context_effective_rank", "target_rankme", "context_rankme")


def tiny_vjepa(seed=0):
    torch.manual_seed(seed)
    return VJEPA3D(img_size=(8, 32, 32), patch_size=16, tubelet_size=2, embed_dim=32, depth=2, num_heads=2,
                   predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=2)


def volumes(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, 8, 32, 32, generator=g)} for _ in range(n)]


def shuffled_loader(items, transform=None):
    """A loader that draws its order from the global torch RNG (and random transforms from their own R)."""
    return DataLoader(Dataset(items, transform=transform), batch_size=2, shuffle=True, num_workers=0)


def run_training(monitor=None, epochs=2):
    net = tiny_vjepa()
    handlers = None if monitor is None else (list(monitor) if isinstance(monitor, (list, tuple)) else [monitor])
    trainer = make_trainer(net, shuffled_loader(volumes()), epochs, handlers=handlers)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    torch.manual_seed(123)
    trainer.run()
    return trainer, losses


def scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_monitor_metrics_tensorboard_and_untouched_training(tmp_path, caplog):
    _, plain = run_training()
    # the monitor's own loader is shuffled too: without restoring the torch RNG epoch 2's order would change
    monitor = RepresentationRankMonitor(shuffled_loader(volumes(4, seed=7)), interval=1, max_volumes=3,
                                        log_dir=str(tmp_path / "tb"), warn_below=None)
    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        trainer, watched = run_training(monitor)
    assert watched == plain  # exact: same batches, same masks, same updates
    for k in TAGS:
        assert 1.0 <= trainer.state.metrics[k] <= 32.0, (k, trainer.state.metrics[k])
    assert [h["epoch"] for h in monitor.history] == [1, 2]
    assert all(h["tokens"] == 3 * 16 and h["embed_dim"] == 32 for h in monitor.history)  # 3 volumes x 4x2x2 tokens
    for k in TAGS:
        got = scalars(tmp_path / "tb", f"collapse/{k}")
        assert [s for s, _ in got] == [1, 2]
        assert got[-1][1] == pytest.approx(trainer.state.metrics[k], rel=1e-5)
    assert monitor._writer is None  # closed on COMPLETED
    info = [r.getMessage() for r in caplog.records if "effective rank" in r.getMessage()]
    assert len(info) == 2 and "embedding dim 32" in info[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_warning_when_below_threshold_and_interval(caplog):
    data = [{"image": torch.stack([v["image"] for v in volumes(4)[i:i + 2]])} for i in (0, 2)]  # [2, 1, 8, 32, 32]
    monitor = RepresentationRankMonitor(data, interval=2, max_volumes=4, warn_below=1000.0)
    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        trainer, _ = run_training(monitor, epochs=2)
    assert [h["epoch"] for h in monitor.history] == [2]  # every 2nd epoch only
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # target and context
    assert "representation collapse is likely" in warnings[0] and "docs/README.md" in warnings[0]
    assert f"{trainer.state.metrics['target_effective_rank']:.2f}" in warnings[0]

    # interval <= 0: off; an empty loader: a warning, and training goes on
    disabled = RepresentationRankMonitor(data, interval=0, warn_below=1000.0)
    empty = RepresentationRankMonitor([], interval=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        trainer, losses = run_training([disabled, empty], epochs=1)
    assert len(losses) == 3 and disabled.history == [] and empty.history == []
    assert "target_effective_rank" not in trainer.state.metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["epoch 1: effective rank not computed: the data loader gave no volumes"]


def test_detects_collapsed_encoder_restores_modes_and_random_states(caplog):
    net = tiny_vjepa()
    # collapse the target encoder by hand: its final LayerNorm keeps only feature 0
    with torch.no_grad():
        net.target_encoder.norm.weight.zero_()
        net.target_encoder.norm.weight[0] = 1.0
        net.target_encoder.norm.bias.zero_()
    net.encoder.train()
    net.target_encoder.eval()
    flip = RandFlipd(keys="image", prob=0.5, spatial_axis=2)
    loader = shuffled_loader(volumes(6), transform=flip)
    monitor = RepresentationRankMonitor(loader, max_volumes=5, warn_below=4.0)
    torch_state, flip_state = torch.random.get_rng_state(), flip.R.get_state()
    with caplog.at_level(logging.WARNING, logger="oct_foundation.engines"):
        r = monitor.compute(net)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(flip.R.get_state(), flip_state))
    assert net.encoder.training and not net.target_encoder.training
    assert r["target_effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert r["target_rankme"] == pytest.approx(1.0, abs=1e-3)
    assert r["context_effective_rank"] > 2.0
    # warnings are issued from __call__ (engine); compute alone only measures
    assert not caplog.records
    with pytest.raises(ValueError, match="max_volumes"):
        RepresentationRankMonitor(loader, max_volumes=0)


def test_pooled_rank_and_min_std_flag_dead_dimensions(caplog):
    net = tiny_vjepa()
    with torch.no_grad():  # target encoder: only features 0 and 1 survive the final LayerNorm
        net.target_encoder.norm.weight.zero_()
        net.target_encoder.norm.weight[:2] = 1.0
        net.target_encoder.norm.bias.zero_()
    data = [{"image": v["image"][None]} for v in volumes(6)]  # six batches of one volume
    r = RepresentationRankMonitor(data, max_volumes=6).compute(net)
    assert r["volumes"] == 6
    assert r["target_min_feature_std"] == pytest.approx(0.0, abs=1e-6)
    assert r["target_token_min_std"] == pytest.approx(0.0, abs=1e-6)
    assert 1.0 <= r["target_pooled_effective_rank"] <= 2.0 + 1e-6
    assert r["context_min_feature_std"] > 1e-3 and r["context_token_min_std"] > 1e-2
    assert 2.0 < r["context_pooled_effective_rank"] <= 5.0 + 1e-6  # 6 volumes: at most 5
    assert r["context_pooled_effective_rank"] <= r["context_pooled_rankme"] <= 5.0 + 1e-6
    assert r["target_pooled_rankme"] <= 2.0 + 1e-3

    class Engine:  # the attributes __call__ reads from an ignite engine
        network = net
        state = type("S", (), {"epoch": 3, "device": "cpu", "metrics": {}})()

    monitor = RepresentationRankMonitor(data, max_volumes=6, warn_below=3.0, warn_min_std=0.01)
    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        monitor(Engine)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not any("pooled-feature effective rank" in w for w in warnings)  # pooled rank is reported, not warned on
    assert any("target encoder pooled-feature dimension with std" in w for w in warnings)
    assert not any("context encoder pooled-feature dimension" in w for w in warnings)
    assert Engine.state.metrics["target_min_feature_std"] == pytest.approx(0.0, abs=1e-6)
    assert any("pooled features of 6 volumes" in r.getMessage() for r in caplog.records)
