"""oct_vjepa_pretrain from the real command line: ``--dense_loss true`` changes the objective (same seed, data and
masks, another loss), and the collapse monitor reports the pooled-feature rank and the smallest per-dimension std
(TensorBoard ``collapse/*``) and warns below ``--rank_warn_min_std``."""
import re

import pytest

from tests.bundles.pretrain_cli import run_pretrain, tiny_args

TINY = [*tiny_args(d_target=8, d_full=10, depth=2, predictor_embed_dim=32), "--log_interval", "1",
        "--val_interval", "0"]


def _train(cohort, root, *args):
    return run_pretrain(cohort, root, *TINY, *args)


def _scalars(root, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "runs" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_dense_loss_and_pooled_rank_monitor(cohort, tmp_path):
    _train(cohort, tmp_path / "plain", "--rank_max_volumes", "4")
    dense = _train(cohort, tmp_path / "dense", "--dense_loss", "true", "--rank_max_volumes", "4",
                   "--rank_warn_min_std", "1000")
    assert (tmp_path / "dense" / "models" / "model.pt").is_file()
    loss_plain = _scalars(tmp_path / "plain", "train/loss")
    loss_dense = _scalars(tmp_path / "dense", "train/loss")
    assert len(loss_plain) == len(loss_dense) > 0
    assert loss_plain != loss_dense  # same seed, data and masks: only the objective differs
    # the monitor reads the validation split (2 volumes of the tiny cohort): pooled rank at most 1
    log = dense.stdout + dense.stderr
    n = int(re.search(r"pooled features of (\d+) volumes", log).group(1))
    assert n == 2
    for root in (tmp_path / "plain", tmp_path / "dense"):
        for which in ("target", "context"):
            pooled = _scalars(root, f"collapse/{which}_pooled_effective_rank")
            assert len(pooled) == 1 and pooled[0] == pytest.approx(1.0, abs=1e-6)
            std = _scalars(root, f"collapse/{which}_min_feature_std")
            assert len(std) == 1 and 0.0 < std[0] < 1000
    assert "pooled-feature dimension with std" in log and "< 1000.0000" in log
