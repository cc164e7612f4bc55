"""V-JEPA 2.1 official files into the package's one encoder class.

The reference below rebuilds the public V-JEPA 2.1 encoder (facebookresearch/vjepa2, ``app/vjepa_2_1``:
``VisionTransformer`` with ``use_rope``, ``interpolate_rope``, ``modality_embedding``, ``img_temporal_dim_size=1``,
four ``norms_block``) from its structure, written out step by step: RoPE angles ``pos / 10000**(j / (a/2))``
repeated *interleaved* (a true rotation of adjacent pairs) per depth/height/width chunk of ``a =
2 * ((head_dim // 3) // 2)`` channels (remainder unrotated); height/width positions rescaled by
``(16 - 1) / (H' - 1)`` (256 px pretrained at patch 16); ``video_mod_embed`` / ``img_mod_embed`` added after the
patch embedding; single frames through ``patch_embed_img`` (tubelet 1). Files are written in the released layout
(``module.backbone.`` keys under ``ema_encoder`` for ViT-B/L, ``target_encoder`` for g/G) with random non-trivial
weights, and the adapted one-channel encoder must reproduce the reference on the ImageNet-normalised RGB copy.
"""
import pytest
import torch
from torch import nn

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError
from oct_foundation.networks.pretrained import IMAGENET_MEAN, IMAGENET_STD, detect_format, load_pretrained
from oct_foundation.networks.vit3d import VisionTransformer3D, default_hierarchical_layers
from tests.networks.rope21_reference import RefBlock, rope_block

E, HEADS, DEPTH, P, TUB = 52, 2, 4, 16, 2  # head_dim 26: three rotated chunks of 8 + 2 unrotated channels
HW = (64, 48)  # token grid 4 x 3 (non-square)
HIER = (0, 1, 2, 3)


