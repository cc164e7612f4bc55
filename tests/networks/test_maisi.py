"""StackedVideoVAE: stacking / sliding windows, split safety, bounded chunks, scale factor, weight loading."""
from __future__ import annotations

import pytest
import torch

from oct_foundation.errors import CheckpointError
from oct_foundation.networks.weights import load_weights
from oct_foundation.networks.maisi import (
    StackedVideoVAE,
    check_split_safety,
    maisi_autoencoder_config,
)

TINY = {"num_channels": (8, 8, 8), "num_res_blocks": (1, 1, 1)}


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return StackedVideoVAE(TINY).eval()


def _spy_frames(vae):
    """Record the number of frames (batch x depth) of every autoencoder encode/decode call."""
    seen = []
    ae = vae.autoencoder
    enc, dec = ae.encode, ae.decode

    def encode(x):
        seen.append(("encode", x.shape[0] * x.shape[2]))
        return enc(x)

    def decode(z):
        seen.append(("decode", z.shape[0] * z.shape[2] * vae.compression))
        return dec(z)

    ae.encode, ae.decode = encode, decode
    return seen, lambda: (delattr(ae, "encode"), delattr(ae, "decode"))


def test_zoo_preset_and_tiny_config():
    cfg = maisi_autoencoder_config()
    assert cfg["num_channels"] == [64, 128, 256] and cfg["latent_channels"] == 4 and cfg["norm_num_groups"] == 32
    tiny = maisi_autoencoder_config(num_channels=(8, 8, 8))
    assert tiny["norm_num_groups"] == 8 and len(tiny["num_res_blocks"]) == 3
    with pytest.raises(ValueError, match="norm_num_groups"):
        StackedVideoVAE({"num_channels": (8, 12, 16), "norm_num_groups": 8})


