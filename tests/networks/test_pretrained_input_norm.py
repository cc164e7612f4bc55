"""V-JEPA's ImageNet input normalisation folded into the adapted patch embedding.

V-JEPA networks see RGB frames scaled to [0, 1] and normalised with the ImageNet mean/std; the package's OCT
volumes are in [0, 1] and one channel. For a gray volume ``g`` the adapted one-channel model must equal the file's
network on ``normalise(g copied to RGB)``. The file's networks are built as in test_pretrained.py (the package's
encoder, whose features match the public V-JEPA 2 code, with random non-trivial weights in the public layouts).
"""
import pytest
import torch
import torch.nn.functional as F

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError
from oct_foundation.networks.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    fold_input_normalization,
    load_pretrained,
)
from oct_foundation.networks.vjepa3d import VJEPA3D

from .test_pretrained import ENC, IMG, PRED, _encoder, _hf_state_dict, _official_file, _predictor, _randomise


def _rgb_normalised(g, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    m = torch.tensor(mean).reshape(1, 3, 1, 1, 1)
    s = torch.tensor(std).reshape(1, 3, 1, 1, 1)
    return (g.repeat(1, 3, 1, 1, 1) - m) / s


def _volume(n=2):
    return torch.rand(n, 1, *IMG)  # OCT intensities in [0, 1]


def test_default_folds_imagenet_norm_for_official_rgb_file(tmp_path, capsys):
    src = _randomise(_encoder(in_chans=3))
    path = _official_file(str(tmp_path / "vitl.pt"), src, predictor=_randomise(_predictor()))
    model = _encoder(in_chans=1)
    report = load_pretrained(model, path)
    g = _volume()
    with torch.no_grad():
        got, ref = model(g), src(_rgb_normalised(g))
        unnormalised = src(g.repeat(1, 3, 1, 1, 1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got - unnormalised).abs().max() > 1e-2  # the folding is not a no-op on these weights
    fn = report.folded_normalization
    assert fn["mean"] == pytest.approx(IMAGENET_MEAN) and fn["std"] == pytest.approx(IMAGENET_STD)
    assert fn["keys"] == ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert report.adapted["patch_embed.proj.weight"].startswith("input mean/std folded; 3->1 channel (sum)")
    assert report.adapted["patch_embed.proj.bias"] == "input mean/std folded"
    assert "patch_embed.proj.bias" not in report.loaded
    printed = capsys.readouterr().out
    assert "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225) folded into patch_embed.proj.weight" in printed

    # channel_adapt="mean": the file's network on the normalised RGB copy of g / 3
    model_mean = _encoder(in_chans=1)
    load_pretrained(model_mean, path, channel_adapt="mean", print_report=False)
    with torch.no_grad():
        torch.testing.assert_close(model_mean(g), src(_rgb_normalised(g / 3)), atol=1e-5, rtol=1e-5)


def test_hf_file_into_vjepa3d_folds_both_encoders_not_the_predictor(tmp_path):
    src, pred = _randomise(_encoder(in_chans=3)), _randomise(_predictor())
    path = str(tmp_path / "hf.pt")
    oio.torch_save(_hf_state_dict(src, pred), path)
    model = VJEPA3D(in_chans=1, **ENC, **PRED, num_mask_tokens=2).eval()
    report = load_pretrained(model, path, print_report=False)
    assert report.source == "hf" and not report.missing and not report.unexpected
    assert report.folded_normalization["keys"] == ["encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"]
    g = _volume()
    with torch.no_grad():
        ref = src(_rgb_normalised(g))
        torch.testing.assert_close(model.encoder(g), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.target_encoder(g), ref, atol=1e-5, rtol=1e-5)  # copied after folding
    for k, v in pred.state_dict().items():
        assert torch.equal(model.predictor.state_dict()[k], v), k


def test_official_target_encoder_folded_too(tmp_path):
    enc, tgt = _randomise(_encoder(in_chans=3)), _randomise(_encoder(in_chans=3))
    path = _official_file(str(tmp_path / "full.pt"), enc, predictor=_randomise(_predictor()), target=tgt)
    model = VJEPA3D(in_chans=1, **ENC, **PRED).eval()
    report = load_pretrained(model, path, print_report=False)
    assert "target_encoder.patch_embed.proj.bias" in report.folded_normalization["keys"]
    g = _volume()
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(g), enc(_rgb_normalised(g)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.target_encoder(g), tgt(_rgb_normalised(g)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("new_tubelet", [1, 4])
def test_fold_then_tubelet_change_keeps_depth_constant_embedding(tmp_path, new_tubelet):
    src = _randomise(_encoder(in_chans=3, tubelet_size=2))
    path = _official_file(str(tmp_path / "t.pt"), src)
    model = _encoder(in_chans=1, tubelet_size=new_tubelet)
    report = load_pretrained(model, path, print_report=False)
    assert "folded" in report.adapted["patch_embed.proj.weight"] and f"tubelet 2->{new_tubelet}" in \
        report.adapted["patch_embed.proj.weight"]
    x = torch.rand(2, 1, 1, *IMG[1:]).expand(-1, -1, IMG[0], -1, -1).contiguous()
    with torch.no_grad():
        ref = src.patch_embed(_rgb_normalised(x)).unflatten(1, (IMG[0] // 2, 16))
        got = model.patch_embed(x).unflatten(1, (IMG[0] // new_tubelet, 16))
    for t in range(got.shape[1]):
        torch.testing.assert_close(got[:, t], ref[:, 0], atol=1e-5, rtol=1e-5)


def test_options_none_custom_and_own_files(tmp_path):
    src = _randomise(_encoder(in_chans=3))
    path = _official_file(str(tmp_path / "v.pt"), src)
    off = _encoder(in_chans=3)
    rep = load_pretrained(off, path, input_norm="none", print_report=False)
    assert rep.folded_normalization == {} and "patch_embed.proj.bias" in rep.loaded
    assert torch.equal(off.patch_embed.proj.weight, src.patch_embed.proj.weight)

    mean, std = (0.5, 0.25, 0.1), (0.5, 2.0, 0.3)
    custom = _encoder(in_chans=3)  # an RGB model: folding also applies without a channel change
    load_pretrained(custom, path, input_norm=(mean, std), print_report=False)
    x = torch.rand(2, 3, *IMG)
    m, s = torch.tensor(mean).reshape(1, 3, 1, 1, 1), torch.tensor(std).reshape(1, 3, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(custom(x), src((x - m) / s), atol=1e-5, rtol=1e-5)

    # the package's own one-channel files: "auto" folds nothing; "imagenet" is refused with the file named
    own = _randomise(_encoder(in_chans=1))
    own_path = str(tmp_path / "own.pt")
    oio.torch_save(own.state_dict(), own_path)
    fresh = _encoder(in_chans=1)
    rep = load_pretrained(fresh, own_path, print_report=False)
    assert rep.folded_normalization == {}
    assert torch.equal(fresh.patch_embed.proj.bias, own.patch_embed.proj.bias)
    with pytest.raises(CheckpointError, match="own.pt.*3-channel patch embedding"):
        load_pretrained(_encoder(in_chans=1), own_path, input_norm="imagenet", print_report=False)
    with pytest.raises(ValueError, match="input_norm must be"):
        load_pretrained(_encoder(in_chans=1), path, input_norm="bogus", print_report=False)


def test_fold_input_normalization_is_exact_for_conv2d_and_conv3d():
    torch.manual_seed(0)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    for shape, conv in (((6, 3, 4, 4), F.conv2d), ((6, 3, 2, 4, 4), F.conv3d)):
        w, b = torch.randn(shape), torch.randn(6)
        x = torch.rand(2, 3, *([4] * (len(shape) - 2)))
        x = x.repeat(1, 1, *([2] * (len(shape) - 2)))
        sh = (1, 3) + (1,) * (len(shape) - 2)
        xn = (x - torch.tensor(mean).reshape(sh)) / torch.tensor(std).reshape(sh)
        w2, b2 = fold_input_normalization(w, b, mean, std)
        stride = shape[2:]
        torch.testing.assert_close(conv(x, w2, b2, stride=stride), conv(xn, w, b, stride=stride),
                                   atol=1e-5, rtol=1e-5)
        _, b0 = fold_input_normalization(w, None, mean, std)  # no bias: the folded bias alone
        torch.testing.assert_close(b0, b2 - b)
    with pytest.raises(ValueError, match="3 channels"):
        fold_input_normalization(torch.randn(2, 3, 1, 1), None, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="positive"):
        fold_input_normalization(torch.randn(2, 3, 1, 1), None, mean, (0.2, 0.0, 0.2))
