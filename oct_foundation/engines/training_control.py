"""Ignite handlers that steer training and act on every rank (so DDP replicas stay in step): per-epoch seeding of the
sampler, workers and random transforms, stopping on a NaN loss, and progressive unfreezing of the encoder.

Each handler has ``attach(engine)`` so that a bundle lists it in ``train#handlers``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

from oct_foundation.engines.runs import process_rank

__all__ = ["EpochSeed", "TerminateOnNanLoss", "ProgressiveUnfreezing"]

logger = logging.getLogger("oct_foundation.engines")


class EpochSeed:
    """Seed every random source at the start of each epoch from ``seed + epoch``.

    The data order (``RandomSampler`` draws its seed from the global torch RNG when the epoch's iterator is
    made, after ``EPOCH_STARTED``), the worker seeds, and the random transforms (``DepthSubsampled`` phase,
    crops) then depend only on the epoch number, so a run resumed from an epoch checkpoint sees exactly the
    batches the uninterrupted run saw. ``transform``: the dataset's transform (``set_random_state`` is called).
    """

    def __init__(self, seed: int = 0, transform: Any = None) -> None:
        self.seed = int(seed)
        self.transform = transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        import random

        import numpy as np

        s = (self.seed + int(engine.state.epoch)) % (2**32)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=s)


class TerminateOnNanLoss:
    """Stops training when the iteration loss is NaN or infinite (Ignite ``TerminateOnNan`` on ``output["loss"]``)."""

    def __init__(self, key: str = "loss") -> None:
        self.key = key

    def _loss(self, output):
        return output[self.key] if isinstance(output, Mapping) else output

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import TerminateOnNan

        engine.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=self._loss))


class ProgressiveUnfreezing:
    """Gradual unfreezing of a ViT encoder, applied at the start of every epoch from the (0-based) epoch alone,
    so it is the same after a resume.

    Units from the input side: ``patch_embed``, ``blocks.0`` ... Until ``start_epoch`` the patch embedding and
    the first ``freeze_first_n`` blocks are frozen (phase 1). From ``start_epoch`` one unit is unfrozen every
    ``every`` epochs, the deepest frozen block first (``blocks.{n-1}``, ..., ``blocks.0``, then ``patch_embed``),
    until everything trains (final phase). ``every <= 0`` keeps the initial freezing for the whole run.

    The optimizer must already hold the frozen parameters (``build_param_groups(..., exclude_frozen=False)``):
    AdamW ignores parameters without gradients, so they start moving when unfrozen. It acts on every rank of a
    distributed run (only rank 0 logs), so every DDP replica rebuilds its wrapper at the same epoch.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        freeze_first_n: int,
        start_epoch: int = 0,
        every: int = 1,
        freeze_patch_embed: bool = True,
    ) -> None:
        self.encoder = encoder
        self.freeze_first_n = int(freeze_first_n)
        depth = len(encoder.blocks)
        if not 0 <= self.freeze_first_n <= depth:
            raise ValueError(f"freeze_first_n must be in [0, {depth}], got {freeze_first_n}")
        self.start_epoch = int(start_epoch)
        self.every = int(every)
        self.freeze_patch_embed = bool(freeze_patch_embed) and self.freeze_first_n > 0
        self.history: list[tuple[int, list[str]]] = []

    def initial_frozen(self) -> list[str]:
        """Frozen units of phase 1, from the input side."""
        units = ["patch_embed"] if self.freeze_patch_embed else []
        return units + [f"blocks.{i}" for i in range(self.freeze_first_n)]

    def unfreeze_order(self) -> list[str]:
        """The order in which units are unfrozen: deepest frozen block first, patch embedding last."""
        return list(reversed(self.initial_frozen()))

    def frozen_at(self, epoch: int) -> list[str]:
        """Frozen units during the 0-based ``epoch``."""
        frozen = self.initial_frozen()
        if self.every <= 0 or epoch < self.start_epoch:
            return frozen
        n_unfrozen = 1 + (epoch - self.start_epoch) // self.every
        return frozen[: max(0, len(frozen) - n_unfrozen)]

    def apply(self, epoch: int) -> list[str]:
        """Set ``requires_grad`` of every unit for the 0-based ``epoch``; returns the frozen units."""
        from oct_foundation.networks.freezing import encoder_units

        frozen = set(self.frozen_at(epoch))
        for name, params in encoder_units(self.encoder):
            for p in params:
                p.requires_grad_(name not in frozen)
        return sorted(frozen, key=lambda n: -1 if n == "patch_embed" else int(n.split(".")[1]))

    def attach(self, engine: Engine) -> None:
        # every rank: the model changes, and under DDP all ranks must rebuild their wrapper at the same epoch
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)

    def _epoch_started(self, engine: Engine) -> None:
        epoch0 = engine.state.epoch - 1
        before = self.frozen_at(epoch0 - 1) if epoch0 > 0 else None
        frozen = self.apply(epoch0)
        self.history.append((epoch0, frozen))
        if process_rank() == 0 and (before is None or before != frozen):
            logger.info("epoch %d: frozen encoder units %s", engine.state.epoch, frozen or "none")
