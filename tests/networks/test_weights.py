"""The one weights path: wrapped / prefixed state dicts, strict checks before copying, sha256, options."""
from __future__ import annotations

import pytest
import torch

from oct_foundation.errors import CheckpointError
from oct_foundation.networks.vit3d import VisionTransformer3D
from oct_foundation.networks.weights import find_state_dict, load_weights, strip_prefixes

ENC = dict(img_size=(4, 32, 32), patch_size=16, tubelet_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wrapped_and_prefixed_files_load_into_the_whole_network(tmp_path, memfs):
    torch.manual_seed(0)
    src = VisionTransformer3D(**ENC)
    # an Ignite checkpoint of a DDP-wrapped, compiled network: {"network": {"module._orig_mod.<key>": ...}, ...}
    wrapped = {"network": {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}, "epoch": 3,
               "optimizer": {"state": {}, "param_groups": []}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    dst = VisionTransformer3D(**ENC)
    report = load_weights(dst, str(tmp_path / "ckpt.pt"), print_report=False)
    assert report.ok and _same(dst, src) and len(report.loaded) == len(src.state_dict())
    assert report.sha256 and len(report.sha256) == 64
    # the same through an fsspec URL
    with memfs.open("/w/enc.pt", "wb") as f:
        torch.save({"state_dict": src.state_dict()}, f)
    other = VisionTransformer3D(**ENC)
    assert load_weights(other, "memory://w/enc.pt", print_report=False).ok and _same(other, src)


def test_strict_failure_names_the_key_and_copies_nothing(tmp_path):
    torch.manual_seed(1)
    sd = VisionTransformer3D(**ENC).state_dict()
    sd.pop("norm.weight")
    torch.save(sd, tmp_path / "partial.pt")
    dst = VisionTransformer3D(**ENC)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"partial.pt: does not match .*1 missing key\(s\).*norm.weight"):
        load_weights(dst, str(tmp_path / "partial.pt"), print_report=False)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    # non-strict loads what fits and reports the rest; allow_missing makes a strict load accept the gap
    report = load_weights(dst, str(tmp_path / "partial.pt"), strict=False, print_report=False)
    assert report.missing == ["norm.weight"] and not report.ok
    report = load_weights(VisionTransformer3D(**ENC), str(tmp_path / "partial.pt"), allow_missing=["norm.*"],
                          print_report=False)
    assert report.ok and report.allowed_missing == ["norm.weight"]


def test_sha256_options_and_empty_paths(tmp_path, capsys):
    net = VisionTransformer3D(**ENC)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="w.pt: sha256 .* differs from the recorded"):
        load_weights(net, str(tmp_path / "w.pt"), expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="unexpected options for source 'maisi'"):
        load_weights(net, str(tmp_path / "w.pt"), source="maisi", channel_adapt="sum")
    with pytest.raises(ValueError, match="needs a path"):
        load_weights(net, "", source="model_pt")
    report = load_weights(net, "")  # no file given: the network is unchanged, and the table says so
    assert report.random_init and "RANDOM initialisation" in capsys.readouterr().out


def test_find_state_dict_and_strip_prefixes():
    t = torch.zeros(1)
    assert find_state_dict({"epoch": 1, "autoencoder": {"state_dict": {"a": t}}}) == {"a": t}
    with pytest.raises(CheckpointError, match="x.pt: no state dict found .*epoch"):
        find_state_dict({"epoch": 1, "optimizer": {"lr": 0.1}}, "x.pt")
    assert list(strip_prefixes({"module.backbone.blocks.0.w": t})) == ["blocks.0.w"]
    with pytest.raises(ValueError, match="both become"):
        strip_prefixes({"module.w": t, "w": t})