class Ref21Encoder(nn.Module):
    """The public 2.1 encoder's parameters and forward (RGB input), for the test only."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, E, (TUB, P, P), stride=(TUB, P, P))
        self.patch_embed_img = nn.Module()
        self.patch_embed_img.proj = nn.Conv3d(3, E, (1, P, P), stride=(1, P, P))
        self.blocks = nn.ModuleList([RefBlock(E) for _ in range(DEPTH)])
        self.norms_block = nn.ModuleList([nn.LayerNorm(E, eps=1e-6) for _ in HIER])
        self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, E))
        self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, E))

    def forward(self, x, hierarchical=False):
        t = x.shape[2]
        image = t == 1
        emb = self.patch_embed_img if image else self.patch_embed
        x = emb.proj(x).flatten(2).transpose(1, 2)
        x = x + (self.img_mod_embed if image else self.video_mod_embed)
        tp, hp, wp = (1 if image else t // TUB), HW[0] // P, HW[1] // P
        ids = torch.arange(tp * hp * wp)
        frame = ids // (hp * wp)
        height = (ids - frame * hp * wp) // wp
        width = ids - frame * hp * wp - height * wp
        d_pos, h_pos, w_pos = frame * 1.0, height * (16 - 1) / (hp - 1), width * (16 - 1) / (wp - 1)
        hier = []
        for i, blk in enumerate(self.blocks):
            x = rope_block(blk, x, HEADS, (d_pos, h_pos, w_pos))
            if i in HIER:
                hier.append(self.norms_block[HIER.index(i)](x))
        return hier if hierarchical else self.norms_block[-1](x)


def _reference():
    torch.manual_seed(0)
    ref = Ref21Encoder().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for blk in ref.blocks:  # sharp attention, so that positions change the features visibly
            blk.attn.qkv.weight.mul_(4.0)
    return ref


def _model(**kw):
    opts = dict(in_chans=1, img_size=(16, *HW), patch_size=P, tubelet_size=TUB, embed_dim=E, depth=DEPTH,
                num_heads=HEADS, rope_variant="rotary", interpolate_rope=True, modality_embedding=True,
                img_temporal_dim_size=1, hierarchical_norms=True)
    return VisionTransformer3D(**{**opts, **kw}).eval()


def _file(path, ref, key):
    ckpt = {key: {f"module.backbone.{k}": v.clone() for k, v in ref.state_dict().items()}, "epoch": 3}
    oio.torch_save(ckpt, path)
    return path


def _rgb(g):
    m, s = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1, 1)
    return (g.repeat(1, 3, 1, 1, 1) - m) / s


@pytest.mark.parametrize("key", ["ema_encoder", "target_encoder"])
def test_official_21_file_reproduces_reference_on_normalised_rgb(tmp_path, key, capsys):
    ref = _reference()
    path = _file(str(tmp_path / "vjepa2_1.pt"), ref, key)
    assert detect_format(oio.torch_load(path)) == "official"
    model = _model()
    report = load_pretrained(model, path)  # strict, no allow-list
    assert not report.missing and not report.unexpected and not report.mismatched
    assert "encoder <- file 'target_encoder'" in report.notes
    assert set(report.folded_normalization["keys"]) == {
        "patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed_img.proj.weight", "patch_embed_img.proj.bias"}
    assert "norm.weight" not in model.state_dict() and "norms_block.3.weight" in report.loaded
    assert capsys.readouterr().out.count("(format: ") == 1
    torch.manual_seed(1)
    with torch.no_grad():
        for t in (8, 16, 1):  # 8 and 16 slices, and one single-frame image (patch_embed_img, img_mod_embed)
            g = torch.rand(2, 1, t, *HW)
            got, want = model(g), ref(_rgb(g))
            assert got.shape == (2, (t // TUB if t > 1 else 1) * 12, E)
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)
            hier, want_h = model.hierarchical_outputs(g), ref(_rgb(g), hierarchical=True)
            assert len(hier) == 4
            for a, b in zip(hier, want_h):
                torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)
            torch.testing.assert_close(hier[-1], got)


def test_each_21_option_matters(tmp_path):
    """Dropping any 2.1 option changes the features (the equality above is not an accident of the weights)."""
    ref = _reference()
    path = _file(str(tmp_path / "v.pt"), ref, "ema_encoder")
    g = torch.rand(1, 1, 8, *HW)
    with torch.no_grad():
        want = ref(_rgb(g))
        for kw in (dict(rope_variant="vjepa2"), dict(interpolate_rope=False)):
            m = _model(**kw)
            load_pretrained(m, path, print_report=False)
            assert (m(g) - want).abs().max() > 1e-2, kw
        m = _model()
        load_pretrained(m, path, print_report=False, input_norm="none")
        assert (m(g) - want).abs().max() > 1e-2
        # the image branch is used for single frames only; a two-slice volume goes through the tubelet embedding
        ok = _model()
        load_pretrained(ok, path, print_report=False)
        g2 = torch.rand(1, 1, 2, *HW)
        torch.testing.assert_close(ok(g2), ref(_rgb(g2)), atol=2e-4, rtol=1e-3)
        with torch.no_grad():  # img_mod_embed is for single frames only
            ok.img_mod_embed.add_(torch.randn_like(ok.img_mod_embed))
        torch.testing.assert_close(ok(g2), ref(_rgb(g2)), atol=2e-4, rtol=1e-3)
        g1 = torch.rand(1, 1, 1, *HW)
        assert (ok(g1) - ref(_rgb(g1))).abs().max() > 1e-2


def test_21_file_into_20_encoder_fails_with_hints(tmp_path):
    path = _file(str(tmp_path / "v.pt"), _reference(), "ema_encoder")
    plain = VisionTransformer3D(in_chans=1, img_size=(16, *HW), patch_size=P, tubelet_size=TUB, embed_dim=E,
                                depth=DEPTH, num_heads=HEADS)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(plain, path, print_report=False)
    msg = str(err.value)
    assert "hierarchical_norms=True" in msg and "modality_embedding=True" in msg and "img_temporal_dim_size=1" in msg


def test_hierarchical_layers_and_norm_alias():
    assert default_hierarchical_layers(24) == (5, 11, 17, 23) and default_hierarchical_layers(48)[-1] == 47
    assert default_hierarchical_layers(8) == (1, 3, 5, 7)
    m = _model()
    assert m.norm is m.norms_block[-1] and not any(k.startswith("norm.") for k in m.state_dict())
    with pytest.raises(ValueError, match="hierarchical_layers"):
        _model(hierarchical_layers=(0, 1))
    with pytest.raises(RuntimeError, match="hierarchical_norms"):
        VisionTransformer3D(in_chans=1, img_size=(4, 32, 32), patch_size=16, embed_dim=32, depth=2,
                            num_heads=2).hierarchical_outputs(torch.zeros(1, 1, 4, 32, 32))
