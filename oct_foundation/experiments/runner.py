"""Running bundles from a driver: :class:`BundleRunner` runs ``python -m monai.bundle run <id> --config_file ...
--key value`` in a subprocess (or through ``torch.distributed.run``), with the log in the run's folder, or in the
current process (``mode="inprocess"``, used by fast tests); :class:`BundleRunError` names the failed run and its log."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from oct_foundation import io


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
from oct_foundation.experiments.history import _now

logger = logging.getLogger("oct_foundation.experiments")


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
                "_target_": "oct_foundation.experiments.history.MetricsHistory",
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
