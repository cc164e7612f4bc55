"""Ignite handlers that watch a run without changing it: the progress bar, statistics / TensorBoard logging (loss, LR,
EMA momentum, tokens/s, peak memory, slice-index histograms; MONAI's ``StatsHandler`` and
``TensorBoardStatsHandler`` as :class:`RankZeroStatsHandler` and :class:`RankZeroTensorBoardStatsHandler`) and the
representation-collapse monitor (effective rank of the encoders' tokens and pooled features). Each knows its rank
(:func:`~oct_foundation.engines.runs.process_rank`): rank 0 logs and writes, the others attach nothing, so a
multi-GPU config lists the same handlers as the single-process one.

Each handler has ``attach(engine)`` so that a bundle lists it in ``train#handlers``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler, StatsHandler, TensorBoardStatsHandler

from oct_foundation.engines.runs import process_rank

__all__ = ["ProgressBarHandler", "RankZeroStatsHandler", "RankZeroTensorBoardStatsHandler", "RankZeroLrScheduleHandler",
           "peak_memory_mb",
           "slice_indices_of", "JEPAStatsLogger", "RepresentationRankMonitor"]

logger = logging.getLogger("oct_foundation.engines")


def _scalar(v) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


class _TensorBoardWriter:
    """A ``SummaryWriter`` on ``self.log_dir``, created on first use (``self._writer`` may be given instead)."""

    log_dir: str | None = None
    _writer: Any = None

    @property
    def writer(self):
        if self._writer is None and self.log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer


class ProgressBarHandler:
    """Ignite ``ProgressBar`` showing the given output keys (e.g. loss) for each iteration (rank 0 only)."""

    def __init__(self, output_keys: Sequence[str] = ("loss",), persist: bool = False) -> None:
        self.output_keys = tuple(output_keys)
        self.persist = persist

    def _transform(self, output) -> dict:
        if not isinstance(output, Mapping):
            return {}
        return {k: _scalar(output[k]) for k in self.output_keys if k in output}

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        if process_rank() != 0:
            return
        ProgressBar(persist=self.persist).attach(engine, output_transform=self._transform)


class RankZeroStatsHandler(StatsHandler):
    """MONAI's ``StatsHandler`` (same arguments), attached on rank 0 only: the other ranks of a distributed run log
    nothing (without it, each rank logs the same loss lines)."""

    def attach(self, engine: Engine) -> None:
        if process_rank() == 0:
            super().attach(engine)


class RankZeroLrScheduleHandler(LrScheduleHandler):
    """MONAI's ``LrScheduleHandler`` (same arguments): the scheduler steps on every rank (each replica keeps its
    own optimizer), the learning rate is printed (``print_lr``) on rank 0 only."""

    def attach(self, engine: Engine) -> None:
        self.print_lr = bool(self.print_lr) and process_rank() == 0
        super().attach(engine)


#: stands in for the ``SummaryWriter`` on ranks other than 0, which never write (MONAI would create one, and its
#: event file, when given none)
_NO_WRITER = object()


class RankZeroTensorBoardStatsHandler(TensorBoardStatsHandler):
    """MONAI's ``TensorBoardStatsHandler`` (same arguments), on rank 0 only: the other ranks of a distributed run
    neither create a ``SummaryWriter`` (no event file) nor attach."""

    def __init__(self, summary_writer: Any = None, log_dir: str = "./runs", **kwargs: Any) -> None:
        self.active = process_rank() == 0
        super().__init__(summary_writer if self.active else _NO_WRITER, log_dir, **kwargs)

    def attach(self, engine: Engine) -> None:
        if self.active:
            super().attach(engine)


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory in MiB (:func:`oct_foundation.metrics.convergence.peak_memory_bytes`: CUDA
    ``max_memory_allocated`` on a CUDA device, else the process's peak RSS)."""
    from oct_foundation.metrics.convergence import peak_memory_bytes

    return peak_memory_bytes(device) / 2**20


def slice_indices_of(batch, key: str = "image") -> torch.Tensor | None:
    """All slice indices chosen by depth subsampling in a collated batch (meta ``slice_indices``), flattened;
    None when the batch has none."""
    if not isinstance(batch, Mapping) or key not in batch:
        return None
    metas = []
    img = batch[key]
    if hasattr(img, "meta"):
        metas.append(img.meta)
    md = batch.get(f"{key}_meta_dict")
    if isinstance(md, Mapping):
        metas.append(md)
    for meta in metas:
        v = meta.get("slice_indices") if isinstance(meta, Mapping) else None
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            parts = [torch.as_tensor(x).reshape(-1) for x in v]
            if not parts:
                continue
            return torch.cat(parts).long()
        return torch.as_tensor(v).reshape(-1).long()
    return None