@pytest.mark.parametrize("shape", [(10, 30, 34), (3, 32, 32), (4, 17, 9)])
@torch.no_grad()
def test_stack_round_trip_shapes(vae, shape):
    t, h, w = shape
    x = torch.rand(2, 1, t, h, w)
    z, info = vae.encode(x, return_info=True)
    assert tuple(z.shape) == (2, *vae.latent_shape(t, h, w))
    assert z.shape[2] == -(-t // 4) and z.shape[3] == -(-h // 4) and z.shape[4] == -(-w // 4)
    assert info["shape"] == shape and info["strategy"] == "stack"
    y = vae.decode(z, *info["shape"])
    assert y.shape == x.shape
    # padding is by repetition of the last frame: the last stack of a 10-frame video sees frames 8, 9, 9, 9
    if t == 10:
        padded = torch.cat([x[:, :, 8:], x[:, :, 9:].expand(-1, -1, 2, -1, -1)], 2)
        z_last = vae.autoencoder.encode(torch.nn.functional.pad(padded, (0, 2, 0, 2, 0, 0), mode="replicate"))[0]
        torch.testing.assert_close(z[:, :, 2:], z_last, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_stack_matches_direct_autoencoder(vae):
    x = torch.rand(1, 1, 8, 32, 32)
    z = vae.encode(x)
    direct = torch.cat([vae.autoencoder.encode(x[:, :, i:i + 4])[0] for i in (0, 4)], 2)
    torch.testing.assert_close(z, direct, rtol=1e-4, atol=1e-5)
    y = vae.decode(z)
    direct_y = torch.cat([vae.autoencoder.decode(direct[:, :, i:i + 1]) for i in (0, 1)], 2)
    torch.testing.assert_close(y, direct_y, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_sliding_with_stride_equal_window_is_stack(vae):
    x = torch.rand(1, 1, 13, 20, 24)
    sliding = StackedVideoVAE(vae.autoencoder, strategy="sliding", window=4, stride=4)
    z_stack, z_slide = vae.encode(x), sliding.encode(x)
    assert torch.equal(z_stack, z_slide)
    assert torch.equal(vae.decode(z_stack, 13, 20, 24), sliding.decode(z_slide, 13, 20, 24))
    big_stack = StackedVideoVAE(vae.autoencoder, strategy="stack", stack_size=8)
    big_slide = StackedVideoVAE(vae.autoencoder, strategy="sliding", window=8, stride=8)
    assert torch.equal(big_stack.encode(x), big_slide.encode(x))


@torch.no_grad()
def test_sliding_overlap_is_average_of_windows(vae):
    x = torch.rand(1, 1, 12, 16, 16)
    sliding = StackedVideoVAE(vae.autoencoder, strategy="sliding", window=8, stride=4, chunk_size=2)
    z = sliding.encode(x)
    assert z.shape[2] == 3  # windows at frames 0 and 4 -> latent frames 0..2
    w0 = vae.autoencoder.encode(x[:, :, 0:8])[0]
    w1 = vae.autoencoder.encode(x[:, :, 4:12])[0]
    torch.testing.assert_close(z[:, :, 0], w0[:, :, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z[:, :, 1], (w0[:, :, 1] + w1[:, :, 0]) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z[:, :, 2], w1[:, :, 1], rtol=1e-4, atol=1e-5)
    # decode: windows of 2 latent frames every latent frame, overlapping output frames averaged
    y = sliding.decode(z)
    d0, d1 = vae.autoencoder.decode(z[:, :, 0:2]), vae.autoencoder.decode(z[:, :, 1:3])
    torch.testing.assert_close(y[:, :, 4:8], (d0[:, :, 4:8] + d1[:, :, 0:4]) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[:, :, 8:], d1[:, :, 4:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of the compression"):
        StackedVideoVAE(vae.autoencoder, strategy="sliding", window=8, stride=2)


@torch.no_grad()
def test_chunking_bounds_frames_per_call_and_streaming_matches(vae):
    sliding = StackedVideoVAE(vae.autoencoder, strategy="sliding", window=8, stride=4, chunk_size=2)
    seen, restore = _spy_frames(sliding)
    try:
        short, long = torch.rand(1, 1, 9, 16, 16), torch.rand(1, 1, 33, 16, 16)
        sliding.encode(short)
        peak_short = max(n for k, n in seen if k == "encode")
        seen.clear()
        z = sliding.encode(long)
        peak_long = max(n for k, n in seen if k == "encode")
        assert peak_long == peak_short == 2 * 8  # chunk_size x window, whatever T
        assert sum(1 for k, _ in seen if k == "encode") == 4  # 8 windows, 2 per call
        # streaming in uneven pieces gives the same latents, in several yields
        pieces = [long[:, :, a:b] for a, b in [(0, 3), (3, 20), (20, 21), (21, 33)]]
        parts = list(sliding.encode_stream(iter(pieces)))
        assert len(parts) > 1
        torch.testing.assert_close(torch.cat(parts, 2), z, rtol=1e-5, atol=1e-6)
        seen.clear()
        y = sliding.decode(z, t=33)
        assert y.shape == long.shape
        assert max(n for k, n in seen if k == "decode") <= 2 * 8
    finally:
        restore()
    with pytest.raises(ValueError, match="does not match"):
        list(sliding.encode_stream([long[:, :, :4], torch.rand(1, 1, 4, 8, 8)]))


def test_split_safety_probe():
    # the frame axis (4 frames) can never be split; splitting W reads the short frame axis as "next" axis
    assert "frames" in check_split_safety((4, 64, 64), 3, 2, 0)
    assert "silently crops" in check_split_safety((4, 96, 96), 3, 2, 2)
    assert "crashes" in check_split_safety((4, 32, 32), 3, 8, 1)
    assert check_split_safety((4, 64, 64), 3, 2, 1) is None
    assert check_split_safety((4, 64, 64), 3, 1, 0) is None


@torch.no_grad()
def test_wrapper_validates_or_chooses_split(vae):
    x = torch.rand(1, 1, 4, 64, 64)
    exact = vae.encode(x)
    auto = StackedVideoVAE(vae.autoencoder, num_splits=2)  # dim_split chosen (H), verified exact
    torch.testing.assert_close(auto.encode(x), exact, rtol=1e-4, atol=1e-5)
    assert all(m.dim_split == 1 and m.num_splits == 2 for m in auto.autoencoder.modules() if hasattr(m, "dim_split"))
    with pytest.raises(ValueError, match="not exact"):
        StackedVideoVAE(vae.autoencoder, num_splits=2, dim_split=2).encode(x)
    with pytest.raises(ValueError, match="not exact"):
        StackedVideoVAE(vae.autoencoder, num_splits=8).encode(torch.rand(1, 1, 4, 32, 32))
    # the default wrapper leaves MAISI unsplit again
    vae.encode(x)
    assert all(m.num_splits == 1 for m in vae.autoencoder.modules() if hasattr(m, "num_splits"))


def test_norm_float16_disabled_on_cpu():
    torch.manual_seed(0)
    v = StackedVideoVAE({**TINY, "norm_float16": True})
    with pytest.warns(UserWarning, match="norm_float16"):
        z = v.encode(torch.rand(1, 1, 4, 16, 16))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


@torch.no_grad()
def test_scale_factor_and_sampling(vae):
    x = torch.rand(2, 1, 8, 16, 16)
    v = StackedVideoVAE(vae.autoencoder)
    raw = v.encode(x)
    sf = v.compute_scale_factor([x[:1], {"image": x[1:]}])
    assert sf == pytest.approx(1.0 / raw.double().std().item(), rel=1e-4)
    scaled = v.encode(x)
    torch.testing.assert_close(scaled, raw * sf)
    assert scaled.std().item() == pytest.approx(1.0, rel=1e-3)
    torch.testing.assert_close(v.decode(scaled), vae.decode(raw), rtol=1e-4, atol=1e-5)
    torch.manual_seed(1)
    s1 = v.encode(x, sample=True)
    assert not torch.allclose(s1, scaled)
    assert StackedVideoVAE(vae.autoencoder, scale_factor=0.5).encode(x).sub(raw * 0.5).abs().max() < 1e-5


def test_load_weights_strict_with_report(vae, tmp_path, capsys):
    torch.manual_seed(3)
    other = StackedVideoVAE(TINY)
    sd = other.autoencoder.state_dict()
    plain, nested = tmp_path / "ae.pt", tmp_path / "nested.pt"
    torch.save(sd, plain)
    torch.save({"epoch": 3, "autoencoder": {f"module.{k}": v for k, v in sd.items()}}, nested)
    target = StackedVideoVAE(TINY)
    report = load_weights(target, str(plain), source="maisi")
    assert report.ok and len(report.loaded) == len(sd) and "loaded as is" in capsys.readouterr().out
    for k, v in target.autoencoder.state_dict().items():
        assert torch.equal(v, sd[k])
    report = load_weights(StackedVideoVAE(TINY).autoencoder, str(nested), source="maisi")
    assert report.ok
    # missing, unexpected, wrong shape -> CheckpointError naming the file, nothing loaded
    broken = dict(sd)
    broken.pop("quant_conv_mu.conv.weight")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    fresh = StackedVideoVAE(TINY)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"broken.pt.*1 missing key\(s\), 1 unexpected"):
        load_weights(fresh, str(tmp_path / "broken.pt"), source="maisi")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    torch.save(StackedVideoVAE({"num_channels": (16, 16, 16)}).autoencoder.state_dict(), tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(fresh, str(tmp_path / "big.pt"), source="maisi")
    # unsafe pickle refused; missing file refused unless random init is allowed
    torch.save({"fn": print}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="code.pt"):
        load_weights(fresh, str(tmp_path / "code.pt"), source="maisi")
    with pytest.raises(CheckpointError, match="missing.pt.*allow_random_init"):
        load_weights(fresh, str(tmp_path / "missing.pt"), source="maisi")
    assert load_weights(fresh, str(tmp_path / "missing.pt"), source="maisi", allow_random_init=True).random_init


def test_load_weights_from_fsspec_url(memfs):
    torch.manual_seed(4)
    sd = StackedVideoVAE(TINY).autoencoder.state_dict()
    with memfs.open("/w/ae.pt", "wb") as f:
        torch.save({"state_dict": sd}, f)
    target = StackedVideoVAE(TINY)
    assert load_weights(target, "memory://w/ae.pt", source="maisi").ok
    assert torch.equal(target.autoencoder.state_dict()["quant_conv_mu.conv.weight"], sd["quant_conv_mu.conv.weight"])
