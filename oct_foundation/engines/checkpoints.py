"""Ignite handlers that keep a run's state: atomic, resumable training checkpoints (local or fsspec URLs), resuming from
them, and the ``models/model.pt`` export with its ``model.json``: at the end of training (:class:`ModelExport`) or
whenever a validation metric improves (:class:`BestModelExport`). Only rank 0 writes.

Each handler has ``attach(engine)`` so that a bundle lists it in ``train#handlers``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

from oct_foundation import io
from oct_foundation.engines.runs import process_rank

__all__ = ["latest_checkpoint", "resolve_resume", "TrainingCheckpoint", "ResumeCheckpoint", "ModelExport",
           "BestModelExport"]

logger = logging.getLogger("oct_foundation.engines")


def latest_checkpoint(save_dir: str, prefix: str = "checkpoint") -> str | None:
    """The checkpoint with the highest epoch number in ``save_dir`` (names ``<prefix>_<epoch>.pt``; a local folder
    or an fsspec URL), or None."""
    from oct_foundation.engines.runs import find_checkpoints

    found = find_checkpoints(save_dir, prefix)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, save_dir: str, prefix: str = "checkpoint") -> str:
    """Checkpoint path to resume from: ``""`` -> none (``""``); ``"latest"`` -> :func:`latest_checkpoint` of
    ``save_dir`` (``""`` when there is none yet); any other value is a path, which must exist."""
    if not resume:
        return ""
    if str(resume).lower() in ("latest", "auto", "true"):
        return latest_checkpoint(save_dir, prefix) or ""
    if not io.exists(resume):
        from oct_foundation.errors import CheckpointError

        raise CheckpointError(resume, "checkpoint to resume from not found")
    return str(resume)


class _URLSaver:
    """Ignite save handler for an fsspec URL folder (``gs://``, ``memory://``): each checkpoint is written with
    :func:`oct_foundation.io.torch_save` (complete or not at all)."""

    def __init__(self, dirname: str) -> None:
        self.dirname = str(dirname).rstrip("/")

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        io.torch_save(checkpoint, io.join(self.dirname, filename))

    def remove(self, filename: str) -> None:
        io.remove(io.join(self.dirname, filename))


class TrainingCheckpoint:
    """Atomic, resumable training checkpoints with Ignite ``Checkpoint`` + ``DiskSaver(atomic=True)`` (local
    folders) or :func:`oct_foundation.io.torch_save` (fsspec URLs such as ``gs://``; never a local folder named
    ``gs:``).

    Saves ``save_dict`` (use ``JEPATrainer.checkpoint_objects()``: network, optimizer, schedulers, trainer state,
    scaler) as ``<save_dir>/<prefix>_<epoch>.pt`` every ``save_interval`` epochs and at the end, keeping the last
    ``n_saved``. Only rank 0 attaches it (:func:`~oct_foundation.engines.runs.process_rank`): the other ranks of a
    distributed run write nothing. Resume with MONAI ``CheckpointLoader`` and the
    same ``save_dict`` (:class:`ResumeCheckpoint` does that for a ``JEPATrainer``).

    ``save_dict=None`` takes ``engine.checkpoint_objects()`` of the engine it is attached to, so that a bundle
    config does not need a reference from the handler list back to the trainer (a circular reference).
    ``run`` (the config's ``@training_run``, a :class:`~oct_foundation.engines.runs.TrainingRun`) is stored in
    every checkpoint under ``run``, so that ``--resume latest`` only continues checkpoints of the same run config.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping | None = None,
        save_interval: int = 1,
        n_saved: int | None = 2,
        prefix: str = "checkpoint",
        save_final: bool = True,
        run: Any = None,
    ) -> None:
        self.save_dir = str(save_dir)
        self.run = run
        self.save_dict = dict(save_dict) if save_dict is not None else None
        self.save_interval = max(1, int(save_interval))
        self.n_saved = n_saved
        self.prefix = prefix
        self.save_final = save_final
        self.checkpoint = None

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import Checkpoint, DiskSaver

        if process_rank() != 0:
            return
        if self.save_dict is None:
            self.save_dict = engine.checkpoint_objects()
        if self.run is not None:
            self.save_dict = {**self.save_dict, "run": self.run}
        if io.is_url(self.save_dir):
            saver = _URLSaver(self.save_dir)
        else:
            saver = DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True)
        self.checkpoint = Checkpoint(
            self.save_dict,
            saver,
            filename_prefix="",
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.epoch,
            filename_pattern=self.prefix + "_{global_step}.{ext}",
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self._save_final)

    def _save(self, engine: Engine) -> None:
        self.checkpoint(engine)

    def _save_final(self, engine: Engine) -> None:
        if engine.state.epoch % self.save_interval != 0:  # the epoch-end save already wrote this epoch
            self.checkpoint(engine)

    @property
    def last_checkpoint(self) -> str | None:
        if self.checkpoint is None or self.checkpoint.last_checkpoint is None:
            return None
        return io.join(self.save_dir, str(self.checkpoint.last_checkpoint))


