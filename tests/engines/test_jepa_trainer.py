import logging
import os

import pytest
import torch
from ignite.engine import Events

from oct_foundation.engines import (
    JEPAEvaluator,
    JEPAStatsLogger,
    JEPATrainer,
    ModelExport,
    MomentumSchedule,
    ProgressiveUnfreezing,
    TrainingCheckpoint,
    WarmupCosineLR,
    WeightDecaySchedule,
    build_param_groups,
    freeze_encoder,
    latest_checkpoint,
    prepare_network,
    resolve_resume,
    size_for_epoch,
)
from oct_foundation.networks import MultiBlockMask3D, VJEPA3D


def tiny_net(depth=2, seed=0):
    torch.manual_seed(seed)
    return VJEPA3D(img_size=(8, 32, 32), patch_size=8, tubelet_size=2, embed_dim=32, depth=depth, num_heads=2,
                   predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=2)


def tiny_data(n=8, d=8, hw=32, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, d, hw, hw, generator=g)
    return [{"image": x[i:i + batch]} for i in range(0, n, batch)]


def make_trainer(net, data, max_epochs, handlers=None, exclude_frozen=True, **kw):
    groups = build_param_groups(net, lr=1e-3, weight_decay=0.04, exclude_frozen=exclude_frozen)
    opt = torch.optim.AdamW(groups)
    total = max_epochs * len(data)
    trainer = JEPATrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=data, network=net, optimizer=opt,
        mask_generator=MultiBlockMask3D(num_blocks=2, spatial_scale=(0.25, 0.25)),
        momentum_schedule=MomentumSchedule(total, 0.99, 1.0), lr_scheduler=WarmupCosineLR(opt, 2, total, 0.1, 0.01),
        wd_scheduler=WeightDecaySchedule(opt, total, 0.04, 0.4), train_handlers=handlers, **kw,
    )
    return trainer


def record_losses(trainer):
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    return losses


def test_iteration_outputs_and_ema_update():
    net = tiny_net()
    data = tiny_data()
    trainer = make_trainer(net, data, 1)
    target_before = [p.clone() for p in net.target_encoder.parameters()]
    outs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outs.append(dict(e.state.output)))
    trainer.run()
    assert len(outs) == 4
    o = outs[0]
    assert torch.isfinite(o["loss"]) and o["tokens"] == 2 * 4 * 4 * 4
    assert o["context_tokens"] > 0 and o["target_tokens"] > 0 and o["optimizer_step"]
    assert o["ema_momentum"] == pytest.approx(0.99)
    assert outs[1]["ema_momentum"] == pytest.approx(0.9925)
    assert o["lr"] == pytest.approx(1e-4) and outs[2]["lr"] == pytest.approx(1e-3)  # warm-up 2 iterations
    changed = any(not torch.equal(a, b) for a, b in zip(target_before, net.target_encoder.parameters()))
    assert changed, "the EMA update must move the target encoder"
    # the target encoder is not optimised: it equals the momentum mix, never gets gradients
    assert all(p.grad is None for p in net.target_encoder.parameters())


def test_bf16_amp_on_cpu():
    net = tiny_net()
    trainer = make_trainer(net, tiny_data(n=4), 1, amp=True, amp_dtype="bfloat16")
    losses = record_losses(trainer)
    trainer.run()
    assert trainer.scaler is None and len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_grad_accumulation_steps_every_k():
    net = tiny_net()
    trainer = make_trainer(net, tiny_data(n=10), 1, grad_accumulation=2)
    steps = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: steps.append(e.state.output["optimizer_step"]))
    trainer.run()
    assert steps == [False, True, False, True, True]  # the last iteration of an epoch always steps


@pytest.mark.parametrize("depth,expected", [(8, [False, True, False, True]), (4, [False, False, False, True])])
def test_tokens_per_step_equalisation(depth, expected):
    # batch 2: depth 8 -> grid 4x4x4 = 128 tokens per iteration; depth 4 -> 2x4x4 = 64. With 256 tokens per step
    # the optimizer steps every 2 iterations at depth 8 and every 4 at depth 4: the same tokens per step.
    net = tiny_net()
    trainer = make_trainer(net, tiny_data(n=8, d=depth), 1, tokens_per_step=256)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: seen.append((e.state.output["optimizer_step"], e.state.output["tokens"])))
    trainer.run()
    assert [s for s, _ in seen] == expected
    tokens_per_step, acc = [], 0
    for s, t in seen:
        acc += t
        if s:
            tokens_per_step.append(acc)
            acc = 0
    assert set(tokens_per_step) == {256}


