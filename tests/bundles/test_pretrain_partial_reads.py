"""oct_vjepa_pretrain through the real command line reads only the kept slices (``read_kept_slices``, on by
default with ``cache_rate`` 0) and trains exactly the model of reading every slice (same seed, random depth
strategy, so the seeded slice draws must agree too)."""
from __future__ import annotations

import torch

from tests.bundles.pretrain_cli import CONFIGS, run_pretrain, tiny_args, trained_state

TINY = [*tiny_args(), "--rank_interval", "0", "--depth_strategy", "random"]


def _train(cohort, root, *extra):
    run_pretrain(cohort, root, *TINY, *extra)
    return trained_state(root)


def test_reading_only_kept_slices_trains_the_same_model(cohort, tmp_path):
    partial = _train(cohort, tmp_path / "partial")  # the default: read_kept_slices = (cache_rate == 0)
    whole = _train(cohort, tmp_path / "whole", "--read_kept_slices", "false")
    assert partial.keys() == whole.keys()
    assert all(torch.equal(partial[k], whole[k]) for k in partial)


def test_config_reads_kept_slices_unless_caching():
    from monai.bundle import ConfigParser

    from oct_foundation.data.readers import LoadOCTd, LoadOCTSlicesd

    for cache_rate, want in ((0.0, LoadOCTSlicesd), (1.0, LoadOCTd)):
        cfg = ConfigParser()
        cfg.read_config(str(CONFIGS / "train.json"))
        cfg["cache_rate"] = cache_rate
        for section in ("train", "validate"):
            first = cfg.get_parsed_content(f"{section}#preprocessing_transforms", instantiate=True)[0]
            assert type(first) is want, (cache_rate, section)
