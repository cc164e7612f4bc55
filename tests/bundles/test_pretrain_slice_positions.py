"""oct_vjepa_pretrain --slice_positions true through the real command line: training runs with token depth
positions from the kept slice indices, and the option changes what is learned (same seed, same data)."""
from __future__ import annotations

import torch

from tests.bundles.pretrain_cli import run_pretrain, tiny_args, trained_state


def _train(cohort, root, *extra):
    run_pretrain(cohort, root, *tiny_args(), *extra)
    return trained_state(root)


def test_slice_positions_option_trains_and_changes_the_model(cohort, tmp_path):
    plain = _train(cohort, tmp_path / "plain", "--slice_positions", "false")
    again = _train(cohort, tmp_path / "again", "--slice_positions", "false")
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # the runs are deterministic...
    sliced = _train(cohort, tmp_path / "sliced", "--slice_positions", "true")
    assert plain.keys() == sliced.keys()  # ...so a difference comes from the option
    assert any(not torch.equal(plain[k], sliced[k]) for k in plain)
