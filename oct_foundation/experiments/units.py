"""One experiment unit (a grid cell or a comparison arm): its settings and presets, pretrain -> downstream through
the bundles (:func:`run_pipeline`), resumable execution (:func:`execute_unit`), and the shared bookkeeping
(tokens per step, steps to a loss threshold)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from oct_foundation import io
from oct_foundation.experiments.history import _now, read_history
from oct_foundation.experiments.runner import (DEFAULT_BUNDLES_DIR, PRETRAIN_BUNDLE, PRETRAIN_VAL_KEY, TASK_BUNDLES,
                                              BundleRun, BundleRunError, BundleRunner)

logger = logging.getLogger("oct_foundation.experiments")


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
