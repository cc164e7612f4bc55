"""Multiblock 3D masks: shapes, disjointness, block geometry, ratios, keep_ratio, depth rescaling, determinism."""
import math

import pytest
import torch

from oct_foundation.networks.masking import VJEPA_MASK_CONFIGS, MultiBlockMask3D, default_mask_generators


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _masked_fraction(mask, grid, draws, seed=0):
    g = _gen(seed)
    n = grid[0] * grid[1] * grid[2]
    return sum(mask(1, grid, g)[1].shape[1] / n for _ in range(draws)) / draws


@pytest.mark.parametrize("grid", [(3, 4, 6), (8, 16, 16), (5, 8, 3)])
def test_batch_shapes_disjoint_sorted(grid):
    n = grid[0] * grid[1] * grid[2]
    for mask in default_mask_generators():
        ctx, tgt = mask(4, grid, _gen(1))
        assert ctx.dtype == torch.long and tgt.dtype == torch.long
        assert ctx.shape[0] == tgt.shape[0] == 4 and ctx.shape[1] > 0 and tgt.shape[1] > 0
        for c, t in zip(ctx.tolist(), tgt.tolist()):
            assert c == sorted(set(c)) and t == sorted(set(t))  # unique, raster order
            assert not set(c) & set(t)
            assert min(c + t) >= 0 and max(c + t) < n


def test_single_sample_covers_grid_and_counts_follow_block_bounds():
    grid = (4, 8, 12)
    n = 4 * 8 * 12
    for mask in default_mask_generators():
        g = _gen(2)
        for _ in range(30):
            ctx, tgt = mask(1, grid, g)
            assert sorted(ctx[0].tolist() + tgt[0].tolist()) == list(range(n))  # complement, nothing lost
        # union of num_blocks equal blocks: at least one block, at most num_blocks blocks
        t, h, w = mask.sample_block_size(grid, _gen(3))
        ctx, tgt = mask(1, grid, _gen(3))
        assert t * h * w <= tgt.shape[1] <= min(n, mask.num_blocks * t * h * w)


def test_single_block_is_a_box_with_bounded_aspect_ratio_and_scale():
    grid = (6, 48, 64)
    mask = MultiBlockMask3D(num_blocks=1, spatial_scale=(0.1, 0.3), temporal_scale=(0.5, 1.0), aspect_ratio=(0.75, 1.5))
    g = _gen(4)
    for _ in range(40):
        _, tgt = mask(1, grid, g)
        idx = tgt[0]
        d, r = idx // (48 * 64), idx % (48 * 64)
        hh, ww = r // 64, r % 64
        ext = [int(a.max() - a.min() + 1) for a in (d, hh, ww)]
        assert ext[0] * ext[1] * ext[2] == len(idx)  # a solid box
        assert 3 <= ext[0] <= 6  # temporal scale 0.5-1.0 of 6
        ratio = ext[1] / ext[2]
        assert 0.75 * 0.93 <= ratio <= 1.5 * 1.07  # rounding of h and w to whole tokens
        area = ext[1] * ext[2] / (48 * 64)
        assert 0.1 * 0.9 <= area <= 0.3 * 1.1


def test_default_temporal_scale_spans_full_depth():
    mask = MultiBlockMask3D(num_blocks=1)
    for grid in [(1, 8, 8), (5, 8, 8), (9, 4, 6)]:
        assert mask.sample_block_size(grid, _gen(0))[0] == grid[0]


def test_masked_ratio_band_over_many_draws():
    short, long = default_mask_generators()
    assert (short.num_blocks, short.spatial_scale) == (8, (0.15, 0.15))
    assert (long.num_blocks, long.spatial_scale) == (2, (0.7, 0.7))
    assert len(VJEPA_MASK_CONFIGS) == 2
    f_short = _masked_fraction(short, (8, 16, 16), 150)
    f_long = _masked_fraction(long, (8, 16, 16), 150)
    # 8 blocks of 15%: between one block and the independent-union value 1 - 0.85**8 = 0.73
    assert 0.45 < f_short < 0.73
    # 2 blocks of 70%: above one block, below 1 - 0.3**2 = 0.91
    assert 0.7 < f_long < 0.91


