"""Nothing finished is replaced silently: the one check every training config runs before any work.

Every training config (pretraining, segmentation, classification, latent-diffusion autoencoder and diffusion)
declares ``resume`` and ``overwrite`` and runs ``@training_run`` (this module's :func:`start_training_run`) as the
item right after ``check_cli`` in its ``initialize`` list:

- a fresh run (``resume`` empty) into a place that already holds ``model_path`` or checkpoints
  (``<ckpt_dir>/checkpoint_<epoch>.pt``) refuses, naming what is there and saying to pass ``--resume latest`` or
  ``--overwrite true``; with ``--overwrite true`` the old checkpoints are removed first (so that a later
  ``--resume latest`` can never pick up the replaced run's higher epoch) and ``model_path`` is rewritten when the
  new run completes;
- every checkpoint carries the run's identity (``run``: ``run_id`` and the settings it was computed from, see
  :func:`run_settings`); ``--resume latest`` takes the highest epoch in ``ckpt_dir`` and refuses it when it belongs
  to another run config, naming both run ids and the settings that differ; an explicit ``--resume <path>`` of
  another config is loaded with a warning that lists the differences;
- ``ckpt_dir``, ``model_path`` and ``--resume`` paths may be fsspec URLs (``gs://``, ``memory://``): listed, read and
  written through :mod:`oct_foundation.io`, never turned into a local folder named ``gs:`` or ``memory:``.

The identity is a hash of the top-level settings of the running config (the values after the command line),
without the keys that may change between a run and its continuation: where things are read and written
(``bundle_root``, ``dataset_dir``, ``output_dir``, ``ckpt_dir``, ...), how long it runs (``num_epochs``), and how it is
watched or fed (``progress_bar``, ``num_workers``, ``val_interval``, ``save_interval``, ...); see
:data:`NOT_IN_RUN_ID`. Expressions (``$...``) and components (``_target_``) are not hashed; the settings they are
built from are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
from typing import Any, Mapping

from oct_foundation import io
from oct_foundation.errors import CheckpointError

__all__ = ["process_rank", "process_world_size", "wrap_ddp", "NOT_IN_RUN_ID", "TrainingRun", "run_settings", "run_id_of", "start_training_run",
           "checkpoint_run", "find_checkpoints"]

logger = logging.getLogger("oct_foundation.engines")

# top-level keys that do not change what a run computes, or may differ between a run and its continuation
NOT_IN_RUN_ID = frozenset({
    # where things are read and written
    "bundle_root", "dataset_dir", "datalist", "output_dir", "ckpt_dir", "log_dir", "models_dir", "model_path",
    "eval_dir", "latent_dir", "encoder_path", "pretrained_path", "autoencoder_path",
    # how long it runs, how it is continued or replaced
    "num_epochs", "resume", "resume_path", "overwrite",
    # how it is watched, fed and placed
    "progress_bar", "num_workers", "cache_rate", "log_interval", "val_interval", "save_interval", "n_saved",
    "rank_interval", "rank_max_volumes", "rank_warn_below", "rank_warn_min_std", "mse_threshold", "val_batch_size", "device",
    "dist_backend", "backend", "ddp_kwargs", "ddp_device_ids", "compile_mode", "attention_backend",
    "activation_checkpointing",
    # input checks (they decide which items are read, not how the model is trained)
    "skip_bad_items", "max_voxels", "assume_spacing", "allow_non_oct",
    # sampling / inference settings of configs merged with training (latent diffusion)
    "num_inference_steps", "num_samples", "sample_batch_size", "num_real", "real_key",
    # the config's own machinery
    "imports", "initialize", "run", "training", "finalize", "train", "validate", "training_run", "checked_data",
})

_CKPT_RE = re.compile(r"_(\d+)\.pt$")


def _is_literal(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip()[:1] not in ("$", "@", "%")
    if isinstance(value, (bool, int, float)) or value is None:
        return True
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return "_target_" not in value and all(_is_literal(v) for v in value.values())
    return False


def run_settings(config: Mapping[str, Any]) -> dict:
    """The settings that identify a run: top-level literal values of ``config`` outside :data:`NOT_IN_RUN_ID`."""
    return {str(k): config[k] for k in sorted(config, key=str)
            if not str(k).startswith("_") and str(k) not in NOT_IN_RUN_ID and _is_literal(config[k])}


def run_id_of(settings: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``settings`` (sorted JSON)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> str:
    keys = sorted(set(old) | set(new))
    diff = [f"{k}: {old.get(k, '<absent>')!r} (checkpoint) vs {new.get(k, '<absent>')!r} (this run)"
            for k in keys if json.dumps(old.get(k), default=str) != json.dumps(new.get(k), default=str)]
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(diff[:limit]) + more if diff else "no differing setting recorded"


def find_checkpoints(ckpt_dir: str, prefix: str = "checkpoint") -> list[tuple[int, str]]:
    """``[(epoch, path)]`` of the ``<prefix>_<epoch>.pt`` files in ``ckpt_dir`` (local or URL), by epoch."""
    if not ckpt_dir or not io.exists(ckpt_dir) or not io.isdir(ckpt_dir):
        return []
    found = []
    for f in io.list_files(ckpt_dir, suffixes=(".pt",)):
        name = posixpath.basename(f) if io.is_url(f) else os.path.basename(f)
        m = _CKPT_RE.search(name)
        if name.startswith(f"{prefix}_") and m and name == f"{prefix}_{m.group(1)}.pt":
            found.append((int(m.group(1)), f))
    return sorted(found)


def checkpoint_run(path: str) -> dict | None:
    """The ``run`` entry (``run_id``, ``settings``) of a training checkpoint, ``None`` when it has none.

    Read with :func:`oct_foundation.io.torch_load` (weights only; code, text or junk are refused naming the file);
    local files are memory-mapped, so only the small ``run`` entry is read from disk."""
    state = io.torch_load(path, mmap=not io.is_url(path))
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not a training checkpoint (a {type(state).__name__}, not a dict of states)")
    run = state.get("run")
    return dict(run) if isinstance(run, Mapping) else None


def process_rank() -> int:
    """This process's rank: the initialised process group's, else ``$RANK`` (set by ``torchrun`` before the group
    exists), else 0. The one rank check of the package: rank 0 writes, logs and prints."""
    import torch

    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def process_world_size() -> int:
    """Processes in the initialised process group, else 1 (ranks only gather once the group exists)."""
    import torch

    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def wrap_ddp(module, device=None, **ddp_kwargs):
    """``DistributedDataParallel(module)``: the one DDP wrap of the package (multi-GPU configs and
    :class:`~oct_foundation.engines.jepa_trainer.JEPATrainer` call it). On a CUDA ``device`` the wrapper gets
    ``device_ids=[device]`` (unless given); on the CPU (gloo) none. ``None`` stays ``None`` (an optional module, such
    as a discriminator that is not used). The wrapper only runs the forward pass: networks, checkpoints and exports
    keep the plain module and its parameter names."""
    if module is None:
        return None
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if device is not None and torch.device(device).type == "cuda" and "device_ids" not in ddp_kwargs:
        ddp_kwargs["device_ids"] = [torch.device(device)]
    return DistributedDataParallel(module, **ddp_kwargs)


class TrainingRun:
    """The identity of a training run and where it resumes from.

    ``state_dict()`` is what every checkpoint stores under ``run`` (plain strings and numbers, loadable with
    ``weights_only=True``); ``resume_path`` is the checkpoint to continue (``""``: a fresh start)."""

    def __init__(self, run_id: str | None, settings: Mapping[str, Any] | None = None, resume_path: str = "",
                 ckpt_dir: str = "", model_path: str = "") -> None:
        self.run_id = run_id
        self.settings = dict(settings or {})
        self.resume_path = str(resume_path or "")
        self.ckpt_dir = str(ckpt_dir or "")
        self.model_path = str(model_path or "")

    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "settings": dict(self.settings)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Checks that a resumed checkpoint belongs to this run (the check itself is made before any work, in
        :func:`start_training_run`); keeps this run's identity."""
        other = state.get("run_id") if isinstance(state, Mapping) else None
        if other and self.run_id and other != self.run_id:
            logger.warning("resumed a checkpoint of run %s into run %s", other, self.run_id)

    def __repr__(self) -> str:
        return f"TrainingRun(run_id={self.run_id!r}, resume_path={self.resume_path!r})"


