"""Depth positions from slice indices: a depth-subsampled volume and the full volume place each B-scan at the same
token depth position (RoPE and sin-cos), and the option reaches the encoders, the predictor and the trainer."""
from __future__ import annotations

import pytest
import torch

from oct_foundation.networks import VJEPA3D
from oct_foundation.networks.vit3d import (VisionTransformer3D, sincos_pos_embed_3d, sincos_pos_embed_at,
                                           slice_token_positions, token_positions)


def test_full_depth_indices_give_the_default_integer_positions():
    assert torch.equal(slice_token_positions(torch.arange(16), 2), torch.arange(8.0)[None])
    assert torch.equal(slice_token_positions(torch.arange(9), 1), torch.arange(9.0)[None])
    # uniform subsampling by 4 of 32 slices: tokens at the depth of their slices in the full volume's units
    pos = slice_token_positions(torch.arange(0, 32, 4), 2)
    assert torch.allclose(pos, torch.tensor([[0.75, 4.75, 8.75, 12.75]]))
    with pytest.raises(ValueError, match="fewer than one tubelet"):
        slice_token_positions(torch.tensor([3]), 2)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_subsampled_tokens_get_the_full_volumes_positions(pos_embed):
    torch.manual_seed(0)
    enc = VisionTransformer3D(img_size=(16, 16, 16), patch_size=8, tubelet_size=2, embed_dim=48, depth=1,
                              num_heads=2, pos_embed=pos_embed).eval()
    kept = torch.tensor([[4, 5, 10, 11]])  # the slices of full-volume tokens t = 2 and 5
    depth = slice_token_positions(kept, 2)
    full_grid, sub_grid = (8, 2, 2), (2, 2, 2)
    rows = torch.tensor([2 * 4 + i for i in range(4)] + [5 * 4 + i for i in range(4)])  # tokens of t = 2, 5
    if pos_embed == "rope":
        cos_s, sin_s = enc.rope(sub_grid, None, "cpu", depth)
        cos_f, sin_f = enc.rope(full_grid, None, "cpu")
        assert cos_s.shape[-2] == 8 and cos_f.shape[-2] == 32  # [B, 1, N, channels]
        assert torch.allclose(cos_s[0, 0], cos_f[0, 0][rows]) and torch.allclose(sin_s[0, 0], sin_f[0, 0][rows])
    else:
        at = sincos_pos_embed_at(48, token_positions(sub_grid, None, "cpu", depth))
        assert torch.allclose(at[0], sincos_pos_embed_3d(48, full_grid)[rows], atol=1e-6)
    x = torch.randn(1, 1, 4, 16, 16)
    # integer positions 0..T'-1 given explicitly equal the default; the slice positions change the output
    assert torch.allclose(enc(x, depth_positions=torch.arange(2.0)[None]), enc(x), atol=1e-6)
    assert not torch.allclose(enc(x, depth_positions=depth), enc(x), atol=1e-4)


def test_jepa_forward_passes_positions_to_encoders_and_predictor():
    torch.manual_seed(0)
    net = VJEPA3D(img_size=(8, 16, 16), patch_size=8, tubelet_size=2, embed_dim=32, depth=1, num_heads=2,
                  predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2).eval()
    with torch.no_grad():  # sharper attention than the small initialisation, so that positions matter clearly
        for name, p in net.named_parameters():
            if "qkv.weight" in name:
                p.mul_(20)
            elif "mask_tokens" in name:  # zero at init: a target query would then ignore every position
                p.normal_()
    x = torch.randn(2, 1, 8, 16, 16)
    ctx, tgt = torch.tensor([[0, 1, 2, 3, 4, 5], [8, 9, 10, 11, 12, 13]]), torch.tensor([[12, 13], [2, 3]])
    base = net.jepa_forward(x, ctx, tgt)
    same = net.jepa_forward(x, ctx, tgt, depth_positions=torch.arange(4.0)[None].expand(2, -1))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(base, same))
    moved = net.jepa_forward(x, ctx, tgt, depth_positions=torch.tensor([[0.0, 3, 6, 9], [1, 2, 3, 4]]))
    assert not torch.allclose(moved[0], base[0], atol=1e-4)  # predictor (and context encoder) moved
    assert not torch.allclose(moved[1], base[1], atol=1e-4)  # target encoder moved
    z = net.encoder(x, masks=ctx)  # the predictor alone, on the same context tokens
    depth = torch.tensor([[0.0, 3, 6, 9], [0, 3, 6, 9]])
    assert not torch.allclose(net.predictor(z, ctx, tgt, (4, 2, 2), depth_positions=depth),
                              net.predictor(z, ctx, tgt, (4, 2, 2)), atol=1e-4)


def test_batch_depth_positions_from_depth_subsampled_meta():
    from monai.data import MetaTensor, list_data_collate

    from oct_foundation.data import DepthSubsampled
    from oct_foundation.engines.jepa_trainer import batch_depth_positions

    net = VJEPA3D(img_size=(4, 16, 16), patch_size=8, tubelet_size=2, embed_dim=32, depth=1, num_heads=2,
                  predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)
    sub = DepthSubsampled(["image"], 4, strategy="random")
    sub.set_random_state(0)
    items = [sub({"image": MetaTensor(torch.rand(1, 12, 16, 16))}) for _ in range(2)]
    batch = list_data_collate(items)
    x = batch["image"].as_tensor()
    got = batch_depth_positions(batch, net, x)
    want = torch.cat([slice_token_positions(it["image"].meta["slice_indices"], 2) for it in items])
    assert got.shape == (2, 2) and torch.allclose(got, want)
    with pytest.raises(ValueError, match="no 'slice_indices'"):
        batch_depth_positions({"image": MetaTensor(torch.rand(2, 1, 4, 16, 16))}, net, x)
