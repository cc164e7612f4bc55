"""Named architectures: the package's own presets build and an unknown name lists the known ones."""
import pytest
import torch

from oct_foundation.networks import OCT_PRESETS, PRESETS, build_vjepa, get_preset


def test_own_presets_registered_and_build():
    assert {"vit_tiny_oct", "vit_small_oct"} <= set(PRESETS)
    kw = get_preset("vit_tiny_oct")
    kw["img_size"] = (4, 32, 32)
    net = build_vjepa(**kw)
    assert net.encoder.embed_dim == 96 if hasattr(net.encoder, "embed_dim") else True
    out = net.encoder(torch.zeros(1, 1, 4, 32, 32))
    assert out.shape[-1] == 96
    get_preset("vit_tiny_oct")["embed_dim"] = 1  # a copy: the registry is unchanged
    assert OCT_PRESETS["vit_tiny_oct"]["embed_dim"] == 96 == PRESETS["vit_tiny_oct"]["embed_dim"]


def test_unknown_preset_lists_names():
    with pytest.raises(KeyError, match="vit_small_oct"):
        get_preset("no_such_net")
