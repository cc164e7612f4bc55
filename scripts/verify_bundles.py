#!/usr/bin/env python
"""Verify every bundle for the MONAI model zoo, offline (see oct_foundation/experiments/zoo.py for the checks).

    python scripts/verify_bundles.py [bundle ...] [--no-export]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation.experiments.zoo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
