"""Optimisation schedules and parameter groups for JEPA pretraining.

Schedules follow V-JEPA: learning rate = linear warm-up from ``start_lr`` to the reference LR, then cosine decay
to ``final_lr``; weight decay = cosine from ``wd_start`` to ``wd_end``; EMA momentum of the target encoder =
linear (or cosine) from ``ema_start`` to ``ema_end``. All are stepped once per training iteration.

The LR and weight-decay schedulers are stateful objects with ``state_dict`` / ``load_state_dict`` (plain numbers
only, so they load with ``weights_only=True``) and are saved in the training checkpoint. The EMA momentum is a pure
function of the iteration number, so it needs no state.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "cosine_value",
    "linear_value",
    "warmup_cosine_value",
    "WarmupCosineLR",
    "WeightDecaySchedule",
    "MomentumSchedule",
    "build_param_groups",
    "tokens_per_sample",
    "accumulation_for_tokens",
]


def cosine_value(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step >= ``total``)."""
    if total <= 0:
        return float(end)
    p = min(max(step, 0), total) / total
    return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p)))


def linear_value(step: int, total: int, start: float, end: float) -> float:
    """Straight line from ``start`` (step 0) to ``end`` (step >= ``total``)."""
    if total <= 0:
        return float(end)
    p = min(max(step, 0), total) / total
    return float(start + (end - start) * p)


def warmup_cosine_value(step: int, warmup: int, total: int, start: float, ref: float, final: float) -> float:
    """Linear warm-up ``start -> ref`` over ``warmup`` steps, then cosine ``ref -> final`` until ``total``."""
    if step < warmup:
        return float(start + (ref - start) * step / max(warmup, 1))
    return cosine_value(step - warmup, max(total - warmup, 0), ref, final)