def test_equal_counts_truncate_to_minimum():
    mask = MultiBlockMask3D(num_blocks=4, spatial_scale=(0.1, 0.1))
    grid = (4, 8, 8)
    g = _gen(5)
    singles = [mask(1, grid, _gen(s)) for s in range(6)]
    counts = {s[1].shape[1] for s in singles}
    assert len(counts) > 1  # samples really differ in size
    ctx, tgt = mask(6, grid, g)
    assert ctx.shape[0] == 6 and tgt.shape[0] == 6
    assert ctx.shape[1] + tgt.shape[1] < 4 * 8 * 8  # truncated, so not everything is used


@pytest.mark.parametrize("target", ["rest", "blocks"])
def test_keep_ratio_fixes_context_size(target):
    grid = (4, 8, 10)
    n = 320
    counts = {}
    for ratio in (0.1, 0.25, 0.5):
        mask = MultiBlockMask3D(num_blocks=2, spatial_scale=(0.3, 0.3), keep_ratio=ratio, target=target)
        ctx, tgt = mask(3, grid, _gen(6))
        assert ctx.shape == (3, round(ratio * n))
        counts[ratio] = ctx.shape[1]
        for c, t in zip(ctx.tolist(), tgt.tolist()):
            assert not set(c) & set(t)
            if target == "rest":
                assert len(c) + len(t) == n
    assert counts[0.1] < counts[0.25] < counts[0.5]  # encoder work scales with the kept fraction


def test_keep_ratio_prefers_tokens_outside_blocks():
    grid = (2, 8, 8)
    mask = MultiBlockMask3D(num_blocks=1, spatial_scale=(0.25, 0.25), keep_ratio=0.5, target="blocks")
    ref = MultiBlockMask3D(num_blocks=1, spatial_scale=(0.25, 0.25))
    # same generator stream until placement: the block (target) set is identical
    ctx, tgt = mask(1, grid, _gen(7))
    _, block = ref(1, grid, _gen(7))
    assert set(tgt[0].tolist()) == set(block[0].tolist())
    assert not set(ctx[0].tolist()) & set(block[0].tolist())


def test_deterministic_with_generator():
    mask = default_mask_generators()[0]
    a = mask(3, (4, 8, 8), _gen(11))
    b = mask(3, (4, 8, 8), _gen(11))
    c = mask(3, (4, 8, 8), _gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and torch.equal(a[0], c[0]))


def test_rescale_keeps_masked_fraction_when_depth_shrinks():
    grid_full, grid_sub = (8, 16, 16), (3, 16, 16)  # 16 slices -> 6 slices, tubelet 2
    mask = MultiBlockMask3D(num_blocks=2, spatial_scale=(0.15, 0.15), temporal_scale=(0.5, 0.5))
    f_full = _masked_fraction(mask, grid_full, 400)
    f_plain = _masked_fraction(mask, grid_sub, 400)
    rescaled = mask.rescale_for_d_target(16, 6)
    assert (rescaled.d_full, rescaled.d_target, rescaled.num_blocks) == (16, 6, 2)
    f_rescaled = _masked_fraction(rescaled, grid_sub, 400)
    assert abs(f_rescaled - f_full) < 0.015
    assert abs(f_plain - f_full) > 0.03  # without rescaling the fraction drifts (int(3 * 0.5) = 1 of 3)
    # constructor form is the same generator
    ctor = MultiBlockMask3D(num_blocks=2, spatial_scale=0.15, temporal_scale=0.5, d_full=16, d_target=6)
    assert torch.equal(ctor(2, grid_sub, _gen(1))[1], rescaled(2, grid_sub, _gen(1))[1])


def test_rescaled_block_depth_has_expected_mean():
    mask = MultiBlockMask3D(num_blocks=1, temporal_scale=(0.5, 0.5), d_full=32, d_target=10)  # 16 -> 5 tokens
    g = _gen(9)
    depths = [mask.sample_block_size((5, 8, 8), g)[0] for _ in range(2000)]
    assert set(depths) == {2, 3}
    assert math.isclose(sum(depths) / len(depths), 2.5, abs_tol=0.08)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        MultiBlockMask3D(keep_ratio=1.5)
    with pytest.raises(ValueError):
        MultiBlockMask3D(target="all")
    with pytest.raises(ValueError):
        MultiBlockMask3D(d_full=16)
    with pytest.raises(ValueError):
        MultiBlockMask3D(spatial_scale=(0.5, 1.5))
    with pytest.raises(ValueError):
        MultiBlockMask3D()(2, (1, 1, 1))
