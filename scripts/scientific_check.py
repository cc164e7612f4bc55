#!/usr/bin/env python
"""Scientific check: V-JEPA pretraining vs random-init encoders on synthetic cohorts with focal (scale 1) and
spatially extended (scale 2.5) lesions, frozen features, linear probe, paired bootstrap.

    python scripts/scientific_check.py --out runs/scientific_check            # about 10-20 min on 2 CPU cores
    python scripts/scientific_check.py --out runs/check_smoke --preset smoke  # seconds

See docs/scientific_check.md and `python scripts/scientific_check.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation.experiments.scientific_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
