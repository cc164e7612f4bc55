import pytest
import torch

from oct_foundation.errors import CheckpointError
from oct_foundation.networks.heads import ClassificationNet, SegmentationNet, set_encoder_trainable
from oct_foundation.networks.vit3d import VisionTransformer3D
from oct_foundation.networks.vjepa3d import VJEPA3D
from oct_foundation.networks.weights import load_weights
from oct_foundation.io import torch_save

ENC = dict(in_chans=1, img_size=(8, 32, 48), patch_size=16, tubelet_size=2, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_segmentation_shapes_any_size(pos_embed):
    net = SegmentationNet(num_classes=4, decoder_channels=(16, 8), pos_embed=pos_embed, **ENC)
    assert net.stages == [(2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)]
    shapes = [(2, 1, 4, 32, 48), (1, 1, 3, 30, 20)] if pos_embed == "rope" else [(1, 1, 4, 16, 48)]
    for shape in shapes:  # non-square grids, padding + crop
        out = net(torch.randn(*shape))
        assert out.shape == (shape[0], 4, *shape[2:])
    # the image skip reaches the output at full resolution: a voxel change alters its own logits
    net.eval()
    x = torch.randn(*shapes[-1])
    x2 = x.clone()
    x2[0, 0, 1, 5, 5] += 5.0
    diff = (net(x2) - net(x)).abs().sum(1)[0]
    assert diff[1, 5, 5] > 0


def test_segmentation_feature_layers_and_no_skip():
    net = SegmentationNet(num_classes=3, decoder_channels=8, image_skip=False, feature_layers=[0, 1],
                          patch_size=(8, 16), **{k: v for k, v in ENC.items() if k != "patch_size"})
    assert net.proj.in_channels == 64 and net.image_skip is None
    assert net(torch.randn(1, 1, 6, 24, 32)).shape == (1, 3, 6, 24, 32)
    with pytest.raises(ValueError, match="feature_layers"):
        SegmentationNet(num_classes=3, feature_layers=[5], **ENC)


def _grads(module):
    return [p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()]


def test_freeze_modes():
    x = torch.randn(2, 1, 4, 32, 32)
    net = SegmentationNet(num_classes=3, decoder_channels=8, freeze="all", **ENC).train()
    assert not net.encoder.training and net.out.training  # frozen encoder stays in eval mode
    net(x).sum().backward()
    assert not any(_grads(net.encoder)) and all(not p.requires_grad for p in net.encoder.parameters())
    assert any(_grads(net.proj))

    net = SegmentationNet(num_classes=3, decoder_channels=8, freeze=1, **ENC).train()
    net(x).square().mean().backward()
    assert not any(_grads(net.encoder.patch_embed)) and not any(_grads(net.encoder.blocks[0]))
    assert all(_grads(net.encoder.blocks[1])) and net.encoder.training

    clf = ClassificationNet(num_classes=2, freeze=False, **ENC)
    clf(x).sum().backward()
    assert all(p.requires_grad for p in clf.encoder.parameters()) and any(_grads(clf.encoder.blocks[0]))
    with pytest.raises(ValueError):
        set_encoder_trainable(clf.encoder, 3)
    with pytest.raises(ValueError):
        set_encoder_trainable(clf.encoder, "some")


@pytest.mark.parametrize("probe", ["linear", "attentive"])
def test_probe_trains_on_separable_volumes(probe):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 2
    x = torch.randn(16, 1, 4, 32, 32, generator=g) * 0.5 + (2.0 * y - 1.0).view(-1, 1, 1, 1, 1)
    net = ClassificationNet(num_classes=2, probe=probe, freeze=True, **ENC)
    enc_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    net.train()
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean()
    assert acc == 1.0 and losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in enc_before.items())
    assert net(torch.randn(3, 1, 5, 20, 40)).shape == (3, 2)  # padded input


