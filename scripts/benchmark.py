#!/usr/bin/env python
"""Benchmarks against named baselines in the same run (see oct_foundation/experiments/benchmarks.py and docs/performance.md).

    python scripts/benchmark.py [--quick] [--device cuda] [--threads N] [--sections jepa,maisi,data]
                                [--no-memory] [--out docs/performance.md]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation.experiments.benchmarks import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