def test_progressive_resize_schedule():
    assert size_for_epoch({"0": [16, 16], "2": [32, 32]}, 0) == (16, 16)
    assert size_for_epoch({"0": [16, 16], "2": [32, 32]}, 1) == (16, 16)
    assert size_for_epoch({"0": [16, 16], "2": [32, 32]}, 5) == (32, 32)
    assert size_for_epoch({"1": [16, 16]}, 0) is None
    net = tiny_net()
    trainer = make_trainer(net, tiny_data(n=2), 3, resize_schedule={"0": [16, 16], "2": [32, 32]})
    grids = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: grids.append(e.state.output["grid"]))
    trainer.run()
    assert grids == [(4, 2, 2)] * 2 + [(4, 4, 4)]


def test_progressive_unfreezing_order_and_effect():
    net = tiny_net(depth=4)
    pu = ProgressiveUnfreezing(net.encoder, freeze_first_n=3, start_epoch=1, every=2)
    assert pu.unfreeze_order() == ["blocks.2", "blocks.1", "blocks.0", "patch_embed"]
    assert pu.frozen_at(0) == ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]
    assert pu.frozen_at(1) == ["patch_embed", "blocks.0", "blocks.1"]  # deepest frozen block first
    assert pu.frozen_at(2) == ["patch_embed", "blocks.0", "blocks.1"]
    assert pu.frozen_at(3) == ["patch_embed", "blocks.0"]
    assert pu.frozen_at(5) == ["patch_embed"]
    assert pu.frozen_at(7) == [] and pu.frozen_at(100) == []
    assert ProgressiveUnfreezing(net.encoder, 3, start_epoch=1, every=0).frozen_at(50) == pu.frozen_at(0)

    # real run: phase 1 (epoch 1) block 2 frozen and unchanged, then it trains from epoch 2
    pu = ProgressiveUnfreezing(net.encoder, freeze_first_n=3, start_epoch=1, every=2)
    freeze_encoder(net.encoder, 3)
    trainer = make_trainer(net, tiny_data(n=4), 2, handlers=[pu], exclude_frozen=False)
    snaps = {}

    def snap(e):
        snaps[e.state.epoch] = (net.encoder.blocks[2].mlp.fc1.weight.detach().clone(),
                                net.encoder.blocks[1].mlp.fc1.weight.detach().clone(),
                                net.encoder.blocks[3].mlp.fc1.weight.detach().clone())

    before = (net.encoder.blocks[2].mlp.fc1.weight.detach().clone(), net.encoder.blocks[3].mlp.fc1.weight.detach().clone())
    trainer.add_event_handler(Events.EPOCH_COMPLETED, snap)
    trainer.run()
    assert torch.equal(snaps[1][0], before[0]), "frozen block 2 must not move in phase 1"
    assert not torch.equal(snaps[1][2], before[1]), "block 3 trains from the start"
    assert not torch.equal(snaps[2][0], snaps[1][0]), "block 2 is unfrozen at epoch 2 and trains"
    assert torch.equal(snaps[2][1], snaps[1][1]), "block 1 stays frozen"
    assert pu.history == [(0, ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]),
                          (1, ["patch_embed", "blocks.0", "blocks.1"])]


def test_prepare_network_pretrained_names_and_freeze(tmp_path):
    src = tiny_net(seed=3)
    path = str(tmp_path / "pre.pt")
    torch.save({"encoder": src.encoder.state_dict(), "target_encoder": src.target_encoder.state_dict()}, path)
    net = tiny_net(seed=4)
    prepare_network(net, path, freeze_first_n=1, pretrained_kwargs={"allow_missing": ["predictor.*"]})
    assert torch.equal(net.encoder.blocks[1].attn.qkv.weight, src.encoder.blocks[1].attn.qkv.weight)
    names = set(net.pretrained_param_names)
    assert "encoder.blocks.1.attn.qkv.weight" in names and not any(n.startswith("predictor") for n in names)
    assert not net.encoder.patch_embed.proj.weight.requires_grad
    assert not any(p.requires_grad for p in net.encoder.blocks[0].parameters())
    assert all(p.requires_grad for p in net.encoder.blocks[1].parameters())
    groups = build_param_groups(net, lr=1e-3, pretrained_names=net.pretrained_param_names, pretrained_lr_mult=0.1)
    pre = [g for g in groups if g["name"].startswith("pretrained")]
    assert pre and all(g["lr"] == pytest.approx(1e-4) for g in pre)
    assert "encoder.blocks.1.attn.qkv.weight" in [n for g in pre for n in g["names"]]
    assert "encoder.blocks.0.attn.qkv.weight" not in [n for g in groups for n in g["names"]]


