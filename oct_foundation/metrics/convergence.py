"""Convergence and resource helpers: steps to a validation threshold, tokens per second, peak memory."""
from __future__ import annotations

import math
import resource
import sys
import time
from typing import Iterable, Sequence

import torch

__all__ = ["steps_to_threshold", "best_value", "tokens_per_second", "peak_memory_bytes", "reset_peak_memory",
           "ThroughputTimer"]


def _check_mode(mode: str) -> str:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' (higher is better) or 'min' (lower is better), got {mode!r}")
    return mode


def _sorted_history(history: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    out = []
    for item in history:
        if len(item) != 2:
            raise ValueError(f"history items must be (step, value) pairs, got {item!r}")
        out.append((float(item[0]), float(item[1])))
    return sorted(out, key=lambda p: p[0])


def steps_to_threshold(history: Iterable[Sequence[float]], threshold: float, mode: str = "max"):
    """First step at which the validation value reaches ``threshold``.

    Args:
        history: ``(step, value)`` pairs in any order (NaN values are skipped).
        threshold: target value; reached when ``value >= threshold`` (mode "max") or ``<=`` (mode "min").

    Returns:
        the step (an int when the steps are integral) or ``None`` if never reached.
    """
    _check_mode(mode)
    for step, value in _sorted_history(history):
        if math.isnan(value):
            continue
        if (mode == "max" and value >= threshold) or (mode == "min" and value <= threshold):
            return int(step) if float(step).is_integer() else step
    return None


def best_value(history: Iterable[Sequence[float]], mode: str = "max"):
    """``(step, value)`` of the best validation value (first occurrence), or ``None`` for an empty history."""
    _check_mode(mode)
    best = None
    for step, value in _sorted_history(history):
        if math.isnan(value):
            continue
        if best is None or (value > best[1] if mode == "max" else value < best[1]):
            best = (int(step) if float(step).is_integer() else step, value)
    return best


def tokens_per_second(num_tokens: int, seconds: float) -> float:
    """Throughput; NaN when no time elapsed."""
    return float(num_tokens) / seconds if seconds > 0 else float("nan")


def _cuda_device(device) -> torch.device | None:
    if device is None:
        return None
    d = torch.device(device)
    return d if d.type == "cuda" else None


def peak_memory_bytes(device: str | torch.device | None = None) -> int:
    """Peak memory in bytes: CUDA ``max_memory_allocated`` for a CUDA device, else the process's peak
    resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; kB on Linux, bytes on macOS)."""
    d = _cuda_device(device)
    if d is not None:
        return int(torch.cuda.max_memory_allocated(d))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def reset_peak_memory(device: str | torch.device | None = None) -> None:
    """Reset the CUDA peak counter (the process RSS peak cannot be reset; a no-op on CPU)."""
    d = _cuda_device(device)
    if d is not None:
        torch.cuda.reset_peak_memory_stats(d)


class ThroughputTimer:
    """Count tokens over wall-clock time (synchronising CUDA before reading the clock).

    >>> t = ThroughputTimer(); t.start(); ...; t.add(batch_tokens); t.tokens_per_second
    """

    def __init__(self, device: str | torch.device | None = None):
        self.device = _cuda_device(device)
        self.tokens = 0
        self._t0: float | None = None
        self._elapsed = 0.0

    def _sync(self) -> None:
        if self.device is not None:
            torch.cuda.synchronize(self.device)

    def start(self) -> "ThroughputTimer":
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def add(self, num_tokens: int) -> None:
        self.tokens += int(num_tokens)

    def stop(self) -> float:
        if self._t0 is not None:
            self._sync()
            self._elapsed += time.perf_counter() - self._t0
            self._t0 = None
        return self._elapsed

    @property
    def elapsed(self) -> float:
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self._elapsed + running

    @property
    def tokens_per_second(self) -> float:
        return tokens_per_second(self.tokens, self.elapsed)