def _config_of_running_workflow() -> Mapping[str, Any] | None:
    from oct_foundation.config import running_config

    return running_config()


def start_training_run(ckpt_dir: str, model_path: str = "", resume: Any = "", overwrite: Any = False,
                       prefix: str = "checkpoint", config: Mapping[str, Any] | None = None) -> TrainingRun:
    """Check, before any work, that this training run replaces nothing silently; returns its :class:`TrainingRun`.

    Args:
        ckpt_dir: where the run writes ``<prefix>_<epoch>.pt`` (local path or fsspec URL).
        model_path: the finished model the run exports (``models/model.pt``); ``""`` if none.
        resume: ``""`` (fresh run), ``"latest"`` (the highest epoch in ``ckpt_dir``, which must be of this run's
            config) or a checkpoint path/URL.
        overwrite: allow a fresh run over an existing ``model_path`` or checkpoints (the old checkpoints are
            removed); ``true/false`` as typed on a command line.
        config: the settings to identify the run by; default: the config of the running bundle workflow.

    Raises:
        CheckpointError: a fresh run over existing results without ``overwrite``; ``--resume latest`` of a
            checkpoint of another run config (both run ids and the differing settings named); a resume file
            that is missing, or not a plain-weights checkpoint.
    """
    from oct_foundation.config import parse_bool

    overwrite = parse_bool(overwrite, "overwrite")
    resume = "" if resume is None else str(resume).strip()
    if config is None:
        config = _config_of_running_workflow()
    settings = run_settings(config) if config is not None else {}
    run_id = run_id_of(settings) if config is not None else None
    ckpt_dir, model_path = str(ckpt_dir or ""), str(model_path or "")
    checkpoints = find_checkpoints(ckpt_dir, prefix)
    model_exists = bool(model_path) and io.exists(model_path)

    if resume.lower() in ("latest", "auto", "true"):
        if checkpoints:
            path = checkpoints[-1][1]
            found = checkpoint_run(path)
            if found is None or not found.get("run_id"):
                raise CheckpointError(path, "--resume latest: this checkpoint records no run id, so it cannot be "
                                            "told apart from another run's; pass its path (--resume " + path +
                                            ") to continue it anyway, or --overwrite true without --resume to "
                                            "start afresh")
            if run_id is not None and found["run_id"] != run_id:
                raise CheckpointError(path, f"--resume latest: this checkpoint belongs to run {found['run_id']}, "
                                            f"this run's config is run {run_id} ({_differences(found.get('settings') or {}, settings)}); "
                                            "resume with the checkpoint's settings, pass its path with --resume "
                                            "to continue it anyway, or start afresh with --overwrite true "
                                            "(without --resume) or another bundle_root/ckpt_dir")
            logger.info("run %s: resuming from %s", run_id, path)
            return TrainingRun(run_id, settings, path, ckpt_dir, model_path)
        if model_exists and not overwrite:
            raise CheckpointError(model_path, f"--resume latest: no checkpoint to resume in {ckpt_dir}, and this "
                                              "finished model would be replaced by a fresh run; pass --overwrite "
                                              "true to replace it")
        logger.info("run %s: --resume latest found no checkpoint in %s; starting afresh", run_id, ckpt_dir)
        return TrainingRun(run_id, settings, "", ckpt_dir, model_path)

    if resume:
        if not io.exists(resume):
            raise CheckpointError(resume, "checkpoint to resume from not found")
        found = checkpoint_run(resume)
        if found and run_id is not None and found.get("run_id") and found["run_id"] != run_id:
            logger.warning("%s: resuming a checkpoint of run %s into run %s (%s)", resume, found["run_id"], run_id,
                           _differences(found.get("settings") or {}, settings))
        return TrainingRun(run_id, settings, resume, ckpt_dir, model_path)

    existing = ([model_path] if model_exists else []) + [p for _, p in checkpoints]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise CheckpointError(existing[0], f"a fresh training run would replace what is already there ({shown}); "
                                           "pass --resume latest to continue that run, or --overwrite true to "
                                           "replace it")
    if existing and process_rank() == 0:
        for _, p in checkpoints:
            io.remove(p)
        logger.warning("--overwrite true: removed %d old checkpoint(s) from %s; %s", len(checkpoints), ckpt_dir,
                       f"{model_path} is replaced when this run completes" if model_exists else "")
    return TrainingRun(run_id, settings, "", ckpt_dir, model_path)
