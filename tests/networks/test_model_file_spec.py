"""Self-describing model files: model.pt (plain state_dict) + model.json (what network it is), round trips local
and through fsspec (memory://), the sha256 guard, checked overrides and the architecture a bundle config reads."""
import hashlib
import io as pyio
import json

import fsspec
import pytest
import torch

from oct_foundation.errors import CheckpointError
from oct_foundation.networks import build_from_file, build_vjepa, read_model_spec, resolve_architecture, save_model
from oct_foundation.networks.heads import SegmentationNet
from oct_foundation.networks.model_files import init_args, spec_path

SHAPE = dict(in_chans=1, img_size=[4, 16, 16], patch_size=8, tubelet_size=2, embed_dim=48, depth=2, num_heads=2,
             predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)


def _vjepa(seed=0):
    torch.manual_seed(seed)
    return build_vjepa(**SHAPE)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_spec_path_beside_the_weights():
    assert spec_path("/a/models/model.pt") == "/a/models/model.json"
    assert spec_path("memory://b/autoencoder.pt") == "memory://b/autoencoder.json"
    assert spec_path("model.pt") == "model.json"


def test_save_read_build_round_trip(tmp_path):
    net = _vjepa()
    path = tmp_path / "models" / "model.pt"
    spec = save_model(net, str(path), extra={"epochs": 3})
    # the weights stay a plain state_dict that weights_only loading reads
    state = torch.load(path, weights_only=True)
    assert state.keys() == net.state_dict().keys()
    on_disk = json.loads((tmp_path / "models" / "model.json").read_text())
    assert on_disk == spec
    assert on_disk["_target_"] == "oct_foundation.networks.vjepa3d.VJEPA3D"
    assert on_disk["args"]["embed_dim"] == 48 and on_disk["args"]["img_size"] == [4, 16, 16]
    assert on_disk["args"]["predictor_depth"] == 1
    enc = on_disk["encoder"]
    assert enc["_target_"] == "oct_foundation.networks.vit3d.VisionTransformer3D"
    assert enc["args"]["depth"] == 2 and enc["args"]["patch_size"] == 8
    assert enc["modules"] == ["encoder", "target_encoder"]
    assert set(on_disk["versions"]) == {"oct_foundation", "torch", "monai"}
    assert on_disk["versions"]["torch"] == torch.__version__
    data = path.read_bytes()
    assert on_disk["sha256"] == hashlib.sha256(data).hexdigest() and on_disk["size"] == len(data)
    assert on_disk["extra"] == {"epochs": 3} and on_disk["weights"] == "model.pt"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.json", "model.pt"]  # no partial files

    assert read_model_spec(str(path))["file"] == str(tmp_path / "models" / "model.json")
    assert read_model_spec(str(tmp_path / "models" / "model.json"))["sha256"] == on_disk["sha256"]
    back = build_from_file(str(path))
    assert type(back) is type(net) and _same_state(back, net)
    x = torch.randn(1, 1, 4, 16, 16)
    net.eval(), back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))


def test_memory_url_round_trip():
    net = _vjepa(1)
    url = "memory://model_files_test/run1/models/model.pt"
    spec = save_model(net, url)
    fs = fsspec.filesystem("memory")
    raw = fs.cat_file("/model_files_test/run1/models/model.pt")
    assert hashlib.sha256(raw).hexdigest() == spec["sha256"]
    assert torch.load(pyio.BytesIO(raw), weights_only=True).keys() == net.state_dict().keys()
    assert json.loads(fs.cat_file("/model_files_test/run1/models/model.json"))["sha256"] == spec["sha256"]
    assert read_model_spec(url)["file"] == "memory://model_files_test/run1/models/model.json"
    assert _same_state(build_from_file(url), net)
    arch = resolve_architecture(url)
    assert arch["kwargs"]["embed_dim"] == 48 and arch["file"].endswith("model.json")


def test_replaced_weights_are_refused(tmp_path):
    path = str(tmp_path / "model.pt")
    save_model(_vjepa(0), path)
    torch.save(_vjepa(2).state_dict(), path)  # a bare export over the described one
    with pytest.raises(CheckpointError, match="sha256"):
        read_model_spec(path)
    with pytest.raises(CheckpointError, match="sha256"):
        build_from_file(path)
    with pytest.raises(CheckpointError, match="sha256"):
        resolve_architecture(path)
    assert read_model_spec(path, verify=False)["args"]["embed_dim"] == 48


