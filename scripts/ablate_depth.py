#!/usr/bin/env python
"""Depth-subsampling ablation grid (d_target x strategy): pretrain per cell, evaluate on full depth, tables and plots.

    python scripts/ablate_depth.py --preset smoke --out runs/ablation_smoke
    python scripts/ablate_depth.py --preset full --dataset-dir DATA --out runs/ablation --nproc-per-node 8
    python scripts/ablate_depth.py --out runs/abl --d-targets 4 8 --strategies uniform contiguous

See docs/results.md and `python scripts/ablate_depth.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation.experiments.ablation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
