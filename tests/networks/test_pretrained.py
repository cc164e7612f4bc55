"""Loading V-JEPA 2 / V-JEPA 1 / Hugging Face checkpoints into the package's networks.

Tests comparing with the file's network on the un-normalised RGB copy pass ``input_norm="none"``; the folded
ImageNet normalisation (the default for V-JEPA files) is tested in test_pretrained_input_norm.py.

Every test writes its own tiny checkpoint in the public layout (random weights; nothing is downloaded):
official training files are dicts of ``encoder`` / ``target_encoder`` / ``predictor`` state dicts with the
``module.backbone.`` prefixes; Hugging Face files are built here by renaming keys and splitting ``qkv`` into
query/key/value as transformers' conversion script does (transformers itself is not installed).
"""
import math

import pytest
import torch

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError
from oct_foundation.networks.predictor import Predictor3D
from oct_foundation.networks.pretrained import (
    LoadReport,
    adapt_patch_weight,
    convert_checkpoint,
    detect_format,
    infer_sincos_grid,
    interpolate_pos_table,
    load_pretrained,
    resample_kernel_axis,
    sincos_table_3d,
)
from oct_foundation.networks.vit3d import VisionTransformer3D, sincos_pos_embed_3d
from oct_foundation.networks.vjepa3d import VJEPA3D

E, P, TUB = 32, 8, 2
IMG = (8, 32, 32)  # token grid (4, 4, 4)
ENC = dict(img_size=IMG, patch_size=P, tubelet_size=TUB, embed_dim=E, depth=2, num_heads=2)
PRED = dict(predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)


def _encoder(in_chans=3, **kw):
    return VisionTransformer3D(in_chans=in_chans, **{**ENC, **kw}).eval()


def _predictor(num_mask_tokens=2):
    return Predictor3D(E, predictor_embed_dim=16, depth=1, num_heads=2, num_mask_tokens=num_mask_tokens).eval()


def _official(sd):
    return {f"module.backbone.{k}": v.clone() for k, v in sd.items()}


def _official_file(path, encoder, predictor=None, target=None):
    """A V-JEPA 2 training checkpoint: prefixed part state dicts plus training scalars."""
    ckpt = {"encoder": _official(encoder.state_dict()), "epoch": 7, "loss": 0.25, "lr": 1e-4, "batch_size": 2}
    if predictor is not None:
        ckpt["predictor"] = _official(predictor.state_dict())
    if target is not None:
        ckpt["target_encoder"] = _official(target.state_dict())
    oio.torch_save(ckpt, path)
    return path


def _hf_state_dict(encoder, predictor=None):
    """``VJEPA2Model.state_dict()`` layout, built by renaming and splitting qkv (as convert_vjepa2_to_hf.py)."""
    out = {}

    def block(prefix_out, key, v, dim):
        sub = key.split(".", 2)[2]  # after "blocks.{i}."
        if sub.startswith("attn.qkv."):
            suffix = sub.rsplit(".", 1)[1]
            for name, chunk in zip(("query", "key", "value"), v.split(dim, dim=0)):
                out[f"{prefix_out}attention.{name}.{suffix}"] = chunk.clone()
        else:
            out[prefix_out + sub.replace("attn.", "attention.")] = v.clone()

    for k, v in encoder.state_dict().items():
        if k.startswith("patch_embed."):
            out["encoder.embeddings.patch_embeddings." + k[len("patch_embed."):]] = v.clone()
        elif k.startswith("norm."):
            out["encoder.layernorm." + k[len("norm."):]] = v.clone()
        elif k.startswith("blocks."):
            block(f"encoder.layer.{k.split('.')[1]}.", k, v, encoder.embed_dim)
    if predictor is not None:
        tokens = []
        for k, v in predictor.state_dict().items():
            if k.startswith("predictor_embed."):
                out["predictor.embeddings.predictor_embeddings." + k.split(".", 1)[1]] = v.clone()
            elif k.startswith("mask_tokens."):
                tokens.append(v)
            elif k.startswith("predictor_norm."):
                out["predictor.layernorm." + k.split(".", 1)[1]] = v.clone()
            elif k.startswith("predictor_proj."):
                out["predictor.proj." + k.split(".", 1)[1]] = v.clone()
            elif k.startswith("predictor_blocks."):
                block(f"predictor.layer.{k.split('.')[1]}.", k, v, predictor.predictor_embed_dim)
        out["predictor.embeddings.mask_tokens"] = torch.stack(tokens, 0)  # [n, 1, 1, P]
    return out


