"""Depth-subsampling ablation: pretrain once per ``(d_target, strategy)`` cell through the pretrain bundle, evaluate
each cell's encoder on full-depth volumes through the downstream bundles, and tabulate / plot the grid.

Also holds what :mod:`oct_foundation.experiments.compare_init` shares:

* :class:`MetricsHistory`: an Ignite handler that a driver appends to a bundle's ``train#handlers`` (through an
  extra config file) to record, per epoch, optimizer steps, tokens and samples seen, training time, peak memory
  and the validator's metrics into a JSON file (the bundles themselves only log these);
* :class:`BundleRunner`: runs ``python -m monai.bundle run <id> --config_file ... --key value`` in a subprocess
  (or through ``torch.distributed.run`` for several GPUs) with the log captured in the run's folder, or in the
  current process (``mode="inprocess"``, same ``monai.bundle.run`` entry point, used by fast tests);
* :func:`run_pipeline`: pretrain -> (train probe / head, evaluate) per downstream task for one unit (a grid cell
  or a comparison arm), returning a flat record of metrics.

Layout of one cell folder: ``cell.json`` (status, parameters, metrics, error, log paths), ``pretrain/`` (bundle
outputs, ``models/model.pt``, ``history.json``, ``bundle.log``), ``classification/`` and ``segmentation/``
(``history.json``, ``eval/*_metrics.json``, logs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from oct_foundation import io

__all__ = [
    "PRETRAIN_BUNDLE",
    "CLASSIFICATION_BUNDLE",
    "SEGMENTATION_BUNDLE",
    "NETWORK_KEYS",
    "PRESETS",
    "MetricsHistory",
    "BundleRun",
    "BundleRunError",
    "BundleRunner",
    "ExperimentSettings",
    "detect_depth",
    "tokens_per_sample_for",
    "equalized_tokens_per_step",
    "read_history",
    "run_pipeline",
    "load_unit",
    "common_threshold",
    "run_ablation",
    "write_ablation_report",
    "ABLATION_COLUMNS",
    "ensure_dataset",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLES_DIR = REPO_ROOT / "bundles"
PRETRAIN_BUNDLE = "oct_vjepa_pretrain"
CLASSIFICATION_BUNDLE = "oct_disease_classification"
SEGMENTATION_BUNDLE = "oct_layer_segmentation"
TASK_BUNDLES = {"classification": CLASSIFICATION_BUNDLE, "segmentation": SEGMENTATION_BUNDLE}
# encoder keys every bundle must agree on so that the downstream bundles can load the pretrained encoder
NETWORK_KEYS = ("image_size", "patch_size", "tubelet_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "pos_embed")
PRETRAIN_VAL_KEY = "val_jepa_loss"  # JEPAEvaluator's key metric (lower is better)

# Presets: "smoke" runs on a 2-core CPU in minutes on the synthetic cohort; "full" is the plan's grid with the
# bundles' own (paper-size) defaults on real data.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "cohort": {"cases": 20, "size": "small", "seed": 0},
        "d_targets": [8, 16],
        "strategies": ["uniform", "contiguous"],
        "d_target": 8,  # compare_init
        "network": {"image_size": [32, 32], "patch_size": 8, "tubelet_size": 2, "embed_dim": 48, "depth": 2,
                    "num_heads": 2},
        "pretrain": {"predictor_embed_dim": 32, "predictor_depth": 1, "predictor_num_heads": 2, "batch_size": 2,
                     "num_epochs": 3, "warmup_epochs": 1, "learning_rate": 0.002, "num_workers": 0,
                     "progress_bar": False, "log_interval": 5},
        "classification": {"num_epochs": 2, "batch_size": 2, "learning_rate": 0.003, "num_workers": 0,
                           "progress_bar": False},
        "segmentation": {"num_epochs": 1, "batch_size": 2, "learning_rate": 0.003, "num_workers": 0,
                         "progress_bar": False, "decoder_channels": [16, 8]},
    },
    "full": {
        "cohort": None,
        "d_targets": [8, 16, 24, 32, 48, 64],
        "strategies": ["uniform", "contiguous"],
        "d_target": 16,
        "network": {},
        "pretrain": {},
        "classification": {},
        "segmentation": {},
    },
}

logger = logging.getLogger("oct_foundation.experiments")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _rank() -> int:
    from oct_foundation.engines.runs import process_rank

    return process_rank()


def _world() -> int:
    import torch

    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


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


# ------------------------------------------------------------------------------------------------ bundle runner
class BundleRunError(RuntimeError):
    """A bundle run failed; ``log_path`` holds its full output."""

    def __init__(self, log_path: str, message: str) -> None:
        super().__init__(f"{log_path}: {message}")
        self.log_path = log_path
        self.reason = message


@dataclass
class BundleRun:
    """One ``monai.bundle run``: bundle name, run id, the bundle's config files, overrides and where to log.

    ``run_dir`` receives ``bundle.log`` (stdout + stderr), ``overrides.json`` (the extra config file) and, with
    ``history=True``, ``history.json`` written by :class:`MetricsHistory` appended to ``train#handlers``.
    """

    bundle: str
    run_dir: str
    overrides: dict[str, Any] = field(default_factory=dict)
    run_id: str = "training"
    configs: tuple[str, ...] = ("train.json",)
    history: bool = False
    log_name: str = "bundle.log"

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, self.log_name)

    @property
    def history_path(self) -> str:
        return os.path.join(self.run_dir, "history.json")


_CLI_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:-+")


def _cli_value(v: Any) -> str | None:
    """The ``--key value`` text for a scalar that the bundle CLI (python-fire) parses back unchanged, else None
    (such values go into the extra config file instead)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    if isinstance(v, str) and v and set(v) <= _CLI_SAFE and v[0] not in "-+0123456789." and \
            v.lower() not in ("true", "false", "none", "null", "inf", "nan"):
        return v
    return None


