"""Every public V-JEPA 2 / 2.1 checkpoint preset matches its file layout, name for name and shape for shape.

The models are built on the ``meta`` device (no memory, no time); the file layouts are written here from the
public code's formulas (facebookresearch/vjepa2: encoder ``patch_embed.proj`` [E, 3, 2, 16, 16], blocks with
``qkv`` [3E, E] and MLP ``int(E * mlp_ratio)``, ``norm`` or 2.1's ``norms_block.0..3``, ``patch_embed_img``,
``video_mod_embed``/``img_mod_embed``; 2.0 predictor 12 x 384 with 10 mask tokens; 2.1 predictor 384 wide with 8
mask tokens, modality embeddings and ``predictor_proj_context``: ViT-g/G 24 blocks on 4 hierarchical levels,
``predictor_embed.0/2`` and projections to 4E, distilled ViT-B/L 12 blocks on one level and projections to the
teacher's 1664), and the loader's adaptation must map every file tensor with nothing missing, unexpected or
mismatched.
"""
import pytest
import torch

from oct_foundation.networks.pretrained import adapt_state_dict
from oct_foundation.networks.vjepa3d import VJEPA3D
from oct_foundation.networks.vjepa_presets import VJEPA_CHECKPOINT_PRESETS, get_checkpoint_preset

SIZES = {  # name -> (E, depth, heads, MLP hidden, 2.1)
    "vjepa2_vitl_256": (1024, 24, 16, 4096, False),
    "vjepa2_vith_256": (1280, 32, 16, 5120, False),
    "vjepa2_vitg_256": (1408, 40, 22, 6144, False),
    "vjepa2_vitg_384": (1408, 40, 22, 6144, False),
    "vjepa2_1_vitb_384": (768, 12, 12, 3072, True),
    "vjepa2_1_vitl_384": (1024, 24, 16, 4096, True),
    "vjepa2_1_vitg_384": (1408, 40, 22, 6144, True),
    "vjepa2_1_vitG_384": (1664, 48, 26, 6656, True),
}


def _m(*shape):
    return torch.empty(*shape, device="meta")


def _blocks(prefix, n, e, hidden):
    out = {}
    for i in range(n):
        p = f"{prefix}{i}."
        out.update({p + "norm1.weight": _m(e), p + "norm1.bias": _m(e), p + "attn.qkv.weight": _m(3 * e, e),
                    p + "attn.qkv.bias": _m(3 * e), p + "attn.proj.weight": _m(e, e), p + "attn.proj.bias": _m(e),
                    p + "norm2.weight": _m(e), p + "norm2.bias": _m(e), p + "mlp.fc1.weight": _m(hidden, e),
                    p + "mlp.fc1.bias": _m(hidden), p + "mlp.fc2.weight": _m(e, hidden), p + "mlp.fc2.bias": _m(e)})
    return out


def _official_encoder(e, depth, hidden, v21):
    sd = {"patch_embed.proj.weight": _m(e, 3, 2, 16, 16), "patch_embed.proj.bias": _m(e)}
    sd.update(_blocks("blocks.", depth, e, hidden))
    if v21:
        sd.update({"patch_embed_img.proj.weight": _m(e, 3, 1, 16, 16), "patch_embed_img.proj.bias": _m(e),
                   "video_mod_embed": _m(1, 1, e), "img_mod_embed": _m(1, 1, e)})
        for j in range(4):
            sd.update({f"norms_block.{j}.weight": _m(e), f"norms_block.{j}.bias": _m(e)})
    else:
        sd.update({"norm.weight": _m(e), "norm.bias": _m(e)})
    return sd


def _official_predictor_20(e):
    sd = {"predictor_embed.weight": _m(384, e), "predictor_embed.bias": _m(384),
          "predictor_norm.weight": _m(384), "predictor_norm.bias": _m(384),
          "predictor_proj.weight": _m(e, 384), "predictor_proj.bias": _m(e)}
    sd.update({f"mask_tokens.{i}": _m(1, 1, 384) for i in range(10)})
    sd.update(_blocks("predictor_blocks.", 12, 384, 1536))
    return sd


def _official_predictor_21(e, distilled):
    """``app/vjepa_2_1/models/predictor.py`` as ``src/hub/backbones.py`` builds it for the four 2.1 files."""
    levels, depth = (1, 12) if distilled else (4, 24)
    out = levels * (1664 if distilled else e)
    if levels == 1:
        sd = {"predictor_embed.weight": _m(384, e), "predictor_embed.bias": _m(384)}
    else:
        sd = {"predictor_embed.0.weight": _m(e, 4 * e), "predictor_embed.0.bias": _m(e),
              "predictor_embed.2.weight": _m(384, e), "predictor_embed.2.bias": _m(384)}
    sd.update({"predictor_norm.weight": _m(384), "predictor_norm.bias": _m(384),
               "predictor_proj.weight": _m(out, 384), "predictor_proj.bias": _m(out),
               "predictor_proj_context.weight": _m(out, 384), "predictor_proj_context.bias": _m(out),
               "video_mod_embed": _m(1, 1, 384), "img_mod_embed": _m(1, 1, 384)})
    sd.update({f"mask_tokens.{i}": _m(1, 1, 384) for i in range(8)})
    sd.update(_blocks("predictor_blocks.", depth, 384, 1536))
    return sd