def _randomise(module):
    """Non-trivial values everywhere (LayerNorms and biases start at 1/0), so a wrong mapping shows up."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return module


def _gray(shape=(2, 1, *IMG)):
    return torch.randn(*shape)


# -------------------------------------------------------------------------------------- formats / features
def test_official_layout_rgb_to_gray_gives_three_channel_features(tmp_path, capsys):
    src = _randomise(_encoder(in_chans=3))
    path = _official_file(str(tmp_path / "vitl.pt"), src, predictor=_randomise(_predictor()))
    assert detect_format(oio.torch_load(path)) == "official"

    model = _encoder(in_chans=1)
    # the predictor is simply not used for an encoder
    report = load_pretrained(model, path, allow_unexpected=(), input_norm="none")
    assert isinstance(report, LoadReport)
    assert report.missing == [] and report.unexpected == [] and not report.mismatched
    assert "3->1 channel (sum)" in report.adapted["patch_embed.proj.weight"]
    assert "blocks.1.attn.qkv.weight" in report.loaded
    printed = capsys.readouterr().out
    assert printed.count("(format: ") == 1 and "adapted" in printed and "3->1 channel" in printed

    x = _gray()
    with torch.no_grad():
        got = model(x)
        ref = src(x.repeat(1, 3, 1, 1, 1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

    # mean: the same weights divided by 3, i.e. the RGB network seeing a third of the gray value in every channel
    model_mean = _encoder(in_chans=1)
    rep = load_pretrained(model_mean, path, channel_adapt="mean", print_report=False, input_norm="none")
    assert "(mean)" in rep.adapted["patch_embed.proj.weight"]
    with torch.no_grad():
        torch.testing.assert_close(model_mean(x), src((x / 3).repeat(1, 3, 1, 1, 1)), atol=1e-5, rtol=1e-5)


def test_hf_layout_fuses_qkv_and_loads_vjepa3d(tmp_path):
    src = _randomise(_encoder(in_chans=3))
    pred = _randomise(_predictor(num_mask_tokens=2))
    with torch.no_grad():
        for t in pred.mask_tokens:
            t.normal_()
    hf = _hf_state_dict(src, pred)
    assert "encoder.layer.0.attention.query.weight" in hf and "encoder.layer.0.attention.proj.bias" in hf
    path = str(tmp_path / "hf.pt")
    oio.torch_save({"vjepa2." + k: v for k, v in hf.items()}, path)  # classification-model prefix
    assert detect_format(oio.torch_load(path)) == "hf"

    model = VJEPA3D(in_chans=1, **ENC, **PRED, num_mask_tokens=2).eval()
    report = load_pretrained(model, path, print_report=False, input_norm="none")
    assert report.source == "hf"
    assert report.missing == [] and report.unexpected == []
    assert "query/key/value" in report.adapted["encoder.blocks.0.attn.qkv.weight"]
    assert "query/key/value" in report.adapted["predictor.predictor_blocks.0.attn.qkv.bias"]
    # the file has no target encoder: it starts as the adapted encoder
    assert "copied" in report.adapted["target_encoder.blocks.1.mlp.fc2.weight"]

    x = _gray()
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), src(x.repeat(1, 3, 1, 1, 1)), atol=1e-5, rtol=1e-5)
        for (k, a), (_, b) in zip(model.encoder.state_dict().items(), model.target_encoder.state_dict().items()):
            assert torch.equal(a, b), k
        for k, v in pred.state_dict().items():
            assert torch.equal(model.predictor.state_dict()[k], v), k
        # predictor gives the same predictions as the source predictor on the same context
        ctx, tgt = torch.arange(0, 40)[None].repeat(2, 1), torch.arange(40, 64)[None].repeat(2, 1)
        z = src(x.repeat(1, 3, 1, 1, 1), masks=ctx)
        torch.testing.assert_close(
            model.predictor(z, ctx, tgt, (4, 4, 4), mask_index=1), pred(z, ctx, tgt, (4, 4, 4), mask_index=1)
        )


def test_official_vjepa3d_target_encoder_sources(tmp_path):
    enc, tgt_enc, pred = (_randomise(_encoder(in_chans=3)), _randomise(_encoder(in_chans=3)),
                          _randomise(_predictor()))
    path = _official_file(str(tmp_path / "full.pt"), enc, predictor=pred, target=tgt_enc)
    x = _gray()
    x3 = x.repeat(1, 3, 1, 1, 1)

    model = VJEPA3D(in_chans=1, **ENC, **PRED).eval()
    report = load_pretrained(model, path, print_report=False, input_norm="none")
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), enc(x3), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.target_encoder(x), tgt_enc(x3), atol=1e-5, rtol=1e-5)

    both = VJEPA3D(in_chans=1, **ENC, **PRED).eval()
    load_pretrained(both, path, use_target_encoder=True, print_report=False, input_norm="none")
    with torch.no_grad():
        torch.testing.assert_close(both.encoder(x), tgt_enc(x3), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both.target_encoder(x), tgt_enc(x3), atol=1e-5, rtol=1e-5)

    only_target = VisionTransformer3D(in_chans=1, **ENC).eval()
    load_pretrained(only_target, path, checkpoint_key="target_encoder", print_report=False, input_norm="none")
    with torch.no_grad():
        torch.testing.assert_close(only_target(x), tgt_enc(x3), atol=1e-5, rtol=1e-5)


def test_encoder_only_file_needs_allow_list_and_keeps_predictor_init(tmp_path):
    src = _randomise(_encoder(in_chans=1))
    path = str(tmp_path / "encoder_only.pt")
    oio.torch_save({f"module.{k}": v for k, v in src.state_dict().items()}, path)  # bare state dict
    assert detect_format(oio.torch_load(path)) == "state_dict"

    model = VJEPA3D(in_chans=1, **ENC, **PRED).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, path, print_report=False)
    msg = str(err.value)
    assert msg.startswith(path) and "missing" in msg and "predictor.predictor_proj" in msg and "NOT IN FILE" in msg
    for k, v in model.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k

    report = load_pretrained(model, path, allow_missing=("predictor.*",), print_report=False)
    assert report.missing and all(k.startswith("predictor.") for k in report.missing)
    assert report.allowed_missing == report.missing
    assert "kept at init (allowed)" in report.table()
    for k, v in model.predictor.state_dict().items():
        assert torch.equal(v, before["predictor." + k]), k
    for k, v in src.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
        assert torch.equal(model.target_encoder.state_dict()[k], v)


# ------------------------------------------------------------------------------------- kernel adaptations
@pytest.mark.parametrize("new_tubelet", [1, 4])
def test_tubelet_change_keeps_embedding_of_depth_constant_volume(tmp_path, new_tubelet):
    src = _randomise(_encoder(in_chans=3, tubelet_size=2))
    path = _official_file(str(tmp_path / "t.pt"), src)
    model = _encoder(in_chans=1, tubelet_size=new_tubelet)
    report = load_pretrained(model, path, print_report=False, input_norm="none")
    assert f"tubelet 2->{new_tubelet}" in report.adapted["patch_embed.proj.weight"]

    slice_ = torch.randn(2, 1, 1, *IMG[1:])
    x = slice_.expand(-1, -1, IMG[0], -1, -1).contiguous()  # the same B-scan at every depth
    with torch.no_grad():
        ref = src.patch_embed(x.repeat(1, 3, 1, 1, 1)).unflatten(1, (IMG[0] // 2, 16))
        got = model.patch_embed(x).unflatten(1, (IMG[0] // new_tubelet, 16))
    for t in range(got.shape[1]):
        torch.testing.assert_close(got[:, t], ref[:, 0], atol=1e-5, rtol=1e-5)


def test_kernel_resampling_preserves_sums_and_piecewise_constant_inputs():
    w = torch.randn(5, 3, 2, 8, 8)
    for n in (1, 3, 4, 5):
        r = resample_kernel_axis(w, 2, n)
        assert r.shape[2] == n
        torch.testing.assert_close(r.sum(2), w.sum(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(resample_kernel_axis(w, 2, 4)[:, :, :2], w[:, :, :1].expand(-1, -1, 2, -1, -1) / 2)

    # patch 8 -> 4: every 4x4 token inside a constant 8x8 cell gets the embedding of that old 8x8 token
    new, how = adapt_patch_weight(w, (5, 1, 2, 4, 4), "sum")
    assert any("patch height 8->4" in h for h in how)
    conv = torch.nn.functional.conv3d
    x = torch.randn(1, 1, 1, 2, 2).repeat_interleave(8, 3).repeat_interleave(8, 4).expand(-1, -1, 2, -1, -1)
    old_resp = conv(x.repeat(1, 3, 1, 1, 1), w, stride=(2, 8, 8))  # [1, 5, 1, 2, 2]
    new_resp = conv(x, new, stride=(2, 4, 4))  # [1, 5, 1, 4, 4]
    up = old_resp.repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(new_resp, up, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="embedding width"):
        adapt_patch_weight(w, (6, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        adapt_patch_weight(w, (5, 2, 2, 8, 8))


# ------------------------------------------------------------------------------------ position tables
def test_sincos_table_interpolation_on_3d_grid():
    table = sincos_table_3d(E, (4, 4, 4))[None]
    assert torch.allclose(table[0], sincos_pos_embed_3d(E, (4, 4, 4)), atol=1e-6)  # same layout as vit3d
    assert infer_sincos_grid(table) == ((4, 4, 4), False)
    assert infer_sincos_grid(torch.randn(1, 64, E)) is None
    # same grid: identity; n -> 2n-1 -> n round-trips (align_corners keeps the original nodes)
    torch.testing.assert_close(interpolate_pos_table(table, (4, 4, 4), (4, 4, 4)), table)
    up = interpolate_pos_table(table, (4, 4, 4), (7, 7, 7))
    assert up.shape == (1, 343, E)
    torch.testing.assert_close(interpolate_pos_table(up, (7, 7, 7), (4, 4, 4)), table, atol=1e-6, rtol=0)
    # a smooth table sampled on the grid resamples to the table computed directly at the new grid's positions
    src, dst = (4, 6, 6), (6, 9, 5)
    lin = lambda g: [torch.linspace(0, 0.5, n) for n in g]  # noqa: E731 (low frequencies: smooth)
    smooth_src = sincos_table_3d(E, src, positions=lin(src))
    direct = sincos_table_3d(E, dst, positions=lin(dst))
    got = interpolate_pos_table(smooth_src, src, dst)[0]
    assert (got - direct).abs().max() < 5e-3
    # ... which a 1D resampling of the flattened sequence does not achieve
    flat = torch.nn.functional.interpolate(smooth_src.T[None], size=math.prod(dst), mode="linear", align_corners=True)
    assert (flat[0].T - direct).abs().max() > 0.1
    # the axes are not mixed: rows in (t, h, w) raster order follow each axis separately
    tab = torch.arange(4 * 6 * 6, dtype=torch.float64).reshape(-1, 1).float()  # value = raster index
    out = interpolate_pos_table(tab, (4, 6, 6), (4, 6, 11))[0, :, 0].reshape(4, 6, 11)
    torch.testing.assert_close(out[:, :, 0], tab[:, 0].reshape(4, 6, 6)[:, :, 0])
    torch.testing.assert_close(out[:, :, -1], tab[:, 0].reshape(4, 6, 6)[:, :, -1])


def test_vjepa1_file_position_table_resampled_and_rope_model_refuses_it(tmp_path):
    src = _randomise(_encoder(in_chans=3, pos_embed="sincos"))
    assert "pos_embed" in src.state_dict()
    src_pred = Predictor3D(E, predictor_embed_dim=16, depth=1, num_heads=2, pos_embed="sincos", num_mask_tokens=2)
    pred_sd = dict(src_pred.state_dict())
    pred_sd["predictor_pos_embed"] = sincos_table_3d(16, (4, 4, 4))[None]  # V-JEPA 1 stores the table
    path = str(tmp_path / "vjepa1.pth")
    oio.torch_save({"encoder": _official(src.state_dict()), "predictor": _official(pred_sd)}, path)
    assert detect_format(oio.torch_load(path)) == "vjepa1"

    big = VJEPA3D(in_chans=1, **{**ENC, "img_size": (16, 48, 48)}, **PRED, pos_embed="sincos").eval()
    report = load_pretrained(big, path, print_report=False)
    assert report.source == "vjepa1"
    how = report.adapted["encoder.pos_embed"]
    assert "trilinear (4, 4, 4) -> (8, 6, 6)" in how
    expected = interpolate_pos_table(src.state_dict()["pos_embed"], (4, 4, 4), (8, 6, 6))
    torch.testing.assert_close(big.encoder.pos_embed, expected)
    assert any("predictor.predictor_pos_embed" in n and "recomputed" in n for n in report.notes)
    # recompute: the exact table of the new grid, which is what the model uses at any other input size
    exact = VisionTransformer3D(in_chans=1, **{**ENC, "img_size": (16, 48, 48)}, pos_embed="sincos")
    rep = load_pretrained(exact, path, pos_table="recompute", print_report=False)
    assert "sin-cos recomputed (4, 4, 4) -> (8, 6, 6)" in rep.adapted["pos_embed"]
    torch.testing.assert_close(exact.pos_embed[0], sincos_pos_embed_3d(E, (8, 6, 6)))
    # a table with another channel layout is flagged
    other = VisionTransformer3D(in_chans=1, **ENC, pos_embed="sincos", uniform_power=True)
    rep = load_pretrained(other, path, print_report=False)
    assert any("uniform_power=False" in n for n in rep.notes)
    torch.testing.assert_close(other.pos_embed, src.pos_embed)  # same grid: loaded as is

    rope = _encoder(in_chans=1)  # RoPE: an additive table has no place
    with pytest.raises(CheckpointError, match="unexpected") as err:
        load_pretrained(rope, path, print_report=False)
    assert "pos_embed" in str(err.value) and "NOT IN MODEL" in str(err.value)
    rep = load_pretrained(rope, path, allow_unexpected=("pos_embed",), print_report=False)
    assert rep.allowed_unexpected == ["pos_embed"]


# ------------------------------------------------------------------------------------------- refusals
def test_wrong_embed_dim_raises_with_table_and_loads_nothing(tmp_path):
    wide = _encoder(in_chans=3, embed_dim=48, num_heads=2)
    path = _official_file(str(tmp_path / "wide.pt"), wide)
    model = _encoder(in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, path, strict=False)  # shape mismatches raise even when not strict
    msg = str(err.value)
    assert "shape mismatch" in msg and "MISMATCH" in msg and "embedding width 48 != 32" in msg
    assert "blocks.{0-1}.attn.qkv.weight" in msg and "[144, 48] vs model [96, 32]" in msg  # compacted table
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_keys_raise_unless_allowed(tmp_path):
    src = _randomise(_encoder(in_chans=1))
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.1.")}
    path = str(tmp_path / "partial.pt")
    oio.torch_save({"encoder": _official(sd)}, path)
    model = _encoder(in_chans=1)
    with pytest.raises(CheckpointError, match="missing key") as err:
        load_pretrained(model, path)
    assert "blocks.1.mlp.fc1.{weight,bias}" in str(err.value)
    init_fc1 = model.blocks[1].mlp.fc1.weight.detach().clone()
    report = load_pretrained(model, path, allow_missing=("blocks.1.*",), print_report=False)
    assert len(report.missing) == 12 and report.allowed_missing == report.missing
    assert torch.equal(model.blocks[1].mlp.fc1.weight, init_fc1)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    # strict=False tolerates missing keys without an allow-list
    load_pretrained(_encoder(in_chans=1), path, strict=False, print_report=False)


def test_memory_url_and_roundtrip_of_own_state_dict(memfs):
    model = _randomise(VJEPA3D(in_chans=1, **ENC, **PRED))
    url = "memory://bucket/models/model.pt"
    oio.torch_save(model.state_dict(), url)  # the bundles' shareable weight: a plain VJEPA3D state dict
    conv = convert_checkpoint(url)
    assert conv.source == "state_dict" and set(conv.parts) == {"encoder", "target_encoder", "predictor"}
    fresh = VJEPA3D(in_chans=1, **ENC, **PRED)
    report = load_pretrained(fresh, url, print_report=False)
    assert not report.adapted and not report.missing and not report.unexpected
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def _not_a_weight():
    return 1


def test_pickled_callable_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"encoder": _encoder(in_chans=1).state_dict(), "hook": _not_a_weight}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_pretrained(_encoder(in_chans=1), path, print_report=False)


def test_missing_part_and_bad_options(tmp_path):
    path = _official_file(str(tmp_path / "enc.pt"), _encoder(in_chans=1))
    with pytest.raises(CheckpointError, match="no 'target_encoder' weights"):
        load_pretrained(_encoder(in_chans=1), path, checkpoint_key="target_encoder", print_report=False)
    with pytest.raises(ValueError, match="channel_adapt"):
        load_pretrained(_encoder(in_chans=1), path, channel_adapt="max")
    with pytest.raises(CheckpointError, match="expects a dict"):
        oio.torch_save(_encoder(in_chans=1).state_dict(), str(tmp_path / "bare.pt"))
        load_pretrained(_encoder(in_chans=1), str(tmp_path / "bare.pt"), source="official")


def test_hf_safetensors_from_memory_url(memfs):
    st = pytest.importorskip("safetensors.torch")
    src = _randomise(_encoder(in_chans=3))
    url = "memory://hub/vjepa2/model.safetensors"  # how Hugging Face distributes VJEPA2Model weights
    # early transformers releases named the attention module ``attention.attention``
    legacy = {k.replace(".attention.", ".attention.attention."): v for k, v in _hf_state_dict(src).items()}
    with memfs.open("/hub/vjepa2/model.safetensors", "wb") as f:
        f.write(st.save(legacy))
    model = _encoder(in_chans=1)
    report = load_pretrained(model, url, print_report=False, input_norm="none")
    assert report.source == "hf" and not report.missing
    x = _gray()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x.repeat(1, 3, 1, 1, 1)), atol=1e-5, rtol=1e-5)


def test_more_mask_tokens_in_file_than_model_is_reported_with_a_hint(tmp_path):
    enc, pred = _randomise(_encoder(in_chans=1)), _randomise(_predictor(num_mask_tokens=3))
    path = _official_file(str(tmp_path / "ten_tokens.pt"), enc, predictor=pred)
    model = VJEPA3D(in_chans=1, **ENC, **PRED, num_mask_tokens=2)
    with pytest.raises(CheckpointError, match="unexpected") as err:
        load_pretrained(model, path, print_report=False)
    assert "predictor.mask_tokens.2" in str(err.value) and "num_mask_tokens=3" in str(err.value)
    load_pretrained(model, path, allow_unexpected=("predictor.mask_tokens.*",), print_report=False)
    assert torch.equal(model.predictor.mask_tokens[1], pred.mask_tokens[1])


def test_incompatible_predictor_kept_at_init_only_when_allowed(tmp_path):
    enc = _randomise(_encoder(in_chans=1))
    wide_pred = Predictor3D(E, predictor_embed_dim=24, depth=2, num_heads=2, num_mask_tokens=2)
    path = _official_file(str(tmp_path / "wide_pred.pt"), enc, predictor=wide_pred)
    model = VJEPA3D(in_chans=1, **ENC, **PRED)
    init_pred = {k: v.clone() for k, v in model.predictor.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(model, path, allow_unexpected=("predictor.*",), print_report=False)
    report = load_pretrained(
        model, path, allow_missing=("predictor.*",), allow_unexpected=("predictor.*",), print_report=False
    )
    assert report.mismatched and set(report.allowed_mismatched) == set(report.mismatched)
    assert "kept at init (allowed)" in report.table() and "MISMATCH" in report.table()
    assert "predictor.predictor_blocks.1.mlp.fc1.weight" in report.unexpected  # the file's extra block
    for k, v in model.predictor.state_dict().items():
        assert torch.equal(v, init_pred[k]), k
    for k, v in enc.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
