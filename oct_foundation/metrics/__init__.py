"""Evaluation metrics: classification (per device and pooled), segmentation (Dice, IoU per layer),
representation quality (kNN, CKA, linear probe), convergence and resource helpers, reconstruction.

Names are resolved lazily so that ``import oct_foundation.metrics`` stays cheap (scikit-learn, MONAI and
scikit-image are imported only when a metric that needs them is used).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # classification
    "classification_metrics": "classification",
    "save_classification_report": "classification",
    "classification_report_rows": "classification",
    # segmentation
    "segmentation_metrics": "segmentation",
    "SegmentationReport": "segmentation",
    "save_segmentation_report": "segmentation",
    # representation
    "knn_predict": "representation",
    "knn_top1": "representation",
    "linear_cka": "representation",
    "linear_probe": "representation",
    "extract_features": "representation",
    "effective_rank": "representation",
    # paired comparison of two models on the same cases
    "paired_bootstrap": "comparison",
    "compare_classifiers": "comparison",
    "compare_per_case": "comparison",
    # convergence and resources
    "steps_to_threshold": "convergence",
    "best_value": "convergence",
    "tokens_per_second": "convergence",
    "peak_memory_bytes": "convergence",
    "reset_peak_memory": "convergence",
    "ThroughputTimer": "convergence",
    # reconstruction (MAISI engineer's module)
    "mse": "reconstruction",
    "psnr": "reconstruction",
    "ssim": "reconstruction",
    "reconstruction_metrics": "reconstruction",
    "summarise_reconstruction": "reconstruction",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"{__name__}.{module_name} does not define {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