class ResumeCheckpoint:
    """Resume training from ``load_path`` (see :func:`oct_foundation.engines.runs.start_training_run`) into
    ``load_dict`` (default: the engine's ``checkpoint_objects()``: network, optimizer, schedulers, trainer state,
    scaler) when the engine starts, as MONAI's ``CheckpointLoader`` does (the engine keeps its own ``max_epochs``,
    so a resumed run may train longer). The file is read with :func:`oct_foundation.io.torch_load`: a local path
    or fsspec URL, weights only (a file that would run code, text, an HTML page or junk is refused naming the
    file). An empty ``load_path`` does nothing (fresh start)."""

    def __init__(self, load_path: str | None, load_dict: Mapping | None = None, map_location: Any = "cpu",
                 strict: bool = True) -> None:
        self.load_path = str(load_path) if load_path else ""
        self.load_dict = dict(load_dict) if load_dict is not None else None
        self.map_location = map_location
        self.strict = strict

    def attach(self, engine: Engine) -> None:
        if not self.load_path:
            return
        if self.load_dict is None:
            self.load_dict = engine.checkpoint_objects()
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from ignite.handlers import Checkpoint

        from oct_foundation.errors import CheckpointError

        checkpoint = io.torch_load(self.load_path, map_location=self.map_location)
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(self.load_path, f"not a training checkpoint (a {type(checkpoint).__name__})")
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing and self.strict:
            raise CheckpointError(self.load_path, f"not a checkpoint of this training: no {missing} in it (it has "
                                                  f"{sorted(checkpoint)})")
        prior_max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load={k: v for k, v in self.load_dict.items() if k in checkpoint},
                                    checkpoint=dict(checkpoint), strict=self.strict)
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(self.load_path, f"does not fit this training run ({first})") from None
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise CheckpointError(self.load_path, f"holds epoch {engine.state.epoch}, more than this run's "
                                                  f"num_epochs {prior_max_epochs}; pass a larger --num_epochs to "
                                                  "train further")
        engine.state.max_epochs = prior_max_epochs
        if process_rank() == 0:  # every rank loads; rank 0 says so
            logger.info("resuming from %s (epoch %d)", self.load_path, engine.state.epoch)


class ModelExport:
    """Writes the plain ``state_dict`` of ``network`` to ``path`` (``models/model.pt``) atomically when training
    completes (rank 0 only), and beside it ``model.json``, the network's description
    (:func:`oct_foundation.networks.model_files.save_model`: import path, constructor arguments, versions,
    sha256), from which downstream bundles build the network without being told its shape. The weights load with
    ``torch.load(path, weights_only=True)``.

    ``network_def_args`` / ``target``: the constructor arguments and import path to record, for a network whose
    class does not record them itself (:func:`~oct_foundation.networks.model_files.records_init_args`); ``extra``:
    more fields for the description. A network that records nothing and is given nothing is exported as bare
    weights (any older ``model.json`` beside them is removed).
    """

    def __init__(self, network: torch.nn.Module, path: str, network_def_args: dict | None = None,
                 target: str | None = None, extra: dict | None = None) -> None:
        self.network = network
        self.path = str(path)
        self.network_def_args = network_def_args
        self.target = target
        self.extra = extra

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if process_rank() != 0:
            return
        from oct_foundation.networks.model_files import export_model

        export_model(self.network, self.path, self.network_def_args, self.target, self.extra)
        logger.info("saved %s", self.path)


class BestModelExport:
    """Evaluator handler: when ``metric_name`` improves, write the plain ``state_dict`` of ``network`` to
    ``path`` (``models/model.pt``) atomically (rank 0 only), with the network's description ``model.json``
    beside it (:func:`oct_foundation.networks.model_files.save_model`; the metric under ``extra.best``), plus a
    sidecar ``<path>.json`` with the metric, its value and the trainer epoch. MONAI's ``CheckpointSaver`` writes
    in place, so a crash during the write could leave a truncated best model; this never does. The weights load with ``weights_only=True``.
    """

    def __init__(self, network: torch.nn.Module, path: str, metric_name: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.network = network
        self.path = str(path)
        self.metric_name = metric_name
        self.mode = mode
        self.best: float | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _better(self, value: float) -> bool:
        if value != value:  # NaN never improves
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def __call__(self, engine) -> None:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"metric '{self.metric_name}' not computed (have: {sorted(engine.state.metrics)})")
        value = float(engine.state.metrics[self.metric_name])
        if not self._better(value):
            return
        self.best = value
        if process_rank() != 0:
            return
        from oct_foundation.networks.model_files import export_model

        # a MONAI evaluator run by ValidationHandler carries the trainer's epoch
        info = {"metric": self.metric_name, "value": value, "mode": self.mode, "epoch": int(engine.state.epoch)}
        export_model(self.network, self.path, extra={"best": info})
        io.save_json(info, self.path + ".json")
        logger.info("best %s %.4f: saved %s", self.metric_name, value, self.path)