def _is_error_line(s: str) -> bool:
    head = s.split(":", 1)[0].strip()
    return " " not in head and head.endswith(("Error", "Exception", "Interrupt")) and ":" in s


def _last_error_line(log_path: str) -> str:
    """The final exception line of a log, with the root cause (the first exception of the chain) when the
    final one wraps it (MONAI wraps instantiation errors)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if _is_error_line(ln)]
    if not errors:
        return lines[-1][:500] if lines else "no output"
    last = errors[-1]
    # the root cause is the first exception line of the last traceback chain
    start = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback")), default=0)
    chain_start = start
    for i in range(start, -1, -1):
        if lines[i].startswith("Traceback"):
            chain_start = i
            if i > 0 and ("direct cause" in lines[i - 1] or "During handling" in lines[i - 1]):
                continue
            break
    root = next((ln for ln in lines[chain_start:] if _is_error_line(ln)), last)
    return (last if root == last else f"{last[:300]} (cause: {root[:300]})")[:700]


def _exception_text(e: BaseException) -> str:
    """``Type: message`` of ``e`` plus its root cause (``__cause__`` / ``__context__`` chain)."""
    def one(x):
        msg = str(x).strip().splitlines()
        return f"{type(x).__name__}: {msg[0] if msg else ''}"

    root, seen = e, set()
    while (root.__cause__ or root.__context__) is not None and id(root) not in seen:
        seen.add(id(root))
        root = root.__cause__ or root.__context__
    text = one(e) if root is e else f"{one(e)[:300]} (cause: {one(root)[:300]})"
    return text[:700]


class BundleRunner:
    """Runs :class:`BundleRun` s and counts them (``launched``: one entry per run started).

    Args:
        bundles_dir: folder holding the bundles (default: the repository's ``bundles/``).
        mode: ``"subprocess"`` (``python -m monai.bundle run ...``, one isolated process per run; the default) or
            ``"inprocess"`` (the same ``monai.bundle.run`` call in this process; faster, for tests).
        nproc_per_node: > 1 launches training runs through ``python -m torch.distributed.run --nproc_per_node N``
            with the bundle's ``multi_gpu_train.json`` (when the bundle has one).
        python: interpreter for subprocesses (default: this one).
        timeout: seconds before a subprocess run is killed (None: no limit).
    """

    def __init__(self, bundles_dir: str | os.PathLike | None = None, mode: str = "subprocess",
                 nproc_per_node: int = 1, python: str | None = None, timeout: float | None = None) -> None:
        if mode not in ("subprocess", "inprocess"):
            raise ValueError(f"mode must be 'subprocess' or 'inprocess', got {mode!r}")
        self.bundles_dir = Path(bundles_dir or DEFAULT_BUNDLES_DIR).resolve()
        self.mode = mode
        self.nproc_per_node = max(1, int(nproc_per_node))
        self.python = python or sys.executable
        self.timeout = timeout
        self.launched: list[dict[str, str]] = []

    def bundle_dir(self, bundle: str) -> Path:
        d = self.bundles_dir / bundle
        if not (d / "configs").is_dir():
            raise FileNotFoundError(f"{d}: bundle not found (no configs/ folder)")
        return d

    def _distributed(self, run: BundleRun) -> bool:
        return (self.nproc_per_node > 1 and run.run_id == "training"
                and (self.bundle_dir(run.bundle) / "configs" / "multi_gpu_train.json").is_file())

    def prepare(self, run: BundleRun) -> tuple[list[str], dict[str, Any]]:
        """Write ``overrides.json`` into the run folder; return the config files and the CLI overrides."""
        cdir = self.bundle_dir(run.bundle) / "configs"
        files = [str(cdir / c) for c in run.configs]
        for f in files:
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{f}: bundle config not found")
        if self._distributed(run):
            files.insert(1, str(cdir / "multi_gpu_train.json"))
        os.makedirs(run.run_dir, exist_ok=True)
        cli: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in run.overrides.items():
            if _cli_value(v) is not None:
                cli[k] = v
            else:
                extra[k] = v
        if run.history:
            with open(cdir / "train.json", encoding="utf-8") as f:
                handlers = json.load(f).get("train", {}).get("handlers", [])
            extra["train#handlers"] = list(handlers) + [{
                "_target_": "oct_foundation.experiments.ablation.MetricsHistory",
                "path": os.path.abspath(run.history_path),
                "validator": "@validate#evaluator",
            }]
        override_file = os.path.join(run.run_dir, "overrides.json")
        io.save_json(extra, override_file)
        files.append(override_file)
        return files, cli

    def command(self, run: BundleRun, files: Sequence[str], cli: Mapping[str, Any]) -> list[str]:
        """The command line of a subprocess run."""
        cdir = self.bundle_dir(run.bundle) / "configs"
        if self._distributed(run):
            cmd = [self.python, "-m", "torch.distributed.run", "--nproc_per_node", str(self.nproc_per_node),
                   "-m", "monai.bundle", "run", run.run_id]
        else:
            cmd = [self.python, "-m", "monai.bundle", "run", run.run_id]
        cmd += ["--config_file", json.dumps(list(files))]  # a list literal, parsed by the CLI
        if (cdir / "metadata.json").is_file():
            cmd += ["--meta_file", str(cdir / "metadata.json")]
        if (cdir / "logging.conf").is_file():
            cmd += ["--logging_file", str(cdir / "logging.conf")]
        for k, v in cli.items():
            cmd += [f"--{k}", _cli_value(v)]
        return cmd

    def __call__(self, run: BundleRun) -> str:
        """Run it; returns the log path. Raises :class:`BundleRunError` (with the log path) on failure."""
        files, cli = self.prepare(run)
        bdir = self.bundle_dir(run.bundle)
        self.launched.append({"bundle": run.bundle, "run_id": run.run_id, "log": run.log_path})
        if self.mode == "subprocess":
            cmd = self.command(run, files, cli)
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            env.setdefault("PYTHONUNBUFFERED", "1")
            with open(run.log_path, "a", encoding="utf-8") as log:
                log.write(f"# {_now()} $ {' '.join(cmd)}\n")
                log.flush()
                try:
                    rc = subprocess.run(cmd, cwd=str(bdir), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        timeout=self.timeout).returncode
                except subprocess.TimeoutExpired:
                    raise BundleRunError(run.log_path, f"timed out after {self.timeout} s") from None
            if rc != 0:
                raise BundleRunError(run.log_path, f"exit status {rc}: {_last_error_line(run.log_path)}")
        else:
            self._run_inprocess(run, files, cli, bdir)
        return run.log_path

    def _run_inprocess(self, run: BundleRun, files, cli, bdir: Path) -> None:
        from monai.bundle import run as bundle_run

        cdir = bdir / "configs"
        kwargs: dict[str, Any] = dict(cli)
        if (cdir / "metadata.json").is_file():
            kwargs["meta_file"] = str(cdir / "metadata.json")
        if (cdir / "logging.conf").is_file():
            kwargs["logging_file"] = str(cdir / "logging.conf")
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        cwd = os.getcwd()
        with open(run.log_path, "a", encoding="utf-8") as log:
            log.write(f"# {_now()} in-process monai.bundle.run({run.run_id!r}, config_file={files}, {cli})\n")
            log.flush()
            try:
                os.chdir(bdir)
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    bundle_run(run.run_id, config_file=list(files), **kwargs)
            except Exception as e:  # noqa: BLE001 - any failure of the run is recorded, like a non-zero exit
                import traceback

                log.write(traceback.format_exc())
                raise BundleRunError(run.log_path, _exception_text(e)) from e
            finally:
                os.chdir(cwd)
                for h in root.handlers[:]:  # handlers the bundle's logging.conf bound to the (closing) log file
                    if h not in saved_handlers:
                        root.removeHandler(h)
                        h.close()
                for h in saved_handlers:
                    if h not in root.handlers:
                        root.addHandler(h)
                root.setLevel(saved_level)


# ------------------------------------------------------------------------------------------------ one unit
@dataclass
class ExperimentSettings:
    """What every unit of an experiment shares.

    Args:
        dataset_dir: the bundles' ``dataset_dir``.
        datalist: datalist file (default: the bundles' ``<dataset_dir>/datalist.json``).
        network: encoder keys given to all three bundles (see ``NETWORK_KEYS``), e.g. a tiny ViT.
        pretrain / classification / segmentation: extra overrides per bundle (epochs, batch size, ...).
        common: overrides for all bundles (e.g. ``device``).
        tasks: downstream tasks to evaluate: ``classification`` and/or ``segmentation``.
        eval_split: datalist split the downstream evaluation runs on (full depth).
        d_full: the nominal full depth (mask-ratio rescaling); None detects it from the data.
    """

    dataset_dir: str
    datalist: str | None = None
    network: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    classification: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)
    common: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = ("classification", "segmentation")
    eval_split: str = "validation"
    d_full: int | None = None

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASK_BUNDLES]
        if bad:
            raise ValueError(f"unknown tasks {bad}; choose from {sorted(TASK_BUNDLES)}")
        self.dataset_dir = os.path.abspath(self.dataset_dir) if not io.is_url(self.dataset_dir) else self.dataset_dir

    @property
    def datalist_path(self) -> str:
        return self.datalist or io.join(self.dataset_dir, "datalist.json")


def detect_depth(datalist: str, key: str = "training", max_items: int = 4) -> int:
    """Largest slice count D among the first ``max_items`` volumes of a datalist split (read with the
    package's readers)."""
    from oct_foundation.data import OCTVolumeReader, load_datalist

    items = load_datalist(datalist, key)[:max_items]
    if not items:
        raise ValueError(f"{datalist}: split '{key}' is empty")
    reader = OCTVolumeReader()
    depth = 0
    for it in items:
        img, _ = reader.get_data(reader.read(it["image"]))
        depth = max(depth, int(img.shape[-3]))  # [..., D, H, W]
    return depth


def _bundle_default(bundle: str, key: str, bundles_dir: Path = DEFAULT_BUNDLES_DIR) -> Any:
    with open(Path(bundles_dir) / bundle / "configs" / "train.json", encoding="utf-8") as f:
        return json.load(f).get(key)


def tokens_per_sample_for(d_target: int, network: Mapping[str, Any], bundles_dir: Path = DEFAULT_BUNDLES_DIR) -> int:
    """Patch tokens of one ``[1, d_target, H, W]`` sample: ``ceil(d/t) * ceil(H/p) * ceil(W/p)`` with the
    pretrain bundle's defaults for keys not in ``network``."""
    def get(k):
        return network[k] if k in network else _bundle_default(PRETRAIN_BUNDLE, k, bundles_dir)

    h, w = get("image_size")
    p, t = int(get("patch_size")), int(get("tubelet_size"))
    return math.ceil(int(d_target) / t) * math.ceil(int(h) / p) * math.ceil(int(w) / p)


def equalized_tokens_per_step(d_targets: Sequence[int], network: Mapping[str, Any], batch_size: int,
                              d_full: int | None = None, bundles_dir: Path = DEFAULT_BUNDLES_DIR) -> int:
    """Tokens per optimizer step shared by every cell: one batch of the largest ``d_target`` (capped at the data's
    depth). Cells with fewer slices accumulate micro-batches until they reach it (the JEPA trainer's
    ``tokens_per_step``)."""
    d_ref = max(int(d) for d in d_targets)
    if d_full:
        d_ref = min(d_ref, int(d_full))
    return int(batch_size) * tokens_per_sample_for(d_ref, network, bundles_dir)


def _task_metrics(task: str, eval_dir: str) -> dict[str, Any]:
    if task == "classification":
        path = os.path.join(eval_dir, "classification_metrics.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: classification evaluation wrote no metrics")
        pooled = io.load_json(path)["pooled"]
        return {"val_acc": pooled.get("accuracy"), "auroc": pooled.get("auroc"), "macro_f1": pooled.get("macro_f1")}
    path = os.path.join(eval_dir, "segmentation_metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: segmentation evaluation wrote no metrics")
    res = io.load_json(path)
    return {"dice": res.get("dice_mean"), "iou": res.get("iou_mean")}


def pretrain_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Resource and convergence numbers of a pretrain history: steps, tokens seen, tokens per step, tokens/s
    (tokens / time inside iterations), peak memory, final and best validation JEPA loss."""
    from oct_foundation.metrics.convergence import best_value, tokens_per_second

    if not history:
        return {}
    last = history[-1]
    steps = int(last.get("step", 0))
    tokens = int(last.get("tokens_seen", 0))
    vals = [(r["step"], r[PRETRAIN_VAL_KEY]) for r in history if PRETRAIN_VAL_KEY in r]
    best = best_value(vals, mode="min") if vals else None
    return {
        "pretrain_steps": steps,
        "tokens_seen": tokens,
        "tokens_per_step_measured": tokens / steps if steps else None,
        "tokens_per_s": tokens_per_second(tokens, float(last.get("train_s", 0.0))),
        "pretrain_train_s": float(last.get("train_s", 0.0)),
        "pretrain_wall_s": float(last.get("wall_s", 0.0)),
        "peak_memory_mb": max(float(r.get("peak_memory_mb", 0.0)) for r in history),
        "final_val_loss": vals[-1][1] if vals else None,
        "best_val_loss": best[1] if best else None,
    }


def run_pipeline(unit_dir: str, settings: ExperimentSettings, runner: BundleRunner, d_target: int,
                 strategy: str = "uniform", pretrain_overrides: Mapping[str, Any] | None = None,
                 record: dict[str, Any] | None = None,
                 on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pretrain one encoder and evaluate it on every task of ``settings`` (full depth).

    ``record`` (updated in place and returned) receives the metrics of each finished stage, so that a failure
    keeps what was measured before it; the failure itself propagates as :class:`BundleRunError`.
    """
    record = record if record is not None else {}
    unit_dir = os.path.abspath(unit_dir)
    shared = {**settings.common, "dataset_dir": settings.dataset_dir, **settings.network,
              "d_target": int(d_target), "depth_strategy": strategy}
    if settings.datalist:
        shared["datalist"] = settings.datalist
    pdir = os.path.join(unit_dir, "pretrain")
    pre = {**shared, "bundle_root": str(runner.bundle_dir(PRETRAIN_BUNDLE)), "output_dir": pdir,
           "models_dir": os.path.join(pdir, "models"), **settings.pretrain, **dict(pretrain_overrides or {})}
    if on_stage:
        on_stage("pretrain")
    # a unit that is not done is run again from its start: its earlier, unfinished results are replaced
    run = BundleRun(PRETRAIN_BUNDLE, pdir, {**pre, "overwrite": True}, history=True)
    record["pretrain_log"] = run.log_path
    record["pretrain_history"] = run.history_path
    runner(run)
    history = read_history(run.history_path)
    if not history:
        raise BundleRunError(run.log_path, "pretraining finished without a history (no epoch completed)")
    record.update(pretrain_summary(history))
    encoder = os.path.join(pdir, "models", "model.pt")
    if not os.path.isfile(encoder):
        raise BundleRunError(run.log_path, f"{encoder}: pretraining exported no model")
    # downstream training and evaluation use the shared datalist (pretrain_overrides may narrow pretraining's)
    down_shared = dict(shared)
    for task in settings.tasks:
        bundle = TASK_BUNDLES[task]
        tdir = os.path.join(unit_dir, task)
        extra = settings.classification if task == "classification" else settings.segmentation
        base = {**down_shared, "bundle_root": str(runner.bundle_dir(bundle)), "output_dir": tdir,
                "models_dir": os.path.join(tdir, "models"), **extra}
        if on_stage:
            on_stage(f"{task} training")
        train = BundleRun(bundle, tdir, {**base, "encoder_source": "model_pt", "encoder_path": encoder,
                                          "use_target_encoder": True, "overwrite": True}, history=True, log_name="train.log")
        record[f"{task}_log"] = train.log_path
        record[f"{task}_history"] = train.history_path
        runner(train)
        model = os.path.join(tdir, "models", "model.pt")
        if not os.path.isfile(model):
            raise BundleRunError(train.log_path, f"{model}: {task} training saved no model")
        if on_stage:
            on_stage(f"{task} evaluation")
        eval_dir = os.path.join(tdir, "eval")
        evaluate = BundleRun(bundle, tdir, {**base, "model_path": model, "eval_split": settings.eval_split,
                                             "eval_dir": eval_dir},
                             run_id="evaluating", configs=("train.json", "evaluate.json"), log_name="evaluate.log")
        record[f"{task}_eval_log"] = evaluate.log_path
        runner(evaluate)
        record.update(_task_metrics(task, eval_dir))
    return record


def load_unit(unit_dir: str) -> dict[str, Any] | None:
    """The ``cell.json`` record of a unit folder, or None."""
    path = os.path.join(unit_dir, "cell.json")
    return io.load_json(path) if os.path.isfile(path) else None


def execute_unit(unit_dir: str, params: Mapping[str, Any], work: Callable[[dict, Callable[[str], None]], Any],
                 label: str,
                 index: int, total: int, printer: Callable[[str], None] = print) -> tuple[dict[str, Any], bool]:
    """Resumable execution of one unit: skip when ``cell.json`` says done, else (re)run ``work(record, stage)``,
    recording ``done`` or ``failed`` (error message, log path) atomically. Returns ``(record, ran)``."""
    old = load_unit(unit_dir)
    if old is not None and old.get("status") == "done":
        printer(f"[{index}/{total}] {label}: done already ({old.get('finished')}), skipped")
        return old, False
    if os.path.isdir(unit_dir):  # an unfinished or failed earlier attempt: start the unit afresh
        shutil.rmtree(unit_dir)
    os.makedirs(unit_dir, exist_ok=True)
    record: dict[str, Any] = {**params, "status": "running", "started": _now(),
                              "attempt": int((old or {}).get("attempt", 0)) + 1}
    io.save_json(record, os.path.join(unit_dir, "cell.json"))
    t0 = time.perf_counter()
    printer(f"[{index}/{total}] {label}: running")

    def stage(name: str) -> None:
        printer(f"[{index}/{total}] {label}: {name} ({time.perf_counter() - t0:.0f} s)")

    try:
        work(record, stage)
        record["status"] = "done"
    except Exception as e:  # noqa: BLE001 - a failed unit is recorded and the experiment goes on
        record["status"] = "failed"
        record["error"] = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
        record["error_log"] = getattr(e, "log_path", None)
    record["finished"] = _now()
    record["elapsed_s"] = round(time.perf_counter() - t0, 2)
    io.save_json(record, os.path.join(unit_dir, "cell.json"))
    if record["status"] == "done":
        printer(f"[{index}/{total}] {label}: done in {record['elapsed_s']:.0f} s")
    else:
        printer(f"[{index}/{total}] {label}: FAILED ({record['error']}); log: {record.get('error_log')}")
    return record, True


def common_threshold(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Default validation-loss threshold: the highest best validation JEPA loss over the finished cells, i.e. the
    level that every cell reached (so that steps-to-threshold compares the same target across cells)."""
    vals = [float(r["best_val_loss"]) for r in records
            if r.get("status") == "done" and r.get("best_val_loss") is not None]
    return max(vals) if vals else None


def add_steps_to_threshold(records: Sequence[dict[str, Any]], threshold: float | None) -> None:
    """Set ``steps_to_thresh`` of each record from its pretrain history (validation JEPA loss <= threshold)."""
    from oct_foundation.metrics.convergence import steps_to_threshold

    for r in records:
        r["threshold"] = threshold
        hist = read_history(r.get("pretrain_history", ""))
        pts = [(h["step"], h[PRETRAIN_VAL_KEY]) for h in hist if PRETRAIN_VAL_KEY in h]
        r["steps_to_thresh"] = steps_to_threshold(pts, threshold, mode="min") if (pts and threshold is not None) \
            else None


ABLATION_COLUMNS = [("D_target", "d_target"), ("Strategy", "strategy"), ("Val Acc", "val_acc"),
                    ("AUROC", "auroc"), ("Dice", "dice"), ("Steps->Thresh", "steps_to_thresh"),
                    ("Tokens/Step", "tokens_per_step"), ("Notes", "notes")]
CSV_COLUMNS = ["d_target", "strategy", "status", "val_acc", "auroc", "macro_f1", "dice", "iou",
               "steps_to_thresh", "threshold", "tokens_per_step", "tokens_per_step_measured", "tokens_per_s",
               "peak_memory_mb", "tokens_seen", "pretrain_steps", "pretrain_train_s", "pretrain_wall_s",
               "final_val_loss", "best_val_loss", "mask_rescale", "d_full", "elapsed_s", "notes", "error",
               "error_log", "cell_dir"]


def _notes(r: Mapping[str, Any]) -> str:
    if r.get("status") != "done":
        return f"{r.get('status', 'not run')}: {r.get('error', '')}".strip()
    parts = []
    if r.get("tokens_per_s") is not None:
        parts.append(f"{float(r['tokens_per_s']):.0f} tok/s")
    if r.get("peak_memory_mb") is not None:
        parts.append(f"peak {float(r['peak_memory_mb']):.0f} MiB")
    if r.get("final_val_loss") is not None:
        parts.append(f"val loss {float(r['final_val_loss']):.4f}")
    return ", ".join(parts)


def write_ablation_report(out_dir: str, records: Sequence[dict[str, Any]], threshold: float | None = None,
                          title: str = "Depth-subsampling ablation", command: str | None = None) -> dict[str, str]:
    """``results.csv``, ``results.md`` and the PNG plots of a grid; returns the written paths."""
    from oct_foundation.experiments.report import markdown_table, plot_curves, plot_metric_vs, write_csv

    thr = threshold if threshold is not None else common_threshold(records)
    add_steps_to_threshold(records, thr)
    for r in records:
        r["notes"] = _notes(r)
    rows = sorted(records, key=lambda r: (str(r.get("strategy")), int(r.get("d_target", 0))))
    paths = {"csv": os.path.join(out_dir, "results.csv"), "markdown": os.path.join(out_dir, "results.md"),
             "vs_d_target": os.path.join(out_dir, "metric_vs_d_target.png"),
             "vs_compute": os.path.join(out_dir, "metric_vs_compute.png"),
             "convergence": os.path.join(out_dir, "pretrain_convergence.png")}
    write_csv(rows, paths["csv"], CSV_COLUMNS)
    metrics = [(k, lab) for k, lab in (("val_acc", "Val Acc"), ("auroc", "AUROC"), ("dice", "Dice"))
               if any(r.get(k) is not None for r in rows)] or [("final_val_loss", "val JEPA loss")]
    plot_metric_vs(rows, "d_target", metrics, "strategy", paths["vs_d_target"], xlabel="D_target (slices)",
                   title="Full-depth evaluation vs pretraining depth")
    compute = [(k, lab) for k, lab in metrics] + [("final_val_loss", "val JEPA loss")]
    # metric vs compute: tokens seen in pretraining (x), and the same against pretraining wall time
    plot_metric_vs(rows, "tokens_seen", compute, "strategy", paths["vs_compute"],
                   xlabel="pretraining tokens seen", title="Metric vs compute (tokens)")
    paths["vs_walltime"] = os.path.join(out_dir, "metric_vs_walltime.png")
    plot_metric_vs(rows, "pretrain_train_s", compute, "strategy", paths["vs_walltime"],
                   xlabel="pretraining time (s)", title="Metric vs compute (wall time)")
    curves = {f"d={r['d_target']} {r['strategy']}": [(h["step"], h[PRETRAIN_VAL_KEY])
                                                     for h in read_history(r.get("pretrain_history", ""))
                                                     if PRETRAIN_VAL_KEY in h] for r in rows}
    plot_curves(curves, paths["convergence"], "optimizer step", "validation JEPA loss",
                title="Pretraining convergence", threshold=thr)
    md = [f"# {title}\n"]
    if command:
        md.append(f"Command: `{command}`\n")
    md.append(markdown_table(rows, ABLATION_COLUMNS))
    md.append(f"\nSteps->Thresh: optimizer steps until the validation JEPA loss reached "
              f"{'%.4f' % thr if thr is not None else 'n/a'} (" +
              ("given threshold" if threshold is not None else "the highest best loss over the finished cells, "
               "i.e. a level every cell reached") + "). Tokens/Step: the equalised tokens per optimizer step. "
              "Val Acc / AUROC / Dice: downstream evaluation on full-depth volumes.\n")
    md.append("\nPlots: `metric_vs_d_target.png`, `metric_vs_compute.png`, `metric_vs_walltime.png`, "
              "`pretrain_convergence.png`.\n")
    io.atomic_write(paths["markdown"], "\n".join(md))
    return paths


def run_ablation(out_dir: str, settings: ExperimentSettings, d_targets: Sequence[int], strategies: Sequence[str],
                 runner: BundleRunner | None = None, threshold: float | None = None, mask_rescale: bool = True,
                 equalize_tokens: bool = True, printer: Callable[[str], None] = print,
                 command: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the ``d_targets x strategies`` grid into ``out_dir/cells/d<D>_<strategy>/`` and write the
    tables and plots. Returns the cell records (one per cell, failed ones included)."""
    runner = runner or BundleRunner()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    d_full = settings.d_full or detect_depth(settings.datalist_path)
    batch = int(settings.pretrain.get("batch_size", _bundle_default(PRETRAIN_BUNDLE, "batch_size", runner.bundles_dir)))
    tps = equalized_tokens_per_step(d_targets, settings.network, batch, d_full, runner.bundles_dir) \
        if equalize_tokens else 0
    cells = [(int(d), s) for d in d_targets for s in strategies]
    printer(f"ablation: {len(cells)} cells ({list(d_targets)} x {list(strategies)}), d_full={d_full}, "
            f"tokens/step={tps or 'batch'}, output {out_dir}")
    records = []
    for i, (d, s) in enumerate(cells, 1):
        unit = os.path.join(out_dir, "cells", f"d{d}_{s}")
        params = {"d_target": d, "strategy": s, "tokens_per_step": tps or None, "mask_rescale": bool(mask_rescale),
                  "d_full": d_full, "cell_dir": unit}

        def work(record, stage, d=d, s=s, unit=unit):
            run_pipeline(unit, settings, runner, d, s, {"d_full": d_full, "mask_rescale": bool(mask_rescale),
                                                        "tokens_per_step": tps}, record=record, on_stage=stage)

        rec, _ = execute_unit(unit, params, work, f"d_target={d} strategy={s}", i, len(cells), printer)
        records.append(rec)
    paths = write_ablation_report(out_dir, records, threshold, command=command)
    done = sum(r.get("status") == "done" for r in records)
    printer(f"ablation: {done}/{len(records)} cells done; table {paths['markdown']}, csv {paths['csv']}")
    return records


# ------------------------------------------------------------------------------------------------ CLI
def ensure_dataset(dataset_dir: str | None, out_dir: str, preset: Mapping[str, Any],
                   printer: Callable[[str], None] = print) -> str:
    """``dataset_dir`` if given, else the preset's synthetic cohort generated once under ``out_dir/cohort``."""
    if dataset_dir:
        return dataset_dir
    cohort = preset.get("cohort")
    if not cohort:
        raise SystemExit("--dataset-dir is required with this preset (it has no synthetic cohort)")
    path = os.path.join(os.path.abspath(out_dir), "cohort")
    if not os.path.isfile(os.path.join(path, "datalist.json")):
        from oct_foundation.data.synthetic import generate_cohort

        printer(f"generating the synthetic cohort ({cohort}) in {path}")
        if os.path.isdir(path):
            shutil.rmtree(path)
        generate_cohort(path, cases=int(cohort["cases"]), seed=int(cohort.get("seed", 0)),
                        size=cohort.get("size", "tiny"), progress=False)
    return path


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values parsed as JSON when possible (``4``, ``[32,32]``, ``true``)."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the ablation and comparison CLIs."""
    p.add_argument("--out", required=True, help="output folder (resumable: finished units are skipped)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                   help="smoke: tiny network on the synthetic cohort (CPU, minutes); full: the plan's settings")
    p.add_argument("--dataset-dir", help="dataset folder with datalist.json (smoke: generated when omitted)")
    p.add_argument("--datalist", help="datalist file (default: <dataset-dir>/datalist.json)")
    p.add_argument("--tasks", nargs="+", default=["classification", "segmentation"],
                   choices=sorted(TASK_BUNDLES), help="downstream evaluations")
    p.add_argument("--eval-split", default="validation", help="datalist split of the full-depth evaluation")
    p.add_argument("--pretrain-epochs", type=int, help="pretraining epochs (overrides the preset)")
    p.add_argument("--downstream-epochs", type=int, help="epochs of each downstream training")
    p.add_argument("--threshold", type=float,
                   help="validation JEPA loss threshold for steps-to-threshold (default: a level every unit reached)")
    p.add_argument("--d-full", type=int, help="nominal full depth for mask rescaling (default: from the data)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override for every bundle (repeatable), e.g. --set device=cpu")
    p.add_argument("--pretrain-set", dest="pretrain_sets", action="append", metavar="KEY=VALUE",
                   help="override for the pretrain bundle only (repeatable)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="GPUs per node: > 1 trains through torch.distributed.run with multi_gpu_train.json")
    p.add_argument("--in-process", action="store_true",
                   help="run the bundles in this process instead of one subprocess each (faster, less isolated)")
    p.add_argument("--bundles-dir", help="folder holding the bundles (default: the repository's bundles/)")
    p.add_argument("--timeout", type=float, help="seconds before a bundle run is stopped")


def settings_from_args(args, printer: Callable[[str], None] = print) -> tuple[ExperimentSettings, dict, BundleRunner]:
    preset = PRESETS[args.preset]
    dataset_dir = ensure_dataset(args.dataset_dir, args.out, preset, printer)
    sets = parse_sets(args.sets)
    pre = {**preset["pretrain"], **parse_sets(args.pretrain_sets)}
    cls = dict(preset["classification"])
    seg = dict(preset["segmentation"])
    net = dict(preset["network"])
    for k in list(sets):
        if k in NETWORK_KEYS:
            net[k] = sets.pop(k)
    if args.pretrain_epochs:
        pre["num_epochs"] = args.pretrain_epochs
    if args.downstream_epochs:
        cls["num_epochs"] = seg["num_epochs"] = args.downstream_epochs
    settings = ExperimentSettings(dataset_dir=dataset_dir, datalist=args.datalist, network=net, pretrain=pre,
                                  classification=cls, segmentation=seg, common=sets, tasks=tuple(args.tasks),
                                  eval_split=args.eval_split, d_full=args.d_full)
    runner = BundleRunner(args.bundles_dir, mode="inprocess" if args.in_process else "subprocess",
                          nproc_per_node=args.nproc_per_node, timeout=args.timeout)
    return settings, preset, runner


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/ablate_depth.py``: the depth-subsampling grid (see the module docstring)."""
    p = argparse.ArgumentParser(description="Depth-subsampling ablation: pretrain per (d_target, strategy) cell, "
                                            "evaluate on full depth, write results.csv / results.md / plots.")
    add_common_arguments(p)
    p.add_argument("--d-targets", nargs="+", type=int, help="slice counts (default: the preset's)")
    p.add_argument("--strategies", nargs="+", choices=["uniform", "contiguous", "random"],
                   help="depth-subsampling strategies (default: uniform contiguous)")
    p.add_argument("--no-token-equalization", action="store_true", help="one batch per optimizer step")
    p.add_argument("--no-mask-rescale", action="store_true", help="keep the mask ratio of d_full")
    args = p.parse_args(argv)
    settings, preset, runner = settings_from_args(args)
    command = "python scripts/ablate_depth.py " + " ".join(argv if argv is not None else sys.argv[1:])
    records = run_ablation(args.out, settings, args.d_targets or preset["d_targets"],
                           args.strategies or preset["strategies"], runner, threshold=args.threshold,
                           mask_rescale=not args.no_mask_rescale, equalize_tokens=not args.no_token_equalization,
                           command=command)
    return 0 if all(r.get("status") == "done" for r in records) else 1