@pytest.mark.parametrize("name", sorted(SIZES))
def test_preset_matches_public_layout(name):
    e, depth, heads, hidden, v21 = SIZES[name]
    with torch.device("meta"):
        net = VJEPA3D(**get_checkpoint_preset(name))
    assert net.encoder.num_heads == heads and net.encoder.in_chans == 1
    assert net.encoder.rope_variant == ("rotary" if v21 else "vjepa2")
    parts = [("encoder", _official_encoder(e, depth, hidden, v21), net.encoder.state_dict()),
             ("target_encoder", _official_encoder(e, depth, hidden, v21), net.target_encoder.state_dict())]
    file_pred = _official_predictor_21(e, name.startswith(("vjepa2_1_vitb", "vjepa2_1_vitl"))) if v21 else \
        _official_predictor_20(e)
    parts.append(("predictor", file_pred, net.predictor.state_dict()))
    for part, file_sd, target in parts:
        _, rep = adapt_state_dict(file_sd, target, mask_token_keys=[k for k in target if "mask_token" in k])
        assert not rep.missing and not rep.unexpected and not rep.mismatched, (part, rep.table())
        assert "3->1 channel" in rep.adapted.get("patch_embed.proj.weight", "3->1 channel")


def test_presets_are_copies_and_unknown_names_listed():
    a = get_checkpoint_preset("vjepa2_1_vitl_384")
    a["encoder_kwargs"]["hierarchical_norms"] = False
    assert VJEPA_CHECKPOINT_PRESETS["vjepa2_1_vitl_384"]["encoder_kwargs"]["hierarchical_norms"] is True
    with pytest.raises(KeyError, match="vjepa2_vitl_256"):
        get_checkpoint_preset("vjepa2_vitx")


def test_vjepa2_recipe_builds_the_published_setup_from_the_bundle_config():
    from pathlib import Path

    from monai.bundle import ConfigParser

    from oct_foundation.networks.vjepa_presets import RECIPES, recipe_args

    cfg = Path(__file__).resolve().parents[2] / "bundles" / "oct_vjepa_pretrain" / "configs" / "train.json"
    parser = ConfigParser()
    parser.read_config(str(cfg))
    for key, value in RECIPES["vjepa1"].items():  # today's defaults
        assert parser.get(key) == value, key
    for key in RECIPES["vjepa2"]:  # every recipe key is a real key of the config
        assert parser.get(key, "missing") != "missing", key
    parser.update({**RECIPES["vjepa2"], "embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": [32, 32],
                   "d_target": 8})
    net = parser.get_parsed_content("network_def")
    assert len(net.predictor.mask_tokens) == 10 and len(net.predictor.predictor_blocks) == 12
    assert net.predictor.predictor_embed_dim == 384
    masks = parser.get_parsed_content("mask_generators")
    assert [(m.num_blocks, tuple(m.spatial_scale)) for m in masks] == [(8, (0.15, 0.15)), (2, (0.7, 0.7))]
    assert parser.get_parsed_content("ema_start") == parser.get_parsed_content("ema_end") == 0.99925
    assert parser.get_parsed_content("weight_decay") == parser.get_parsed_content("final_weight_decay") == 0.04
    assert recipe_args("vjepa2")[:2] == ["--learning_rate", "0.000525"]


def _bundle_parser(**overrides):
    from pathlib import Path

    from monai.bundle import ConfigParser

    cfg = Path(__file__).resolve().parents[2] / "bundles" / "oct_vjepa_pretrain" / "configs" / "train.json"
    parser = ConfigParser()
    parser.read_config(str(cfg))
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("name", ["vjepa2_vitg_384", "vjepa2_1_vitl_384"])
def test_bundle_preset_key_builds_the_checkpoint_architecture(name):
    from oct_foundation.networks.presets import PRESETS

    assert name in PRESETS
    e, depth, heads, hidden, v21 = SIZES[name]
    with torch.device("meta"):
        net = _bundle_parser(preset=name, image_size=[64, 64], d_target=8).get_parsed_content("network_def")
    assert net.encoder.embed_dim == e and len(net.encoder.blocks) == depth and net.encoder.num_heads == heads
    assert net.encoder.img_size == (8, 64, 64)  # the bundle's input keys are kept
    assert len(net.predictor.mask_tokens) == (8 if v21 else 10) and len(net.predictor.predictor_blocks) == 12
    assert (net.predictor.predictor_proj_context is not None) is v21
    assert net.encoder.hierarchical_norms is v21 and net.target_encoder.hierarchical_norms is v21
    _, rep = adapt_state_dict(_official_encoder(e, depth, hidden, v21), net.encoder.state_dict())
    assert not rep.missing and not rep.unexpected and not rep.mismatched


def test_bundle_without_preset_is_unchanged():
    net = _bundle_parser(embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=32, predictor_depth=1,
                         predictor_num_heads=2, image_size=[32, 32], d_target=8).get_parsed_content("network_def")
    assert isinstance(net, VJEPA3D) and net.encoder.embed_dim == 32 and len(net.predictor.mask_tokens) == 2
    from oct_foundation.networks.presets import get_preset

    with pytest.raises(KeyError, match="vjepa2_1_vitl_384"):
        get_preset("nope")
