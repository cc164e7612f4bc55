"""Multi-GPU configs set only the distributed samplers, DDP and the process group: the handler lists are those of the
single-GPU configs (every handler that logs or writes checks its rank itself, ``tests/engines/test_rank_gating.py``),
and DDP is written once, ``oct_foundation.engines.wrap_ddp`` (pretraining: ``JEPATrainer(distributed=True)``, which
calls it)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
MULTI = sorted(BUNDLES.glob("*/configs/multi_gpu_train*.json"))
# the single-GPU configs each overlay is merged with (``torchrun ... --config_file "[<these>, <overlay>]"``)
BASES = {"multi_gpu_train.json": ["train.json"],
         "multi_gpu_train_autoencoder.json": ["train_autoencoder.json"],
         "multi_gpu_train_diffusion.json": ["inference.json", "train_diffusion.json"]}


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_every_training_bundle_has_an_overlay():
    assert {p.parent.parent.name for p in MULTI} == {"oct_vjepa_pretrain", "oct_layer_segmentation",
                                                      "oct_disease_classification", "oct_latent_diffusion"}


@pytest.mark.parametrize("path", MULTI, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_overlay_sets_no_handler_list(path):
    from monai.bundle import ConfigParser

    overlay = json.loads(path.read_text())
    assert not [k for k in overlay if k.endswith("handlers")], "handler lists are the single-GPU config's"
    assert not any("DistributedDataParallel" in s for s in _strings(overlay)), "DDP through wrap_ddp only"
    parser = ConfigParser()
    parser.read_config([str(path.parent / b) for b in BASES[path.name]] + [str(path)])
    assert parser.get("train#trainer#train_handlers") == "@train#handlers"
    if parser.get("validate#evaluator") is not None:
        assert parser.get("validate#evaluator#val_handlers") == "@validate#handlers"
    wraps = [s for s in _strings(overlay) if "wrap_ddp(" in s]
    if path.parent.parent.name == "oct_vjepa_pretrain":
        assert overlay["train#trainer#distributed"] is True and not wraps
    else:
        assert wraps


def test_no_bundle_config_wraps_ddp_or_logs_on_every_rank():
    """No config names DistributedDataParallel; training configs use the rank-0 stats / TensorBoard handlers."""
    for path in sorted(BUNDLES.glob("*/configs/*.json")):
        if path.name == "metadata.json":  # the changelog may name it
            continue
        text = path.read_text()
        assert "DistributedDataParallel" not in text, path
        if path.name.startswith("train"):
            targets = [s for s in _strings(json.loads(text)) if s in ("StatsHandler", "TensorBoardStatsHandler")]
            assert not targets, f"{path}: {targets} log on every rank; use oct_foundation.engines.RankZero*"
