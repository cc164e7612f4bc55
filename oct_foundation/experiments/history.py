"""Per-epoch history of a bundle run: :class:`MetricsHistory`, the handler a driver appends to a bundle's
``train#handlers`` (optimizer steps, tokens and samples seen, training time, peak memory, the validator's metrics),
and :func:`read_history`."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

from oct_foundation import io


logger = logging.getLogger("oct_foundation.experiments")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _rank() -> int:
    from oct_foundation.engines.runs import process_rank

    return process_rank()


def _world() -> int:
    from oct_foundation.engines.runs import process_world_size

    return process_world_size()


def _finite_float(v) -> float | None:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                return None
            v = v.item()
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None



# ------------------------------------------------------------------------------------------------ history handler
class MetricsHistory:
    """Per-epoch training history as JSON (``{"rows": [...], "complete": bool}``), rewritten atomically each epoch.

    Each row: ``epoch``, ``iteration``, ``step`` (optimizer steps: the JEPA trainer's ``optimizer_step`` output,
    else one per iteration), ``tokens_seen`` (the output's ``tokens`` summed over iterations and ranks; 0 when
    the engine reports none), ``samples_seen``, ``train_s`` (time inside iterations), ``wall_s`` (since start),
    ``peak_memory_mb``, ``train_loss`` (epoch mean), the trainer's scalar metrics (e.g. ``train_tokens_per_s``)
    and, when the ``validator`` ran this epoch, its scalar metrics (e.g. ``val_jepa_loss``, ``val_accuracy``,
    ``auroc``). Attach it after the ``ValidationHandler`` so that the validation of the epoch has run.
    Rank 0 only. A resumed run continues the rows of an existing file.
    """

    def __init__(self, path: str, validator: Any = None) -> None:
        self.path = str(path)
        self.validator = validator
        self.rows: list[dict[str, Any]] = []
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.steps = 0
        self.tokens = 0
        self.samples = 0
        self.train_s = 0.0
        self._t_start = time.perf_counter()
        self._t_iter: float | None = None
        self._losses: list[float] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if _rank() != 0:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self._reset_counters()
        self.rows = []
        start_epoch = int(engine.state.epoch or 0)
        if start_epoch > 0 and io.exists(self.path):  # resumed training: keep the earlier epochs
            old = [r for r in io.load_json(self.path).get("rows", []) if r.get("epoch", 0) <= start_epoch]
            if old:
                self.rows = old
                last = old[-1]
                self.steps, self.tokens = int(last.get("step", 0)), int(last.get("tokens_seen", 0))
                self.samples, self.train_s = int(last.get("samples_seen", 0)), float(last.get("train_s", 0.0))
                self._t_start -= float(last.get("wall_s", 0.0))

    def _iteration_started(self, engine) -> None:
        self._t_iter = time.perf_counter()

    def _iteration_completed(self, engine) -> None:
        if self._t_iter is not None:
            self.train_s += time.perf_counter() - self._t_iter
        out = engine.state.output
        world = _world()
        if isinstance(out, Mapping):
            self.steps += 1 if out.get("optimizer_step", True) else 0
            self.tokens += int(out.get("tokens", 0) or 0) * world
            loss = _finite_float(out.get("loss"))
        else:  # decollated list of per-item dicts (SupervisedTrainer)
            self.steps += 1
            items = list(out) if isinstance(out, (list, tuple)) else []
            loss = _finite_float(items[0].get("loss")) if items and isinstance(items[0], Mapping) else None
        batch = engine.state.batch
        n = 0
        if isinstance(batch, Mapping) and "image" in batch:
            n = int(len(batch["image"]))
        elif isinstance(batch, (list, tuple)):
            n = len(batch)
        self.samples += n * world
        if loss is not None:
            self._losses.append(loss)

    def _epoch_completed(self, engine) -> None:
        from oct_foundation.metrics.convergence import peak_memory_bytes

        row: dict[str, Any] = {
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "step": self.steps,
            "tokens_seen": self.tokens,
            "samples_seen": self.samples,
            "train_s": round(self.train_s, 4),
            "wall_s": round(time.perf_counter() - self._t_start, 4),
            "peak_memory_mb": round(peak_memory_bytes(getattr(engine.state, "device", None)) / 2**20, 2),
        }
        if self._losses:
            row["train_loss"] = sum(self._losses) / len(self._losses)
        self._losses = []
        for k, v in (engine.state.metrics or {}).items():
            f = _finite_float(v)
            if f is not None and k not in row:
                row[k] = f
        val = self.validator
        if val is not None and getattr(val, "state", None) is not None and val.state.epoch == engine.state.epoch:
            for k, v in (val.state.metrics or {}).items():
                f = _finite_float(v)
                if f is not None:
                    row[k if k.startswith("val_") else f"val_{k}"] = f
        self.rows.append(row)
        self._save(complete=False)

    def _completed(self, engine) -> None:
        self._save(complete=True)

    def _save(self, complete: bool) -> None:
        io.save_json({"rows": self.rows, "complete": complete}, self.path)


def read_history(path: str) -> list[dict[str, Any]]:
    """Rows of a :class:`MetricsHistory` file ([] when it does not exist)."""
    if not path or not io.exists(path):
        return []
    return list(io.load_json(path).get("rows", []))
