#!/usr/bin/env python
"""Autoencoder from scratch vs initialised from pretrained (MAISI) weights, same data and budget.

    python scripts/compare_vae.py --dataset-dir DATA --pretrained models/autoencoder.pt --out results/vae \
        --epochs 20 [--set num_frames=16 --set image_size=[64,64] ...]

See `oct_foundation.experiments.compare_vae` and `python scripts/compare_vae.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oct_foundation.experiments.compare_vae import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