def test_resume_gives_same_losses(tmp_path):
    data = tiny_data(n=4)
    # uninterrupted: 3 epochs
    ref = make_trainer(tiny_net(), data, 3)
    ref_losses = record_losses(ref)
    ref.run()
    assert len(ref_losses) == 6

    # interrupted after epoch 2 (same schedules: max_epochs 3), checkpoint every epoch
    ckdir = str(tmp_path / "ckpt")
    net = tiny_net()
    tr = make_trainer(net, data, 3)
    ck = TrainingCheckpoint(ckdir, tr.checkpoint_objects(), save_interval=1, n_saved=2)
    ck.attach(tr)
    first = record_losses(tr)
    tr.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    tr.run()
    assert first == pytest.approx(ref_losses[:4], abs=1e-6)
    path = latest_checkpoint(ckdir)
    assert path is not None and path.endswith("checkpoint_2.pt") and resolve_resume("latest", ckdir) == path
    assert not [f for f in os.listdir(ckdir) if f.endswith(".part") or f.startswith(".")]
    keys = set(torch.load(path, weights_only=True))
    assert {"network", "optimizer", "trainer", "lr_scheduler", "wd_scheduler"} <= keys

    # fresh objects (different init), resumed from the checkpoint with MONAI's CheckpointLoader
    from monai.handlers import CheckpointLoader

    net2 = tiny_net(seed=123)
    tr2 = make_trainer(net2, data, 3)
    CheckpointLoader(load_path=path, load_dict=tr2.checkpoint_objects()).attach(tr2)
    resumed = record_losses(tr2)
    tr2.run()
    assert tr2.state.epoch == 3 and len(resumed) == 2
    assert resumed == pytest.approx(ref_losses[4:], abs=1e-5)
    for a, b in zip(ref.network.state_dict().values(), net2.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_stats_logger_tensorboard_export_and_evaluator(tmp_path, caplog):
    from monai.data import MetaTensor
    from monai.handlers import ValidationHandler

    data = tiny_data(n=4)
    for i, b in enumerate(data):  # collated meta as produced by DepthSubsampled + list_data_collate
        b["image"] = MetaTensor(b["image"], meta={"slice_indices": torch.tensor([[0, 2, 4, 6, 8, 10, 12, 14]] * 2)})
    net = tiny_net()
    stats = JEPAStatsLogger(log_dir=str(tmp_path / "tb"), interval=1)
    model_path = str(tmp_path / "models" / "model.pt")
    evaluator = JEPAEvaluator("cpu", tiny_data(n=2, seed=5), net,
                              MultiBlockMask3D(num_blocks=2, spatial_scale=(0.25, 0.25)))
    trainer = make_trainer(net, data, 2, handlers=[stats, ModelExport(net, model_path),
                                                   ValidationHandler(validator=evaluator, interval=1)])
    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        trainer.run()
    assert len(stats.losses) == 4
    for k in ("train_loss", "train_lr", "train_ema_momentum", "train_tokens_per_s", "train_peak_memory_mb"):
        assert k in trainer.state.metrics
    assert trainer.state.metrics["train_tokens_per_s"] > 0 and trainer.state.metrics["train_peak_memory_mb"] > 0
    assert "tokens/s" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/ema_momentum", "train/tokens_per_s", "train/peak_memory_mb"} <= set(
        tags["scalars"])
    assert "train/slice_indices" in tags["histograms"]
    hist = acc.Histograms("train/slice_indices")[-1].histogram_value
    assert hist.min == 0 and hist.max == 14 and hist.num == 2 * 2 * 8
    # validation loss with fixed masks: two evaluations of the same network agree
    v1 = evaluator.state.metrics["val_jepa_loss"]
    evaluator.run()
    assert evaluator.state.metrics["val_jepa_loss"] == pytest.approx(v1)
    sd = torch.load(model_path, weights_only=True)
    assert set(sd) == set(net.state_dict())
    fresh = tiny_net(seed=9)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.encoder.blocks[0].attn.qkv.weight, net.encoder.blocks[0].attn.qkv.weight)


def test_mask_rescale_says_when_it_has_nothing_to_rescale(caplog):
    import logging

    from oct_foundation.engines.jepa_trainer import mask_generator_for_depth
    from oct_foundation.networks.masking import MultiBlockMask3D, default_mask_generators

    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        out = mask_generator_for_depth(default_mask_generators(), 64, 16, True)
    assert [m.d_target for m in out] == [16, 16] and "changes nothing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="oct_foundation.engines"):
        mask_generator_for_depth(MultiBlockMask3D(temporal_scale=(0.3, 0.5)), 64, 16, True)
    assert "changes nothing" not in caplog.text