def test_build_from_encoder_module_and_vjepa():
    vj = VJEPA3D(embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=16, predictor_depth=1,
                 predictor_num_heads=2, img_size=(8, 32, 48))
    clf = ClassificationNet(vj, num_classes=3)
    assert clf.encoder is vj.encoder
    enc = VisionTransformer3D(**ENC)
    seg = SegmentationNet(enc, num_classes=2)
    assert seg.encoder is enc
    with pytest.raises(ValueError, match="either"):
        SegmentationNet(enc, num_classes=2, embed_dim=32)
    with pytest.raises(ValueError, match="probe"):
        ClassificationNet(num_classes=2, probe="mlp", **ENC)


def _same(enc_a, enc_b):
    a, b = enc_a.state_dict(), enc_b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_weights_encoder_sources(tmp_path, memfs, capsys):
    vj = VJEPA3D(embed_dim=32, depth=2, num_heads=2, predictor_embed_dim=16, predictor_depth=1,
                 predictor_num_heads=2, img_size=(8, 32, 48))
    with torch.no_grad():
        for p in vj.target_encoder.parameters():
            p.add_(1.0)  # make target differ from context encoder
    torch_save(vj.state_dict(), "memory://bundle/models/model.pt")

    seg = SegmentationNet(num_classes=3, decoder_channels=8, freeze="all", **ENC)
    rep = load_weights(seg, "memory://bundle/models/model.pt", source="model_pt")
    assert _same(seg.encoder, vj.encoder) and not rep.missing and not rep.unexpected
    assert len(rep.loaded) == len(vj.encoder.state_dict())
    assert all(not p.requires_grad for p in seg.encoder.parameters())  # freeze kept
    assert "loaded" in capsys.readouterr().out

    load_weights(seg, "memory://bundle/models/model.pt", source="model_pt", use_target_encoder=True)
    assert _same(seg.encoder, vj.target_encoder)

    # an Ignite checkpoint of a downstream net: state under "network"
    ck = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"network": seg.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, ck)
    clf = ClassificationNet(num_classes=2, **ENC)
    load_weights(clf, ck, source="checkpoint")
    assert _same(clf.encoder, seg.encoder)
    with pytest.raises(CheckpointError, match="model"):
        load_weights(clf, ck, source="checkpoint", checkpoint_key="model")

    # random: untouched
    before = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    rep = load_weights(clf, source="random")
    assert not rep.loaded and all(torch.equal(before[k], v) for k, v in clf.encoder.state_dict().items())

    # strict: a wider encoder does not fit
    wide = ClassificationNet(num_classes=2, **{**ENC, "embed_dim": 64, "num_heads": 4})
    with pytest.raises(CheckpointError, match="does not match the encoder"):
        load_weights(wide, "memory://bundle/models/model.pt", source="model_pt")
    # strict: a deeper encoder misses block 2; non-strict loads the rest and reports it
    deep = ClassificationNet(num_classes=2, **{**ENC, "depth": 3})
    with pytest.raises(CheckpointError, match="blocks"):
        load_weights(deep, "memory://bundle/models/model.pt", source="model_pt")
    rep = load_weights(deep, "memory://bundle/models/model.pt", source="model_pt", strict=False)
    assert rep.missing and all(k.startswith("blocks.2.") for k in rep.missing)
    assert torch.equal(deep.encoder.blocks[1].attn.qkv.weight, vj.encoder.blocks[1].attn.qkv.weight)
    with pytest.raises(ValueError, match="source"):
        load_weights(deep, "x.pt", source="imagenet")


def test_load_sincos_other_grid_and_vjepa2_path(tmp_path):
    src = VisionTransformer3D(**{**ENC, "pos_embed": "sincos"})
    path = tmp_path / "enc.pt"
    torch.save(src.state_dict(), path)  # a bare encoder state dict
    dst = SegmentationNet(num_classes=2, decoder_channels=8, **{**ENC, "pos_embed": "sincos", "img_size": (16, 64, 64)})
    rep = load_weights(dst, path, source="model_pt")
    assert "pos_embed" in rep.adapted
    assert torch.equal(dst.encoder.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    # V-JEPA 2 style files go through the package's adapting loader
    clf = ClassificationNet(num_classes=2, **{**ENC, "pos_embed": "sincos"})
    rep = load_weights(clf, path, source="vjepa2", print_report=False)
    assert torch.equal(clf.encoder.patch_embed.proj.weight, src.patch_embed.proj.weight)
