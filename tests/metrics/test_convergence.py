import math

import pytest
import torch

from oct_foundation.metrics import (ThroughputTimer, best_value, peak_memory_bytes, steps_to_threshold,
                                    tokens_per_second)


def test_steps_to_threshold_both_directions():
    hist = [(300, 0.8), (100, 0.5), (200, 0.72), (400, float("nan")), (500, 0.9)]
    assert steps_to_threshold(hist, 0.7) == 200
    assert steps_to_threshold(hist, 0.85) == 500
    assert steps_to_threshold(hist, 0.95) is None
    loss = [(1, 2.0), (2, 1.2), (3, 0.9), (4, 1.1)]
    assert steps_to_threshold(loss, 1.0, mode="min") == 3
    assert best_value(loss, mode="min") == (3, 0.9)
    assert best_value(hist) == (500, 0.9)
    assert best_value([]) is None
    with pytest.raises(ValueError):
        steps_to_threshold(loss, 1.0, mode="lower")
    with pytest.raises(ValueError):
        steps_to_threshold([(1, 2, 3)], 1.0)


def test_throughput_and_memory():
    assert tokens_per_second(1000, 2.0) == 500.0
    assert math.isnan(tokens_per_second(10, 0.0))
    t = ThroughputTimer().start()
    before = peak_memory_bytes()
    big = torch.ones(4_000_000, dtype=torch.float64)  # 32 MB touched
    big += 1
    t.add(100)
    t.add(28)
    elapsed = t.stop()
    assert t.tokens == 128 and elapsed > 0
    assert t.tokens_per_second == pytest.approx(128 / elapsed)
    after = peak_memory_bytes("cpu")
    assert after >= before > 10 * 2**20  # bytes, not kB: a Python process with torch holds > 10 MB
