"""Generative engines: stacking, losses, trainers (real MONAI engines), diffusion U-Net, Frechet distance."""
from __future__ import annotations

import json

import pytest
import torch
from monai.inferers import DiffusionInferer
from monai.networks.nets import PatchDiscriminator
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from oct_foundation.engines.generative import (
    AutoencoderTrainer,
    DiffusionTrainer,
    LatentDiffusionUNet,
    LoadLatentd,
    ReconstructionMetric,
    diffusion_target,
    kl_loss,
    video_to_stacks,
)
from oct_foundation.errors import CheckpointError
from oct_foundation.networks.weights import load_weights
from oct_foundation.metrics.generative import frechet_distance, split_halves
from oct_foundation.metrics.reconstruction import psnr, ssim
from oct_foundation.networks.maisi import StackedVideoVAE

TINY_AE = {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}
TINY_UNET = dict(channels=[16, 16], attention_levels=[False, False], num_head_channels=[8, 8], num_res_blocks=1,
                 norm_num_groups=8)


def test_video_to_stacks_are_the_wrappers_pieces():
    torch.manual_seed(0)
    vae = StackedVideoVAE(TINY_AE, strategy="sliding", window=8, stride=4).eval()
    x = torch.rand(2, 1, 10, 18, 20)
    stacks = video_to_stacks(x, 8, 4, vae.compression)
    assert stacks.shape == (2 * 2, 1, 8, 20, 20)  # 2 windows cover 10 frames, H/W padded to multiples of 4
    assert torch.equal(stacks[1, :, :6, :18, :20], x[0, :, 4:10])  # second window of the first video
    assert torch.equal(stacks[1, :, 6:, :18], x[0, :, 9:10, :, :20].expand(-1, 2, -1, -1))  # last frame repeated
    assert torch.equal(stacks[2], video_to_stacks(x[1:], 8, 4, 4)[0])  # batch-major
    with torch.no_grad():
        mu = vae.autoencoder.encode(video_to_stacks(x[:1], 8, 4, 4))[0]  # [2, 4, 2, 5, 5]
        z = vae.encode(x[:1])  # [1, 4, 3, 5, 5]: overlapping latent frame averaged
    assert torch.allclose(z[0, :, 0], mu[0, :, 0], atol=1e-5)
    assert torch.allclose(z[0, :, 1], (mu[0, :, 1] + mu[1, :, 0]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="T, H, W"):
        video_to_stacks(x[0], 8, 4)


def test_kl_loss():
    mu, sigma = torch.zeros(2, 4, 2, 3, 3), torch.ones(2, 4, 2, 3, 3)
    assert float(kl_loss(mu, sigma)) == pytest.approx(0.0, abs=1e-6)
    # one voxel with mu = 1: 0.5 * 1 per item
    mu[:, 0, 0, 0, 0] = 1.0
    assert float(kl_loss(mu, sigma)) == pytest.approx(0.5, rel=1e-5)
    assert float(kl_loss(torch.zeros(1, 1, 1), torch.full((1, 1, 1), 2.0))) == pytest.approx(
        0.5 * (4 - torch.log(torch.tensor(4.0)).item() - 1), rel=1e-5)


def test_autoencoder_trainer_adversarial_bf16_updates_both_networks():
    torch.manual_seed(0)
    vae = StackedVideoVAE(TINY_AE, stack_size=4)
    disc = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=2, norm="INSTANCE")
    g0 = {k: v.clone() for k, v in vae.autoencoder.state_dict().items()}
    d0 = {k: v.clone() for k, v in disc.state_dict().items()}
    data = [{"image": torch.rand(1, 1, 6, 16, 16), "label": ["not used"]}]
    trainer = AutoencoderTrainer("cpu", 1, data, vae, torch.optim.Adam(vae.autoencoder.parameters(), 1e-3),
                                 kl_weight=1e-3, discriminator=disc,
                                 d_optimizer=torch.optim.Adam(disc.parameters(), 1e-3), adv_weight=0.5,
                                 amp=True, amp_dtype="bf16", clip_grad=1.0)
    trainer.run()
    out = trainer.state.output
    assert out["image"].shape == (1, 1, 6, 16, 16)
    for k in ("loss", "recon_loss", "kl_loss", "adv_loss", "d_loss"):
        assert torch.isfinite(out[k]), k
    assert float(out["adv_loss"]) > 0 and float(out["d_loss"]) > 0
    expected = out["recon_loss"] + 1e-3 * out["kl_loss"] + 0.5 * out["adv_loss"]
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-4)
    assert any(not torch.equal(g0[k], v) for k, v in vae.autoencoder.state_dict().items())
    assert any(not torch.equal(d0[k], v) for k, v in disc.state_dict().items())
    assert set(trainer.checkpoint_objects()) == {"network", "optimizer", "trainer", "discriminator", "d_optimizer"}
    with pytest.raises(ValueError, match="d_optimizer"):
        AutoencoderTrainer("cpu", 1, data, vae, torch.optim.Adam(vae.parameters()), discriminator=disc, adv_weight=1)


