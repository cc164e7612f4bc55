import math

import pytest
import torch

from oct_foundation.engines.schedules import (
    MomentumSchedule,
    WarmupCosineLR,
    WeightDecaySchedule,
    accumulation_for_tokens,
    build_param_groups,
    cosine_value,
    tokens_per_sample,
    warmup_cosine_value,
)


def test_warmup_cosine_values():
    # warm-up 1e-4 -> 1e-3 over 10 steps, cosine to 1e-5 at step 110
    assert warmup_cosine_value(0, 10, 110, 1e-4, 1e-3, 1e-5) == pytest.approx(1e-4)
    assert warmup_cosine_value(5, 10, 110, 1e-4, 1e-3, 1e-5) == pytest.approx(5.5e-4)
    assert warmup_cosine_value(10, 10, 110, 1e-4, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert warmup_cosine_value(60, 10, 110, 1e-4, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert warmup_cosine_value(110, 10, 110, 1e-4, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert warmup_cosine_value(500, 10, 110, 1e-4, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_value(25, 100, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_lr_scheduler_per_group_with_multiplier():
    w1, w2 = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.AdamW([{"params": [w1], "lr": 1e-3}, {"params": [w2], "lr": 1e-4}])
    sched = WarmupCosineLR(opt, warmup_steps=4, total_steps=12, start_factor=0.0, final_factor=0.1)
    lrs = []
    for _ in range(14):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([0.0, 0.0])
    assert lrs[2] == pytest.approx([5e-4, 5e-5])
    assert lrs[4] == pytest.approx([1e-3, 1e-4])
    assert lrs[8] == pytest.approx([(1e-3 + 1e-4) / 2, (1e-4 + 1e-5) / 2])
    assert lrs[12] == pytest.approx([1e-4, 1e-5])
    # state round trip: a fresh scheduler loaded from the state continues identically
    opt2 = torch.optim.AdamW([{"params": [w1], "lr": 1e-3}, {"params": [w2], "lr": 1e-4}])
    s2 = WarmupCosineLR(opt2, warmup_steps=4, total_steps=12, start_factor=0.0, final_factor=0.1)
    s2.load_state_dict(sched.state_dict())
    s2.step()
    sched.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])


def test_weight_decay_schedule_skips_no_decay_groups():
    w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([
        {"params": [w], "weight_decay": 0.04, "wd_exclude": False},
        {"params": [b], "weight_decay": 0.0, "wd_exclude": True},
    ])
    wd = WeightDecaySchedule(opt, total_steps=10, start=0.04, end=0.4, mode="cosine")
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.04)
    for _ in range(5):
        wd.step()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.22)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    state = wd.state_dict()
    wd2 = WeightDecaySchedule(opt, total_steps=1, start=0.0, end=0.0)
    wd2.load_state_dict(state)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.22)
    for _ in range(10):
        wd2.step()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.4)


def test_ema_momentum_schedule():
    lin = MomentumSchedule(total_steps=100, start=0.996, end=1.0, mode="linear")
    assert lin(0) == pytest.approx(0.996)
    assert lin(50) == pytest.approx(0.998)
    assert lin(100) == pytest.approx(1.0)
    assert lin(1000) == pytest.approx(1.0)
    cos = MomentumSchedule(total_steps=100, start=0.996, end=1.0, mode="cosine")
    assert cos(0) == pytest.approx(0.996)
    assert cos(50) == pytest.approx(0.998)
    assert cos(25) == pytest.approx(1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError):
        MomentumSchedule(10, start=1.2)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
        self.target_encoder = torch.nn.Sequential(torch.nn.Linear(4, 4))
        self.target_encoder.requires_grad_(False)
        self.predictor = torch.nn.Linear(4, 4)


def test_param_groups_decay_multiplier_frozen():
    net = _Tiny()
    net.encoder[2].weight.requires_grad_(False)  # frozen
    pretrained = ["encoder.0.weight", "encoder.0.bias", "encoder.1.weight"]
    groups = build_param_groups(net, lr=1e-3, weight_decay=0.05, pretrained_names=pretrained, pretrained_lr_mult=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"new_decay", "new_no_decay", "pretrained_decay", "pretrained_no_decay"}
    assert by_name["pretrained_decay"]["names"] == ["encoder.0.weight"]
    assert sorted(by_name["pretrained_no_decay"]["names"]) == ["encoder.0.bias", "encoder.1.weight"]
    assert by_name["new_decay"]["names"] == ["predictor.weight"]
    assert sorted(by_name["new_no_decay"]["names"]) == ["encoder.1.bias", "encoder.2.bias", "predictor.bias"]
    assert by_name["pretrained_decay"]["lr"] == pytest.approx(1e-4)
    assert by_name["new_decay"]["lr"] == pytest.approx(1e-3)
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else 0.05)
        assert g["wd_exclude"] == g["name"].endswith("no_decay")
    all_names = [n for g in groups for n in g["names"]]
    assert "encoder.2.weight" not in all_names  # frozen set excluded
    assert not any(n.startswith("target_encoder") for n in all_names)
    # with exclude_frozen=False the frozen weight is kept (progressive unfreezing) but the target never is
    groups = build_param_groups(net, lr=1e-3, exclude_frozen=False)
    all_names = [n for g in groups for n in g["names"]]
    assert "encoder.2.weight" in all_names and not any(n.startswith("target_encoder") for n in all_names)
    torch.optim.AdamW(groups)  # the groups are valid AdamW input


def test_tokens_per_step_equalisation_numbers():
    assert tokens_per_sample(16, (128, 128), 16, 2) == 512
    assert tokens_per_sample(8, (128, 128), 16, 2) == 256
    assert accumulation_for_tokens(8192, 4, 512) == 4
    assert accumulation_for_tokens(8192, 4, 256) == 8  # half the slices -> twice the micro-batches
    assert accumulation_for_tokens(8192, 4, 300) == 7  # ceil
    assert accumulation_for_tokens(100, 4, 512) == 1
    with pytest.raises(ValueError):
        accumulation_for_tokens(0, 4, 512)
