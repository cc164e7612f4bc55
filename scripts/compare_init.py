#!/usr/bin/env python
"""Initialisation comparison: scratch on one device, scratch on all devices, adapted from V-JEPA 2.

    python scripts/compare_init.py --preset smoke --out runs/compare_smoke
    python scripts/compare_init.py --preset full --dataset-dir DATA --out runs/compare --vjepa2 gs://bucket/vitl.pt

See docs/results.md and `python scripts/compare_init.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation.experiments.compare_init import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
