"""Engines: the JEPA trainer / evaluator, training handlers, schedules, report handlers, batch inference and its
processors (one base, :class:`~oct_foundation.engines.processors.InferenceProcessor`).

Names are resolved lazily (module ``__getattr__``) so that ``import oct_foundation.engines`` stays cheap and
bundle configs can use ``_target_: oct_foundation.engines.JEPATrainer``.
"""
import importlib
import os

_EXPORTS = {
    "jepa_trainer": (
        "JEPATrainer", "JEPAEvaluator", "prepare_batch_image", "size_for_epoch", "freeze_encoder",
        "encoder_units", "prepare_network", "mask_generator_for_depth", "draw_masks",
    ),
    "monitoring": (
        "ProgressBarHandler", "JEPAStatsLogger", "RepresentationRankMonitor", "RankZeroStatsHandler",
        "RankZeroTensorBoardStatsHandler", "RankZeroLrScheduleHandler", "peak_memory_mb", "slice_indices_of",
    ),
    "checkpoints": (
        "TrainingCheckpoint", "ResumeCheckpoint", "ModelExport", "BestModelExport", "latest_checkpoint",
        "resolve_resume",
    ),
    "training_control": ("EpochSeed", "TerminateOnNanLoss", "ProgressiveUnfreezing"),
    "schedules": (
        "cosine_value", "linear_value", "warmup_cosine_value", "WarmupCosineLR", "WeightDecaySchedule",
        "MomentumSchedule", "build_param_groups", "tokens_per_sample", "accumulation_for_tokens",
    ),
    "embedding_inference": (
        "EmbeddingProcessor", "run_embedding_inference",
    ),
    "runs": ("process_rank", "wrap_ddp", "start_training_run", "TrainingRun", "run_settings", "checkpoint_run", "find_checkpoints"),
    "batch_inference": ("BatchInference", "anonymous_id", "as_bool", "list_inputs"),
    "batches": ("PrepareClassBatch", "StackOutputs"),
    "reports": ("ClassificationReportHandler", "SegmentationReportHandler"),
    "processors": ("InferenceProcessor",),
    "downstream_inference": ("SegmentationProcessor", "ClassificationProcessor"),
    "maisi_inference": ("MaisiEncodeProcessor", "MaisiDecodeProcessor", "MaisiEvaluateProcessor"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
_MODULES = tuple(_EXPORTS)
_HERE = os.path.dirname(__file__)

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    if name in _MODULES or (not name.startswith("_") and os.path.exists(os.path.join(_HERE, f"{name}.py"))):
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