def test_overrides_must_agree(tmp_path):
    path = str(tmp_path / "model.pt")
    net = _vjepa()
    save_model(net, path)
    # equal values (int for float, tuple for list, patch 8 for [8, 8]) and None are accepted
    ok = build_from_file(path, {"embed_dim": 48, "mlp_ratio": 4, "img_size": (4, 16, 16), "patch_size": [8, 8],
                                "depth": None})
    assert _same_state(ok, net)
    with pytest.raises(CheckpointError) as err:
        build_from_file(path, {"embed_dim": 96})
    msg = str(err.value)
    assert "embed_dim" in msg and "96" in msg and "48" in msg and str(tmp_path / "model.json") in msg
    with pytest.raises(CheckpointError, match="no_such_key"):
        build_from_file(path, {"no_such_key": 1})


def test_missing_description(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(_vjepa().state_dict(), path)
    assert read_model_spec(str(path), required=False) is None
    with pytest.raises(CheckpointError, match="bare.json"):
        read_model_spec(str(path))


def test_target_outside_the_package_is_refused(tmp_path):
    path = str(tmp_path / "model.pt")
    save_model(_vjepa(), path)
    spec = json.loads((tmp_path / "model.json").read_text())
    for target in ("os.system", "oct_foundation.io.atomic_write"):
        spec["_target_"] = target
        (tmp_path / "model.json").write_text(json.dumps(spec))
        with pytest.raises(CheckpointError, match="_target_"):
            build_from_file(path)


def test_architecture_for_configs(tmp_path):
    path = str(tmp_path / "model.pt")
    save_model(_vjepa(), path)
    arch = resolve_architecture(path, embed_dim=None, depth=2, patch_size=None)
    assert arch["kwargs"]["embed_dim"] == 48 and arch["d_target"] == 4 and arch["image_size"] == [16, 16]
    assert "predictor_depth" not in arch["kwargs"]  # the encoder's arguments only
    # the input geometry follows the file unless given
    moved = resolve_architecture(path, d_target=8, image_size=[32, 32])
    assert moved["kwargs"]["img_size"] == [8, 32, 32] and moved["d_target"] == 8
    with pytest.raises(CheckpointError, match="num_heads"):
        resolve_architecture(path, num_heads=4)
    whole = resolve_architecture(path, part="network", predictor_depth=1)
    assert whole["kwargs"]["predictor_embed_dim"] == 16 and whole["kwargs"]["num_mask_tokens"] == 2
    with pytest.raises(CheckpointError, match="predictor_depth"):
        resolve_architecture(path, part="network", predictor_depth=3)
    # no file / a file without model.json: the bundle defaults (the pretraining bundle's vit_small_oct), with keys
    for no_file in (None, "", str(tmp_path / "absent.pt")):
        d = resolve_architecture(no_file)
        assert d["file"] is None and d["kwargs"] == dict(in_chans=1, img_size=[16, 128, 128], patch_size=16,
                                                          tubelet_size=2, embed_dim=384, depth=12, num_heads=6,
                                                          mlp_ratio=4.0, pos_embed="rope")
    given = resolve_architecture(None, embed_dim=96, depth=4, d_target=8)
    assert given["kwargs"]["embed_dim"] == 96 and given["kwargs"]["img_size"] == [8, 128, 128]


def test_head_network_describes_its_encoder(tmp_path):
    arch = resolve_architecture(None, embed_dim=48, depth=2, num_heads=2, patch_size=8, d_target=4, image_size=[16, 16])
    torch.manual_seed(0)
    seg = SegmentationNet(encoder=arch["kwargs"], num_classes=3, decoder_channels=[8], freeze="all")
    assert init_args(seg)[0] == "oct_foundation.networks.heads.SegmentationNet"
    path = str(tmp_path / "seg" / "model.pt")
    spec = save_model(seg, path)
    assert spec["args"]["num_classes"] == 3 and spec["args"]["encoder"]["embed_dim"] == 48
    assert spec["encoder"]["modules"] == ["encoder"]
    back = build_from_file(path)
    assert isinstance(back, SegmentationNet) and _same_state(back, seg)
    # a downstream model file gives its encoder's architecture too (evaluation, inference)
    assert resolve_architecture(path)["kwargs"]["embed_dim"] == 48
    with pytest.raises(CheckpointError, match="not a V-JEPA network"):
        resolve_architecture(path, part="network")


def test_model_export_handler_writes_the_description(tmp_path):
    from oct_foundation.engines import ModelExport

    net = _vjepa()
    ModelExport(net, str(tmp_path / "model.pt"))()
    assert read_model_spec(str(tmp_path / "model.pt"))["args"]["embed_dim"] == 48
    # a network that records nothing: bare weights, and no stale description is left beside them
    lin = torch.nn.Linear(2, 2)
    ModelExport(lin, str(tmp_path / "model.pt"))()
    assert not (tmp_path / "model.json").exists()
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == lin.state_dict().keys()
    # ... unless told what it is
    ModelExport(lin, str(tmp_path / "model.pt"), network_def_args={"in_features": 2, "out_features": 2},
                target="torch.nn.Linear")()
    assert read_model_spec(str(tmp_path / "model.pt"))["_target_"] == "torch.nn.Linear"
