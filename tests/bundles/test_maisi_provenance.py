"""MAISI latents that say how they were made: one posterior draw per latent position, provenance in sidecars."""
from __future__ import annotations

import torch

from oct_foundation.networks.maisi import StackedVideoVAE

TINY = {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}


def test_sliding_sample_is_one_draw_per_latent_position():
    torch.manual_seed(0)
    # window 8 / stride 4 over 24 frames: interior latent frames are covered by two windows, the ends by one
    net = StackedVideoVAE(TINY, strategy="sliding", window=8, stride=4, chunk_size=2).eval()
    x = torch.rand(1, 1, 24, 16, 16)
    with torch.no_grad():
        mean = net.encode(x, sample=False)
        draws = torch.stack([net.encode(x, sample=True) for _ in range(24)])
    noise = draws - mean  # [N, 1, C, T', H', W']
    assert noise.abs().max() > 0
    # the noise of each latent frame has the posterior std of that frame, whether 1 or 2 windows cover it:
    # averaging independent draws from 2 windows would shrink the std of interior frames by about 1/sqrt(2)
    ratio = noise.std(dim=0) / _posterior_std(net, x)
    per_frame = ratio.mean(dim=(0, 1, 3, 4))
    assert torch.allclose(per_frame, torch.ones_like(per_frame), atol=0.2), per_frame


def _posterior_std(net, x):
    """The window-averaged posterior std per latent position, from the autoencoder directly."""
    win, st = net.window_and_stride
    cf = net.compression
    t = x.shape[2]
    acc = cnt = None
    with torch.no_grad():
        for s in range(0, t - win + 1, st):
            _, sigma = net.autoencoder.encode(x[:, :, s:s + win])
            if acc is None:
                acc = torch.zeros(*sigma.shape[:2], t // cf, *sigma.shape[3:])
                cnt = torch.zeros(t // cf)
            acc[:, :, s // cf:(s + win) // cf] += sigma
            cnt[s // cf:(s + win) // cf] += 1
    return acc / cnt.view(1, 1, -1, 1, 1) * net.effective_scale


def test_sidecar_says_mean_or_sample(tmp_path):
    import json

    from oct_foundation.engines.maisi_inference import MaisiEncodeProcessor

    torch.manual_seed(0)
    for sample, word in ((False, "posterior means"), (True, "posterior samples")):
        net = StackedVideoVAE(TINY, strategy="stack", stack_size=4, sample=sample)
        MaisiEncodeProcessor(net)({"image": torch.rand(1, 4, 16, 16)}, str(tmp_path / word.replace(" ", "_")))
        info = json.loads((tmp_path / (word.replace(" ", "_") + "_latent.json")).read_text())
        assert info["latents"] == word and info["strategy"] == "stack" and info["window"] == 4