def test_reconstruction_metric_matches_the_metric_functions():
    torch.manual_seed(0)
    refs = [torch.rand(1, 4, 16, 16) for _ in range(3)]
    preds = [r + 0.1 * torch.randn_like(r) for r in refs]
    m = ReconstructionMetric("psnr")
    m.reset()
    m.update((preds[:2], refs[:2]))
    m.update((torch.stack(preds[2:]), torch.stack(refs[2:])))  # batched form too
    expected = sum(psnr(p.clamp(0, 1), r) for p, r in zip(preds, refs)) / 3
    assert m.compute() == pytest.approx(expected, rel=1e-6)
    s = ReconstructionMetric("ssim", clamp=None)
    s.reset()
    s.update((preds, refs))
    assert s.compute() == pytest.approx(sum(ssim(p, r) for p, r in zip(preds, refs)) / 3, rel=1e-6)
    with pytest.raises(ValueError):
        ReconstructionMetric("fid")


def test_diffusion_unet_scale_factor_weights_and_size_check(tmp_path):
    torch.manual_seed(0)
    net = LatentDiffusionUNet(num_train_timesteps=100, **TINY_UNET)
    assert float(net.scale_factor) == 0 and net.scale == 1.0
    net.scale_factor.fill_(0.7)
    x = torch.randn(2, 4, 2, 8, 8)
    with torch.no_grad():
        y = net(x)
        assert y.shape == x.shape
        assert torch.allclose(y, net(x, torch.full((2,), 99)))  # default: first sampling step
    torch.save(net.state_dict(), tmp_path / "model.pt")
    other = LatentDiffusionUNet(num_train_timesteps=100, **TINY_UNET)
    load_weights(other, str(tmp_path / "model.pt"), source="diffusion")
    assert other.scale == pytest.approx(0.7)
    # model-zoo style checkpoint: {"unet_state_dict", "scale_factor"}
    sd = {k: v for k, v in net.state_dict().items() if k != "scale_factor"}
    torch.save({"unet_state_dict": sd, "scale_factor": 0.25}, tmp_path / "zoo.pt")
    load_weights(other, str(tmp_path / "zoo.pt"), source="diffusion")
    assert other.scale == pytest.approx(0.25)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(other, str(tmp_path / "missing.pt"), source="diffusion")
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 4, 3, 8, 8))


def test_diffusion_targets():
    z, n, t = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4), torch.tensor([3, 50])
    assert torch.equal(diffusion_target(RFlowScheduler(100), z, n, t), z - n)
    assert torch.equal(diffusion_target(DDPMScheduler(100), z, n, t), n)
    v = DDPMScheduler(100, prediction_type="v_prediction")
    assert torch.allclose(diffusion_target(v, z, n, t), v.get_velocity(z, n, t))


def _write_latent(path, z, scale):
    torch.save(z * scale, path)
    path.with_suffix(".json").write_text(json.dumps({"latent_shape": list(z.shape), "scale_factor": scale,
                                                     "input_shape": [1, 8, 32, 32]}))


def test_diffusion_trainer_on_latent_files_ddpm(tmp_path):
    torch.manual_seed(0)
    zs = [2.0 * torch.randn(4, 2, 8, 8) for _ in range(4)]
    for i, z in enumerate(zs):
        _write_latent(tmp_path / f"id{i}_latent.pt", z, 0.5)
    from monai.data import DataLoader, Dataset

    from oct_foundation.engines.generative import latent_datalist

    items = latent_datalist(str(tmp_path))
    assert len(items) == 4
    ds = Dataset(items, transform=LoadLatentd("latent"))
    assert torch.allclose(ds[0]["latent"], zs[0], atol=1e-6)  # file values / sidecar scale = raw latents
    net = LatentDiffusionUNet(num_train_timesteps=100, **TINY_UNET)
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = DiffusionTrainer("cpu", 1, DataLoader(ds, batch_size=2), net, torch.optim.Adam(net.parameters(), 1e-3),
                               DiffusionInferer(DDPMScheduler(100)), scale_batches=2)
    trainer.run()
    raw = torch.stack(zs).double()
    assert float(net.scale_factor) == pytest.approx(1 / float(raw.std()), rel=1e-4)
    assert torch.isfinite(trainer.state.output["loss"])
    assert trainer.state.output["latent"].std() == pytest.approx(1.0, abs=0.3)
    assert any(not torch.equal(w0[k], v) for k, v in net.state_dict().items() if k != "scale_factor")
    # a given scale factor is kept
    fixed = LatentDiffusionUNet(num_train_timesteps=100, **TINY_UNET)
    DiffusionTrainer("cpu", 1, DataLoader(ds, batch_size=4), fixed, torch.optim.Adam(fixed.parameters()),
                     DiffusionInferer(DDPMScheduler(100)), scale_factor=0.3).run()
    assert float(fixed.scale_factor) == pytest.approx(0.3)
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save(torch.zeros(4, 2, 8, 8), bad / "x_latent.pt")
    with pytest.raises(Exception, match="sidecar"):
        LoadLatentd("latent")({"latent": str(bad / "x_latent.pt")})


def test_frechet_distance():
    torch.manual_seed(0)
    a = torch.randn(2000, 3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by c in every dimension: FD = E * c^2
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)
    from monai.metrics.fid import get_fid_score

    b = 1.5 * torch.randn(2000, 3) + 0.3
    assert frechet_distance(a, b) == pytest.approx(float(get_fid_score(a, b)), rel=1e-5)
    # fewer samples than dimensions: rank-deficient covariances still give a finite, non-negative value
    small = frechet_distance(torch.randn(3, 32), torch.randn(4, 32))
    assert small > 0 and small == small
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), a)
    h1, h2 = split_halves(7, seed=1)
    assert sorted(h1 + h2) == list(range(7)) and len(h1) == 3