class JEPAStatsLogger(_TensorBoardWriter):
    """Logs training statistics every ``interval`` iterations and per epoch, to the Python logger and, when
    ``log_dir`` is given, to TensorBoard.

    Per iteration: loss, LR, EMA momentum, tokens/s (tokens of the iteration / wall time since the previous
    iteration ended), peak memory (MiB). Per epoch: mean loss and a histogram of the slice indices kept by depth
    subsampling (batch meta ``slice_indices``). The latest values are kept in ``engine.state.metrics`` under
    ``train_<name>`` so that other handlers can read them, and the per-iteration losses in ``self.losses``.
    Under ``torch.distributed`` only rank 0 logs and writes TensorBoard events.
    """

    def __init__(
        self,
        log_dir: str | None = None,
        interval: int = 1,
        image_key: str = "image",
        name: str = "oct_foundation.engines",
        summary_writer: Any = None,
    ) -> None:
        self.log_dir = log_dir
        self.interval = max(1, int(interval))
        self.image_key = image_key
        self.logger = logging.getLogger(name)
        self._writer = summary_writer
        self._t_last: float | None = None
        self._epoch_losses: list[float] = []
        self._slices: list[torch.Tensor] = []
        self.losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        if process_rank() != 0:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _epoch_started(self, engine: Engine) -> None:
        self._t_last = time.perf_counter()
        self._epoch_losses = []
        self._slices = []

    def _iteration_completed(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, Mapping) or "loss" not in out:
            return
        now = time.perf_counter()
        dt = max(now - (self._t_last or now), 1e-9)
        self._t_last = now
        stats = {
            "loss": _scalar(out["loss"]),
            "lr": float(out.get("lr", float("nan"))),
            "ema_momentum": float(out.get("ema_momentum", float("nan"))),
            "tokens_per_s": float(out.get("tokens", 0)) / dt,
            "peak_memory_mb": peak_memory_mb(getattr(engine.state, "device", None)),
        }
        self.losses.append(stats["loss"])
        self._epoch_losses.append(stats["loss"])
        for k, v in stats.items():
            engine.state.metrics[f"train_{k}"] = v
        s = slice_indices_of(engine.state.batch, self.image_key)
        if s is not None:
            self._slices.append(s.cpu())
        it = engine.state.iteration
        if it % self.interval == 0:
            self.logger.info(
                "epoch %d iter %d: loss %.5f lr %.3e ema %.5f tokens/s %.0f peak_mem %.0f MiB",
                engine.state.epoch, it, stats["loss"], stats["lr"], stats["ema_momentum"],
                stats["tokens_per_s"], stats["peak_memory_mb"],
            )
            w = self.writer
            if w is not None:
                for k, v in stats.items():
                    w.add_scalar(f"train/{k}", v, it)

    def _epoch_completed(self, engine: Engine) -> None:
        if not self._epoch_losses:
            return
        mean = sum(self._epoch_losses) / len(self._epoch_losses)
        engine.state.metrics["train_epoch_loss"] = mean
        self.logger.info("epoch %d: mean loss %.5f", engine.state.epoch, mean)
        w = self.writer
        if w is not None:
            w.add_scalar("train/epoch_loss", mean, engine.state.epoch)
            if self._slices:
                w.add_histogram("train/slice_indices", torch.cat(self._slices), engine.state.epoch)
            w.flush()

    def _completed(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.flush()


COLLAPSE_DOC = "bundles/oct_vjepa_pretrain/docs/README.md"


def _random_transforms(transform: Any) -> list:
    """MONAI ``Randomizable`` transforms reachable from ``transform`` (nested ``Compose`` lists included)."""
    from monai.transforms import Randomizable

    found, stack, seen = [], [transform], set()
    while stack:
        t = stack.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, Randomizable) and hasattr(t, "R"):
            found.append(t)
        inner = getattr(t, "transforms", None)
        if isinstance(inner, (list, tuple)):
            stack.extend(inner)
    return found


class _NotEnoughData(ValueError):
    """Too few volumes or tokens for an effective-rank check."""


