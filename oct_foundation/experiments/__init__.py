"""Experiment drivers: the depth-subsampling ablation grid and the initialisation comparison. Both call the
bundles (``python -m monai.bundle run ...``) and write CSV / Markdown tables and PNG plots.

Names are resolved lazily so that ``import oct_foundation.experiments`` stays cheap (bundle configs reference
``oct_foundation.experiments.history.MetricsHistory``).
"""
import importlib

_EXPORTS = {
    "ablation": ("run_ablation", "write_ablation_report"),
    "history": ("MetricsHistory", "read_history"),
    "runner": ("BundleRun", "BundleRunError", "BundleRunner"),
    "units": ("ExperimentSettings", "run_pipeline", "detect_depth", "equalized_tokens_per_step", "PRESETS"),
    "compare_init": ("run_comparison", "write_comparison_report", "filter_datalist_by_device"),
    "compare_vae": ("write_outputs",),
    "report": ("markdown_table", "write_csv", "read_csv", "plot_metric_vs", "plot_curves", "is_finite"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
_MODULES = tuple(_EXPORTS)

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
