"""SegmentationNet's multi-scale image skip (``image_skip_levels``): shapes, where the image joins, and that the
skip path is trained while the encoder is frozen."""
import pytest
import torch

from oct_foundation.networks.heads import SegmentationNet

ENC = dict(in_chans=1, img_size=(8, 32, 48), patch_size=16, tubelet_size=2, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("levels,expected", [(1, 1), (2, 2), (None, 4), (9, 4)])
def test_image_skip_levels_shapes(levels, expected):
    net = SegmentationNet(num_classes=4, decoder_channels=(16, 8), image_skip_levels=levels, feature_layers=[0, 1],
                          freeze="all", **ENC)
    assert net.stages == [(2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert net.image_skip_levels == expected and len(net.image_pyramid) == expected - 1
    for shape in [(2, 1, 4, 32, 48), (1, 1, 5, 30, 20)]:  # padding to the patch grid and crop back
        assert net(torch.randn(*shape)).shape == (shape[0], 4, *shape[2:])


def test_one_level_keeps_the_previous_layout():
    """image_skip_levels=1 builds the modules (and state-dict keys) of the single full-resolution skip."""
    a = SegmentationNet(num_classes=3, decoder_channels=8, **ENC)
    b = SegmentationNet(num_classes=3, decoder_channels=8, image_skip_levels=1, **ENC)
    assert set(a.state_dict()) == set(b.state_dict()) and not any("image_pyramid" in k for k in a.state_dict())
    with pytest.raises(ValueError, match="image_skip_levels"):
        SegmentationNet(num_classes=3, image_skip_levels=0, **ENC)


def test_gradients_reach_every_skip_level_with_a_frozen_encoder():
    torch.manual_seed(0)
    net = SegmentationNet(num_classes=3, decoder_channels=8, image_skip_levels=None, freeze="all", **ENC).train()
    x = torch.randn(1, 1, 4, 32, 48)
    y = torch.randint(0, 3, (1, 4, 32, 48))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    for module in [net.image_skip, *net.image_pyramid]:
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_inference_builds_the_skip_layout_a_file_was_trained_with(tmp_path):
    from oct_foundation.networks.baselines import saved_head_arg
    from oct_foundation.networks.model_files import save_model

    every = SegmentationNet(num_classes=3, decoder_channels=8, image_skip_levels=None, **ENC)
    save_model(every, str(tmp_path / "new" / "model.pt"))
    assert saved_head_arg(str(tmp_path / "new" / "model.pt"), "image_skip_levels", 1) is None
    two = SegmentationNet(num_classes=3, decoder_channels=8, image_skip_levels=2, **ENC)
    save_model(two, str(tmp_path / "two" / "model.pt"))
    assert saved_head_arg(str(tmp_path / "two" / "model.pt"), "image_skip_levels", 1) == 2
    torch.save(every.state_dict(), tmp_path / "bare.pt")  # no model.json: a file of the earlier layout
    assert saved_head_arg(str(tmp_path / "bare.pt"), "image_skip_levels", 1) == 1
    rebuilt = SegmentationNet(num_classes=3, decoder_channels=8,
                              image_skip_levels=saved_head_arg(str(tmp_path / "new" / "model.pt"),
                                                               "image_skip_levels", 1), **ENC)
    rebuilt.load_state_dict(torch.load(tmp_path / "new" / "model.pt", weights_only=True))  # strict
