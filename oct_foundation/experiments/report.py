"""Tables and plots for the experiment drivers: CSV / Markdown tables and PNG figures (matplotlib, Agg backend).

Everything here works on plain rows (``list[dict]``) so that a table or figure can be rebuilt from ``results.csv``
without rerunning anything.
"""
from __future__ import annotations

import csv
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from oct_foundation import io

__all__ = [
    "is_finite",
    "format_value",
    "markdown_table",
    "write_csv",
    "read_csv",
    "plot_metric_vs",
    "plot_curves",
]


def is_finite(value: Any) -> bool:
    """True for a real number that is neither NaN nor infinite (numbers given as strings count too)."""
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: ints as ints, floats rounded to ``digits``, missing / NaN as an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value.is_integer() and abs(value) >= 100:
            return f"{int(value):,}" if abs(value) >= 10000 else str(int(value))
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] | Sequence[str],
                   digits: int = 3) -> str:
    """GitHub Markdown table. ``columns``: ``(header, key)`` pairs, or keys used as headers.

    Pipes in cell text are escaped so that an error message in a Notes column cannot break the table.
    """
    cols = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in columns]
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        cells = [format_value(row.get(k), digits).replace("|", "\\|").replace("\n", " ") for _, k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str, columns: Sequence[str] | None = None) -> None:
    """Write rows atomically (columns: the given order, then any other keys in first-seen order)."""
    io.write_csv(rows, path, columns)


def _parse(value: str) -> Any:
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back (empty cells -> None)."""
    with io.open_file(path, "r") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, dpi: int) -> None:
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")


def plot_metric_vs(rows: Sequence[Mapping[str, Any]], x: str, metrics: Sequence[tuple[str, str]],
                   group: str, path: str, xlabel: str | None = None, title: str | None = None,
                   logx: bool = False, dpi: int = 110) -> str:
    """One panel per metric: ``metric`` against ``x``, one line per value of ``group`` (e.g. strategy).

    Args:
        rows: result rows; rows whose x or metric value is not finite are left out of that panel.
        metrics: ``(key, label)`` pairs.
        path: PNG file, written atomically.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    groups = list(dict.fromkeys(str(r.get(group)) for r in rows))
    for ax, (key, label) in zip(axes[0], metrics):
        plotted = False
        for g in groups:
            pts = sorted((float(r[x]), float(r[key])) for r in rows
                         if str(r.get(group)) == g and is_finite(r.get(x)) and is_finite(r.get(key)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=g)
                plotted = True
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(label)
        if logx:
            ax.set_xscale("log")
        _finish_axes(ax, plotted, title=group)
    if title:
        fig.suptitle(title)
    return _write_figure(fig, path, dpi)


def _finish_axes(ax, plotted: bool, **legend_kwargs) -> None:
    """Grid, and a legend when something was plotted (else a note that nothing finite was)."""
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(fontsize=8, **legend_kwargs)
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)


def _write_figure(fig, path: str, dpi: int) -> str:
    """Lay out, write ``fig`` atomically to ``path`` (PNG), close it; returns ``path``."""
    fig.tight_layout()
    _save(fig, path, dpi)
    _pyplot().close(fig)
    return path


def plot_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str, xlabel: str, ylabel: str,
                title: str | None = None, threshold: float | None = None, dpi: int = 110) -> str:
    """Convergence curves: one line per name from ``(x, y)`` points (non-finite points dropped); an optional
    horizontal threshold line. Returns ``path`` (PNG, written atomically)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    plotted = False
    for name, pts in curves.items():
        pts = sorted((float(a), float(b)) for a, b in pts if is_finite(a) and is_finite(b))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
            plotted = True
    if threshold is not None and is_finite(threshold):
        ax.axhline(float(threshold), color="grey", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _finish_axes(ax, plotted)
    if title:
        ax.set_title(title)
    return _write_figure(fig, path, dpi)


def plot_segmentation_overlay(image, panels: Mapping[str, Any], path: str, class_names: Sequence[str],
                              title: str | None = None, alpha: float = 0.45, dpi: int = 110) -> str:
    """One B-scan with its layer maps: the image alone, then one panel per label map drawn over it.

    Args:
        image: ``[H, W]`` intensities (any range; shown with its 1st-99th percentile window).
        panels: ``name -> [H, W]`` integer label maps on the image's grid (e.g. the reference and each model's
            prediction); class 0 (background) is left transparent.
        class_names: names of classes ``0..K-1``; the legend lists the classes present in any panel.

    Returns:
        ``path`` (PNG, written atomically).
    """
    import numpy as np

    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    img = np.asarray(image, dtype=np.float64)
    maps = {k: np.asarray(v) for k, v in panels.items()}
    for name, m in maps.items():
        if m.shape != img.shape:
            raise ValueError(f"label map '{name}' has shape {m.shape}, the image {img.shape}")
    k = len(class_names)
    colours = plt.get_cmap("tab10" if k <= 10 else "tab20")(np.arange(k) % (10 if k <= 10 else 20))
    cmap = ListedColormap(colours)
    lo, hi = np.percentile(img, [1, 99])
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.4), squeeze=False)
    axes = axes[0]
    axes[0].imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect="auto")
    axes[0].set_title("B-scan", fontsize=9)
    present = set()
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect="auto")
        ax.imshow(np.ma.masked_where(m == 0, m), cmap=cmap, vmin=-0.5, vmax=k - 0.5, alpha=alpha,
                  interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=9)
        present |= {int(c) for c in np.unique(m) if 0 < int(c) < k}
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colours[c], label=class_names[c]) for c in sorted(present)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    _save(fig, path, dpi)
    plt.close(fig)
    return path


def first(items: Iterable[Any], pred: Callable[[Any], bool]) -> Any:
    """The first item satisfying ``pred`` or None."""
    for it in items:
        if pred(it):
            return it
    return None
