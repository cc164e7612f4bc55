"""3D ViT encoder: shapes, attention paths, RoPE (against a reference of the V-JEPA 2 formula), sincos, masks."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oct_foundation.networks.vit3d import (
    Attention,
    VisionTransformer3D,
    apply_rope,
    rope_axis_dim,
    rope_tables,
    sincos_pos_embed_3d,
    token_positions,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matrices: thread start-up costs more than it gains, and a shared machine makes it much worse
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(in_chans=1, patch_size=8, tubelet_size=2, embed_dim=48, depth=2, num_heads=4)


def _vit(img_size=(6, 32, 48), **kw):
    args = {**TINY, **kw}
    return VisionTransformer3D(img_size=img_size, **args).eval()


# ---------------------------------------------------------------------------------------------------------------
# reference of the public V-JEPA 2 RoPE attention, written out step by step (positions as raw token indices, the
# head dim split into three even chunks of 2*((hd//3)//2), angles pos / 10000**(j/(a/2)) laid out as [f, f],
# adjacent pairs rotated as (x0, x1) -> (-x1, x0)).
# ---------------------------------------------------------------------------------------------------------------
def _ref_rotate(x, pos):
    a = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(a // 2, dtype=torch.float32) / (a / 2.0))
    freq = pos.float()[..., None] * omega  # [..., N, a/2]
    sin = torch.cat([freq.sin(), freq.sin()], dim=-1)
    cos = torch.cat([freq.cos(), freq.cos()], dim=-1)
    y = torch.empty_like(x)
    y[..., 0::2] = -x[..., 1::2]
    y[..., 1::2] = x[..., 0::2]
    return x * cos + y * sin


def _ref_rope_attention(attn, x, ids, grid):
    b, n, c = x.shape
    nh, hd = attn.num_heads, c // attn.num_heads
    _, gh, gw = grid
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    qkv = qkv.reshape(b, n, 3, nh, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    ids = ids[:, None, :].expand(b, nh, n)
    frame = ids // (gh * gw)
    height = (ids - frame * gh * gw) // gw
    width = ids - frame * gh * gw - height * gw
    a = 2 * ((hd // 3) // 2)
    parts_q, parts_k = [], []
    for i, p in enumerate((frame, height, width)):
        parts_q.append(_ref_rotate(q[..., i * a : (i + 1) * a], p))
        parts_k.append(_ref_rotate(k[..., i * a : (i + 1) * a], p))
    q = torch.cat(parts_q + [q[..., 3 * a :]], dim=-1)
    k = torch.cat(parts_k + [k[..., 3 * a :]], dim=-1)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, c)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("dim,heads", [(48, 4), (64, 4), (40, 2)])  # head dims 12, 16 (4 unrotated), 20 (2)
def test_rope_attention_matches_vjepa2_reference(dim, heads):
    grid = (3, 4, 6)
    attn = Attention(dim, heads).eval()
    torch.nn.init.normal_(attn.qkv.bias, std=0.5)
    x = torch.randn(2, 30, dim)
    ids = torch.stack([torch.randperm(72)[:30].sort().values for _ in range(2)])
    cos, sin = rope_tables(token_positions(grid, ids), dim // heads, "vjepa2")
    got = attn(x, cos, sin)
    ref = _ref_rope_attention(attn, x, ids, grid)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # and it really uses positions: other indices give other outputs
    cos2, sin2 = rope_tables(token_positions(grid, (ids + 1) % 72), dim // heads, "vjepa2")
    assert not torch.allclose(attn(x, cos2, sin2), got, atol=1e-4)


def test_rope_axis_split_as_vjepa2():
    assert rope_axis_dim(64) == 20 and rope_axis_dim(88) == 28 and rope_axis_dim(12) == 4
    cos, _ = rope_tables(token_positions((2, 3, 4)), 64)
    assert cos.shape == (1, 1, 24, 60)


def test_rotary_variant_is_a_norm_preserving_relative_rotation():
    hd = 24
    q, k = torch.randn(2, 1, 1, hd), torch.randn(2, 1, 1, hd)
    pos = torch.tensor([[[3.0, 1.0, 5.0]]])
    shift = torch.tensor([[[2.0, 7.0, -4.0]]])
    other = torch.tensor([[[0.0, 6.0, 2.0]]])

    def rot(x, p):
        return apply_rope(x, *rope_tables(p, hd, "rotary"))

    torch.testing.assert_close(rot(q, pos).norm(dim=-1), q.norm(dim=-1))
    dot = (rot(q, pos) * rot(k, other)).sum(-1)
    dot_shifted = (rot(q, pos + shift) * rot(k, other + shift)).sum(-1)
    torch.testing.assert_close(dot, dot_shifted, atol=1e-5, rtol=1e-5)
    # positions matter: a different offset changes the product
    assert not torch.allclose(dot, (rot(q, pos) * rot(k, other + shift)).sum(-1), atol=1e-3)


def test_vjepa2_variant_reproduces_the_public_non_rotation():
    # the public formula tiles the angles over rotated pairs, so it is not norm preserving; keeping this
    # quirk is what makes public weights give public features
    hd = 24
    x = torch.randn(1, 1, 1, hd)
    p = torch.tensor([[[2.0, 3.0, 1.0]]])
    rotated = apply_rope(x, *rope_tables(p, hd, "vjepa2"))
    assert not torch.allclose(rotated.norm(), x.norm(), atol=1e-3)
    torch.testing.assert_close(rotated[..., :8], _ref_rotate(x[..., :8], p[..., 0]))
    # at the origin both variants are the identity
    zero = torch.zeros(1, 1, 3)
    for variant in ("vjepa2", "rotary"):
        torch.testing.assert_close(apply_rope(x, *rope_tables(zero, hd, variant)), x)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
@pytest.mark.parametrize("img,grid", [((6, 32, 48), (3, 4, 6)), ((2, 16, 40), (1, 2, 5)), ((10, 24, 8), (5, 3, 1))])
def test_shapes_non_square_and_odd_depth(pos_embed, img, grid):
    model = _vit(img, pos_embed=pos_embed)
    assert model.grid_size(*img) == grid
    x = torch.randn(2, 1, *img)
    out = model(x)
    assert out.shape == (2, grid[0] * grid[1] * grid[2], 48)
    masks = torch.tensor([[0, 2], [1, 3]])
    assert model(x, masks=masks).shape == (2, 2, 48)


def test_rectangular_patch_tubelet_one_and_channels():
    model = VisionTransformer3D(
        in_chans=3, img_size=(7, 32, 48), patch_size=(16, 8), tubelet_size=1, embed_dim=48, depth=1, num_heads=4
    )
    assert model.grid_size(7, 32, 48) == (7, 2, 6)
    assert model(torch.randn(1, 3, 7, 32, 48)).shape == (1, 84, 48)
    assert model.patch_embed.proj.kernel_size == (1, 16, 8)


def test_bad_input_sizes_raise_clear_errors():
    model = _vit()
    with pytest.raises(ValueError, match="multiples of the patch"):
        model(torch.randn(1, 1, 5, 32, 48))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        model(torch.randn(1, 32, 48))
    with pytest.raises(ValueError, match="masks"):
        model(torch.randn(2, 1, 6, 32, 48), masks=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError):
        VisionTransformer3D(pos_embed="learned")


def test_state_dict_names_follow_vjepa2():
    keys = set(_vit(pos_embed="rope").state_dict())
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(2):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    assert keys == expected  # RoPE: no pos_embed entry, as V-JEPA 2
    assert set(_vit(pos_embed="sincos").state_dict()) == expected | {"pos_embed"}


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_sdpa_equals_naive_attention(pos_embed):
    model = _vit(pos_embed=pos_embed)
    x = torch.randn(2, 1, 6, 32, 48)
    masks = torch.stack([torch.randperm(72)[:20] for _ in range(2)])
    fused = (model(x), model(x, masks))
    model.use_sdpa = False
    assert not model.use_sdpa and not model.blocks[0].attn.use_sdpa
    naive = (model(x), model(x, masks))
    for a, b in zip(fused, naive):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_masks_gather_tokens_and_positions_follow_indices(pos_embed):
    model = _vit(pos_embed=pos_embed)
    x = torch.randn(2, 1, 6, 32, 48)
    full = model(x)
    all_idx = torch.arange(72).expand(2, -1)
    torch.testing.assert_close(model(x, all_idx), full, atol=1e-5, rtol=1e-5)
    # attention is permutation-equivariant, so a permuted index set returns the permuted tokens only if each
    # token keeps its own position
    perm = torch.stack([torch.randperm(72) for _ in range(2)])
    expected = torch.gather(full, 1, perm[..., None].expand(-1, -1, 48))
    torch.testing.assert_close(model(x, perm), expected, atol=1e-5, rtol=1e-5)
    # a strict subset attends to fewer tokens, so its features differ from the gathered full output
    sub = perm[:, :30]
    assert not torch.allclose(model(x, sub), expected[:, :30], atol=1e-4)


def test_compute_falls_with_mask_ratio():
    model = _vit()
    seen = []
    model.blocks[0].attn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    x = torch.randn(1, 1, 6, 32, 48)
    for keep in (72, 36, 9):
        model(x, torch.randperm(72)[:keep][None])
    assert seen == [72, 36, 9]


def test_out_layers_return_normed_intermediates():
    model = _vit(out_layers=[0, 1])
    x = torch.randn(2, 1, 6, 32, 48)
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == 2
    model.out_layers = None
    torch.testing.assert_close(outs[1], model(x))
    # layer 0 output is normed: per-token mean 0 and unit variance with the initial LayerNorm affine
    torch.testing.assert_close(outs[0].mean(-1), torch.zeros(2, 72), atol=1e-5, rtol=0)
    assert not torch.allclose(outs[0], outs[1])


def _vjepa_sincos_numpy(embed_dim, grid_size, grid_depth):
    """V-JEPA 1's 3D sincos table for a square grid, written out with numpy."""

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=float) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gd, gw = np.meshgrid(np.arange(grid_size, dtype=float), np.arange(grid_depth, dtype=float),
                             np.arange(grid_size, dtype=float))
    return np.concatenate([one_d(embed_dim // 2, gd), one_d(embed_dim // 4, gh), one_d(embed_dim // 4, gw)], axis=1)


def test_sincos_table_matches_vjepa1_and_other_grids_are_exact():
    model = _vit((8, 32, 32), pos_embed="sincos")
    ref = torch.from_numpy(_vjepa_sincos_numpy(48, 4, 4)).float()
    torch.testing.assert_close(model.pos_embed[0], ref, atol=1e-6, rtol=0)
    # another grid: exactly the table of that grid, and its rows are the nominal rows where the grids overlap
    other = model.interpolate_pos_encoding((3, 2, 5))
    torch.testing.assert_close(other[0], sincos_pos_embed_3d(48, (3, 2, 5)), atol=0, rtol=0)
    big = model.interpolate_pos_encoding((4, 4, 6))[0].reshape(4, 4, 6, 48)
    torch.testing.assert_close(big[:, :, :4].reshape(-1, 48), model.pos_embed[0], atol=1e-6, rtol=0)


def test_sincos_model_at_another_grid_equals_model_built_for_it():
    a = _vit((6, 32, 48), pos_embed="sincos")
    b = _vit((2, 16, 40), pos_embed="sincos")
    state = {k: v for k, v in a.state_dict().items() if k != "pos_embed"}
    b.load_state_dict(state, strict=False)
    x = torch.randn(1, 1, 2, 16, 40)
    torch.testing.assert_close(a(x), b(x), atol=1e-6, rtol=0)


def test_init_truncated_normal_and_per_layer_rescale():
    model = VisionTransformer3D(img_size=(2, 32, 32), patch_size=16, embed_dim=128, depth=3, num_heads=4)
    qkv_std = model.blocks[0].attn.qkv.weight.std().item()
    assert 0.015 < qkv_std < 0.02  # trunc normal(0.02) cut at 2 std has std 0.0176
    assert model.blocks[0].attn.qkv.weight.abs().max() <= 0.04 + 1e-6
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    for layer in (0, 2):
        ratio = model.blocks[layer].attn.proj.weight.std().item() / qkv_std
        assert abs(ratio - 1 / math.sqrt(2 * (layer + 1))) < 0.05
        ratio = model.blocks[layer].mlp.fc2.weight.std().item() / qkv_std
        assert abs(ratio - 1 / math.sqrt(2 * (layer + 1))) < 0.05


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(1)
    plain = _vit().train()
    ckpt = _vit(use_activation_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 6, 32, 48)
    masks = torch.randperm(72)[:40][None]
    for m in (plain, ckpt):
        m(x, masks).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_bf16_autocast_on_cpu(pos_embed):
    model = _vit(pos_embed=pos_embed)
    x = torch.randn(2, 1, 6, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.randperm(72)[:30].expand(2, -1))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = model(x, torch.randperm(72)[:30].expand(2, -1))
    assert ref.dtype == torch.float32


def test_grid_positions_in_raster_order():
    pos = token_positions((2, 3, 4))
    assert pos.shape == (1, 24, 3)
    assert pos[0, 0].tolist() == [0, 0, 0] and pos[0, 5].tolist() == [0, 1, 1] and pos[0, 23].tolist() == [1, 2, 3]
    picked = token_positions((2, 3, 4), torch.tensor([[13, 7]]))
    assert picked[0].tolist() == [[1, 0, 1], [0, 1, 3]]


def test_layernorm_eps_and_norm():
    model = _vit()
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6
    out = model(torch.randn(1, 1, 6, 32, 48))
    torch.testing.assert_close(out, F.layer_norm(out, (48,)), atol=1e-4, rtol=0)


def test_stochastic_depth_only_in_training():
    model = _vit(drop_path_rate=0.5)
    assert type(model.blocks[0].drop_path).__name__ == "Identity"  # rate rises from 0 at the first block
    assert type(model.blocks[1].drop_path).__name__ == "DropPath"
    x = torch.randn(4, 1, 6, 32, 48)
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    assert not torch.allclose(a, model(x))


def test_traceable_and_lazy_package_exports():
    import oct_foundation.networks as networks
    from oct_foundation.networks import vjepa3d

    assert networks.VJEPA3D is vjepa3d.VJEPA3D and networks.VisionTransformer3D is VisionTransformer3D
    assert "load_pretrained" in dir(networks) and "SegmentationHead" in dir(networks)
    with pytest.raises(AttributeError):
        networks.NotANetwork
    model = _vit()
    x = torch.randn(1, 1, 6, 32, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-dependent Python branches are fixed here
        traced = torch.jit.trace(model, (x,))
    torch.testing.assert_close(traced(x), model(x))


def test_sincos_tables_follow_one_rule_at_every_grid():
    """Nominal grid: the stored table. Other grids: the exact table while the stored one is exact, else the stored
    table resampled (e.g. a V-JEPA 1 table interpolated on load), so depths are encoded alike at every grid."""
    from oct_foundation.networks.pretrained import interpolate_pos_table

    model = VisionTransformer3D(img_size=(8, 32, 32), patch_size=8, tubelet_size=2, embed_dim=48, depth=1,
                                num_heads=2, pos_embed="sincos")
    native, other = model.native_grid, (8, 4, 4)
    assert model.pos_table_is_exact()
    assert torch.allclose(model.interpolate_pos_encoding(other), sincos_pos_embed_3d(48, other)[None])
    # a table from another grid (as a pretrained file's, resampled to this model's grid on load)
    loaded = interpolate_pos_table(sincos_pos_embed_3d(48, (8, 4, 4))[None], (8, 4, 4), native)
    model.pos_embed.copy_(loaded)
    assert not model.pos_table_is_exact()
    assert torch.equal(model.interpolate_pos_encoding(native), model.pos_embed)
    got = model.interpolate_pos_encoding(other)
    assert torch.allclose(got, interpolate_pos_table(loaded, native, other))
    assert not torch.allclose(got, sincos_pos_embed_3d(48, other)[None], atol=1e-3)


@pytest.mark.parametrize("in_chans,kernel", [(1, (2, 16, 16)), (3, (1, 8, 4))])
def test_patch_embedding_equals_the_strided_convolution(in_chans, kernel):
    from oct_foundation.networks.vit3d import PatchEmbed3D

    torch.manual_seed(0)
    pe = PatchEmbed3D(in_chans, 24, kernel)
    x = torch.randn(2, in_chans, 4 * kernel[0], 2 * kernel[1], 3 * kernel[2], requires_grad=True)
    ours = pe(x)
    conv = pe.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, conv, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(conv)
    grads = torch.autograd.grad(ours, (x, pe.proj.weight, pe.proj.bias), g)
    ref = torch.autograd.grad(conv, (x, pe.proj.weight, pe.proj.bias), g)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # a subset of tubelets embeds to the same rows
    idx = torch.tensor([[0, 5, 7], [23, 1, 2]])
    sub = pe.embed(torch.gather(pe.patches(x), 1, idx[..., None].expand(-1, -1, pe.patches(x).shape[-1])))
    torch.testing.assert_close(sub, torch.gather(conv, 1, idx[..., None].expand(-1, -1, 24)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        pe(torch.randn(1, in_chans, 4 * kernel[0], 2 * kernel[1] + 1, 3 * kernel[2]))