class WarmupCosineLR(LRScheduler):
    """Per-iteration warm-up + cosine LR, applied to every parameter group relative to its own base LR.

    A group's base LR is its ``lr`` when the scheduler is built (so an LR multiplier stored in the group, e.g.
    for pretrained encoder weights, is kept: every group follows the same curve scaled by its base LR).
    ``start_factor`` / ``final_factor`` are fractions of the base LR (V-JEPA's ``start_lr / lr`` and
    ``final_lr / lr``).

    Args:
        optimizer: the optimizer.
        warmup_steps: iterations of linear warm-up.
        total_steps: total iterations (warm-up included) after which the LR stays at ``final_factor``.
        start_factor: LR factor at step 0.
        final_factor: LR factor at the end.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        total_steps: int,
        start_factor: float = 0.0,
        final_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.start_factor = float(start_factor)
        self.final_factor = float(final_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return warmup_cosine_value(
            step, self.warmup_steps, self.total_steps, self.start_factor, 1.0, self.final_factor
        )

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


class WeightDecaySchedule:
    """Per-iteration weight-decay schedule (cosine or linear from ``start`` to ``end``) as in V-JEPA.

    Only groups built with decay (``group["wd_exclude"]`` false) are changed; bias / norm groups keep 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        start: float = 0.04,
        end: float = 0.4,
        mode: str = "cosine",
    ) -> None:
        if mode not in ("cosine", "linear", "constant"):
            raise ValueError(f"weight-decay schedule mode must be cosine, linear or constant, got {mode!r}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.start, self.end, self.mode = float(start), float(end), mode
        self.last_step = -1
        self.step()

    def value(self, step: int) -> float:
        if self.mode == "constant":
            return self.start
        fn = cosine_value if self.mode == "cosine" else linear_value
        return fn(step, self.total_steps, self.start, self.end)

    def step(self) -> float:
        self.last_step += 1
        wd = self.value(self.last_step)
        for g in self.optimizer.param_groups:
            if not g.get("wd_exclude", False):
                g["weight_decay"] = wd
        return wd

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps, "start": self.start,
                "end": self.end, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = int(state["total_steps"])
        self.start, self.end, self.mode = float(state["start"]), float(state["end"]), str(state["mode"])
        self.last_step = int(state["last_step"]) - 1
        self.step()


class MomentumSchedule:
    """EMA momentum of the target encoder as a function of the iteration: ``schedule(step) -> float``.

    V-JEPA increases the momentum linearly from ``start`` (e.g. 0.998) to ``end`` (1.0) over training;
    ``mode="cosine"`` gives the BYOL/DINO cosine ramp ``end - (end - start) * (cos(pi p) + 1) / 2``.
    """

    def __init__(self, total_steps: int, start: float = 0.998, end: float = 1.0, mode: str = "linear") -> None:
        if mode not in ("cosine", "linear", "constant"):
            raise ValueError(f"EMA momentum schedule mode must be cosine, linear or constant, got {mode!r}")
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            raise ValueError(f"EMA momentum must lie in [0, 1], got start={start}, end={end}")
        self.total_steps = int(total_steps)
        self.start, self.end, self.mode = float(start), float(end), mode

    def __call__(self, step: int) -> float:
        if self.mode == "constant":
            return self.start
        fn = cosine_value if self.mode == "cosine" else linear_value
        return fn(step, self.total_steps, self.start, self.end)


def _is_no_decay(name: str, param: torch.nn.Parameter, norm_names: set[str]) -> bool:
    """Biases, 1-D tensors (norm weights, layer scales), norm modules and learned tokens get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    module = name.rsplit(".", 1)[0] if "." in name else ""
    return (
        param.ndim <= 1
        or leaf == "bias"
        or module in norm_names
        or leaf in ("pos_embed", "mask_token", "cls_token")
    )


def build_param_groups(
    network: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.04,
    pretrained_names: Iterable[str] | None = None,
    pretrained_lr_mult: float = 1.0,
    exclude_frozen: bool = True,
    exclude_modules: Sequence[str] = ("target_encoder",),
) -> list[dict]:
    """Parameter groups for AdamW: decay / no decay x pretrained / new.

    Args:
        network: the model (e.g. ``VJEPA3D``); parameters under ``exclude_modules`` (the EMA target encoder,
            which is never optimised) are left out.
        lr: reference learning rate.
        weight_decay: weight decay of the decayed groups (bias and norm groups get 0 and ``wd_exclude=True``).
        pretrained_names: full parameter names (as in ``network.named_parameters()``) that were loaded from
            pretrained weights; their groups get ``lr * pretrained_lr_mult``.
        pretrained_lr_mult: LR multiplier of pretrained parameters.
        exclude_frozen: leave out parameters with ``requires_grad=False`` (the frozen set). With progressive
            unfreezing pass ``False`` so that frozen parameters are in the optimizer from the start: AdamW
            skips any parameter whose ``.grad`` is None (no update, no decay, no state), so they only start
            moving once they are unfrozen, and the optimizer layout stays the same for checkpoint resume.

    Returns:
        list of dicts with ``params``, ``lr``, ``weight_decay``, ``wd_exclude``, ``lr_mult``, ``name``, ``names``;
        empty groups are dropped.
    """
    pretrained = set(pretrained_names or ())
    norm_names = {
        n for n, m in network.named_modules()
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm))
        or type(m).__name__.lower().endswith("norm")
    }
    buckets: dict[tuple[bool, bool], tuple[list, list]] = {}
    for name, p in network.named_parameters():
        if any(name == m or name.startswith(m + ".") for m in exclude_modules):
            continue
        if exclude_frozen and not p.requires_grad:
            continue
        key = (name in pretrained, _is_no_decay(name, p, norm_names))
        buckets.setdefault(key, ([], []))
        buckets[key][0].append(p)
        buckets[key][1].append(name)
    groups = []
    for (is_pre, no_decay) in [(False, False), (False, True), (True, False), (True, True)]:
        if (is_pre, no_decay) not in buckets:
            continue
        params, names = buckets[(is_pre, no_decay)]
        mult = float(pretrained_lr_mult) if is_pre else 1.0
        groups.append({
            "params": params,
            "names": names,
            "name": f"{'pretrained' if is_pre else 'new'}_{'no_decay' if no_decay else 'decay'}",
            "lr": lr * mult,
            "lr_mult": mult,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "wd_exclude": no_decay,
        })
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen or excluded")
    return groups


def tokens_per_sample(
    d_target: int, image_size: Sequence[int], patch_size: int | Sequence[int], tubelet_size: int
) -> int:
    """Number of patch tokens of one volume ``[C, d_target, H, W]``: ``(D/t) * (H/p) * (W/p)``."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    h, w = image_size
    return (int(d_target) // int(tubelet_size)) * (int(h) // ph) * (int(w) // pw)


def accumulation_for_tokens(tokens_per_step: int, batch_size: int, tokens_in_sample: int) -> int:
    """Micro-batches per optimizer step so that a step sees about ``tokens_per_step`` tokens.

    ``ceil(tokens_per_step / (batch_size * tokens_in_sample))``, at least 1. Example: 16 slices, tubelet 2,
    128x128 at patch 16 -> 512 tokens per sample; batch 4 and ``tokens_per_step=8192`` -> 4 micro-batches; halving
    ``d_target`` to 8 -> 256 tokens per sample -> 8 micro-batches: the same 8192 tokens per step.
    """
    if tokens_per_step <= 0 or batch_size <= 0 or tokens_in_sample <= 0:
        raise ValueError("tokens_per_step, batch_size and tokens_in_sample must be positive")
    return max(1, math.ceil(tokens_per_step / (batch_size * tokens_in_sample)))