class _RandomStateGuard:
    """Saves every random state that drawing a few batches could move and puts it back on exit: torch (CPU and
    CUDA), NumPy, Python ``random`` and the ``R`` generators of the loader's random MONAI transforms (a shuffled
    loader draws its order from the torch RNG; random transforms in the main process advance their own ``R``)."""

    def __init__(self, data_loader: Any) -> None:
        dataset = getattr(data_loader, "dataset", None)
        self.transforms = _random_transforms(getattr(dataset, "transform", None))

    def __enter__(self) -> "_RandomStateGuard":
        import random

        import numpy as np

        self.torch_state = torch.random.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.np_state = np.random.get_state()
        self.py_state = random.getstate()
        self.transform_states = [t.R.get_state() for t in self.transforms]
        return self

    def __exit__(self, *exc) -> None:
        import random

        import numpy as np

        torch.random.set_rng_state(self.torch_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)
        np.random.set_state(self.np_state)
        random.setstate(self.py_state)
        for t, st in zip(self.transforms, self.transform_states):
            t.R.set_state(st)


class RepresentationRankMonitor(_TensorBoardWriter):
    """Watches for dimensional collapse of the V-JEPA encoders during pretraining.

    Every ``interval`` epochs (``Events.EPOCH_COMPLETED``; ``interval <= 0`` disables it) up to ``max_volumes``
    volumes of ``data_loader`` (batches ``{image_key: [B, C, D, H, W]}``) go through
    ``engine.network.target_encoder`` and ``engine.network.encoder`` (full volumes, no masks, eval mode,
    ``torch.no_grad()``, on ``engine.state.device``). All tokens of each encoder are stacked into ``[sum N, E]``
    and scored with :func:`oct_foundation.metrics.representation.effective_rank`: participation ratio and RankMe.
    The mean-pooled feature of each volume (what the downstream bundles use) is scored too: the participation
    ratio and RankMe of the ``[volumes, E]`` matrix (``*_pooled_effective_rank``, ``*_pooled_rankme``; at most
    ``volumes - 1``, so give
    ``max_volumes`` well above the rank to be checked) and the smallest per-dimension standard deviation over the
    volumes (``*_min_feature_std``; a dimension that no longer varies between volumes is dead), and the smallest
    per-dimension standard deviation over all tokens (``*_token_min_std``).

    Results go to ``engine.state.metrics`` (the names in ``METRICS``, each for ``target`` and ``context``), to
    the log (one INFO line per check), to TensorBoard as ``<tag_prefix>/<name>`` with the epoch as step when
    ``log_dir`` is set, and ``self.history`` (one dict per check). With ``warn_below`` a token participation ratio
    below it logs a WARNING (representation collapse likely); with ``warn_min_std`` so does a pooled-feature
    dimension whose standard deviation is below it.

    The encoders' train/eval modes and every random state (torch, CUDA, NumPy, ``random``, the loader's random
    MONAI transforms) are restored afterwards, so training proceeds exactly as without the monitor. Under
    ``torch.distributed`` only rank 0 runs it.
    """

    METRICS = ("target_effective_rank", "context_effective_rank", "target_rankme", "context_rankme",
               "target_pooled_effective_rank", "context_pooled_effective_rank", "target_pooled_rankme",
               "context_pooled_rankme", "target_min_feature_std",
               "context_min_feature_std", "target_token_min_std", "context_token_min_std")

    def __init__(
        self,
        data_loader: Any,
        interval: int = 1,
        max_volumes: int = 8,
        log_dir: str | None = None,
        warn_below: float | None = None,
        image_key: str = "image",
        tag_prefix: str = "collapse",
        warn_min_std: float | None = None,
        name: str = "oct_foundation.engines",
    ) -> None:
        if int(max_volumes) < 1:
            raise ValueError(f"max_volumes must be at least 1, got {max_volumes}")
        self.data_loader = data_loader
        self.interval = int(interval)
        self.max_volumes = int(max_volumes)
        self.log_dir = log_dir
        self.warn_below = None if warn_below is None else float(warn_below)
        self.warn_min_std = None if warn_min_std is None else float(warn_min_std)
        self.image_key = image_key
        self.tag_prefix = tag_prefix
        self.logger = logging.getLogger(name)
        self._writer = None
        self.history: list[dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        if self.interval <= 0 or process_rank() != 0:
            return
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _volumes(self) -> list[torch.Tensor]:
        """Up to ``max_volumes`` volumes of the loader, as the loader's batches ``[b, C, D, H, W]`` (CPU)."""
        from oct_foundation.data.batch import prepare_batch_image

        parts, n = [], 0
        for batch in self.data_loader:
            x = prepare_batch_image(batch, "cpu", image_key=self.image_key)
            parts.append(x[: self.max_volumes - n])
            n += parts[-1].shape[0]
            if n >= self.max_volumes:
                break
        return parts

    @staticmethod
    @torch.no_grad()
    def _tokens(encoder: torch.nn.Module, volumes: list, device) -> tuple[torch.Tensor, torch.Tensor]:
        """All tokens of ``encoder`` over the volumes, ``[sum N, E]``, and their mean per volume, ``[volumes, E]``
        (float32, CPU)."""
        was_training = encoder.training
        encoder.eval()
        try:
            out, pooled = [], []
            for x in volumes:
                tokens = encoder(x.to(device)).float().cpu()  # [b, N, E]
                out.append(tokens.reshape(-1, tokens.shape[-1]))
                pooled.append(tokens.mean(1))
        finally:
            encoder.train(was_training)
        return torch.cat(out), torch.cat(pooled)

    def compute(self, network: torch.nn.Module, device: Any = "cpu") -> dict[str, float]:
        """The four numbers for a ``VJEPA3D`` ``network`` (random states untouched)."""
        from oct_foundation.metrics.representation import effective_rank

        with _RandomStateGuard(self.data_loader):
            volumes = self._volumes()
            if sum(x.shape[0] for x in volumes) < 1:
                raise _NotEnoughData("the data loader gave no volumes")
            feats = {
                "target": self._tokens(network.target_encoder, volumes, device),
                "context": self._tokens(network.encoder, volumes, device),
            }
        if feats["target"][0].shape[0] < 2:
            raise _NotEnoughData(f"{feats['target'][0].shape[0]} token(s); the effective rank needs at least 2")
        out = {}
        nan = float("nan")
        for which, (f, pooled) in feats.items():
            out[f"{which}_effective_rank"] = effective_rank(f, "participation")
            out[f"{which}_rankme"] = effective_rank(f, "rankme")
            many = pooled.shape[0] >= 2  # one volume has no spread between volumes
            out[f"{which}_pooled_effective_rank"] = effective_rank(pooled, "participation") if many else nan
            out[f"{which}_pooled_rankme"] = effective_rank(pooled, "rankme") if many else nan
            out[f"{which}_min_feature_std"] = float(pooled.std(0).min()) if many else nan
            out[f"{which}_token_min_std"] = float(f.std(0).min())
        out["embed_dim"] = int(feats["target"][0].shape[1])
        out["tokens"] = int(feats["target"][0].shape[0])
        out["volumes"] = int(feats["target"][1].shape[0])
        return out

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        device = getattr(engine.state, "device", None) or "cpu"
        try:
            r = self.compute(engine.network, device)
        except _NotEnoughData as e:  # an empty loader is reported, not raised: the monitor never stops training
            self.logger.warning("epoch %d: effective rank not computed: %s", epoch, e)
            return
        for k in self.METRICS:
            engine.state.metrics[k] = r[k]
        self.history.append({"epoch": epoch, **r})
        self.logger.info(
            "epoch %d: effective rank (participation) target %.2f context %.2f, RankMe target %.2f context %.2f "
            "(embedding dim %d, %d tokens); pooled features of %d volumes: effective rank target %.2f context "
            "%.2f, RankMe target %.2f context %.2f, smallest per-dimension std target %.4f context %.4f (tokens: "
            "%.4f / %.4f)",
            epoch, r["target_effective_rank"], r["context_effective_rank"], r["target_rankme"],
            r["context_rankme"], r["embed_dim"], r["tokens"], r["volumes"], r["target_pooled_effective_rank"],
            r["context_pooled_effective_rank"], r["target_pooled_rankme"], r["context_pooled_rankme"],
            r["target_min_feature_std"], r["context_min_feature_std"],
            r["target_token_min_std"], r["context_token_min_std"],
        )
        if self.warn_below is not None:
            for which in ("target", "context"):
                # tokens only: the pooled participation ratio is 3-4 already at random init (a few global
                # directions, intensity and device, carry most of the variance between volumes)
                v = r[f"{which}_effective_rank"]
                if v < self.warn_below:
                    self.logger.warning(
                        "epoch %d: representation collapse is likely: %s encoder effective rank %.2f < %.2f "
                        "(of %d dims); see %s (Watching for collapse)",
                        epoch, which, v, self.warn_below, r["embed_dim"], COLLAPSE_DOC,
                    )
        if self.warn_min_std is not None:
            for which in ("target", "context"):
                v = r[f"{which}_min_feature_std"]
                if v < self.warn_min_std:
                    self.logger.warning(
                        "epoch %d: representation collapse is likely: %s encoder pooled-feature dimension with "
                        "std %.4f < %.4f over %d volumes; see %s (Watching for collapse)",
                        epoch, which, v, self.warn_min_std, r["volumes"], COLLAPSE_DOC,
                    )
        w = self.writer
        if w is not None:
            for k in self.METRICS:
                if r[k] == r[k]:  # NaN (a single volume) is not written
                    w.add_scalar(f"{self.tag_prefix}/{k}", r[k], epoch)
            w.flush()

    def _completed(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
