"""Multiblock 3D masks for V-JEPA on token grids ``(T', H', W')`` (T' = depth/slice axis).

As V-JEPA's multiblock 3D collator: per call one block size ``(t, h, w)`` is drawn (temporal scale, spatial
scale, aspect ratio ``h / w``), then for every sample ``num_blocks`` blocks of that size are placed uniformly at
random; their union is the target (masked) set and its complement the context. Samples whose context would be
empty are redrawn. Counts are made equal across the batch by keeping the smallest count (V-JEPA keeps the first
indices; here a random subset is kept, in raster order, so truncation does not favour the first slices).

V-JEPA 2 trains with two mask configurations per batch (:func:`default_mask_generators`): short range (8 blocks,
spatial scale 0.15) and long range (2 blocks, scale 0.7), aspect ratio 0.75-1.5, full temporal extent.

Depth subsampling: when a volume of ``d_full`` slices is subsampled to ``d_target``, the token depth shrinks and
``max(1, int(T' * scale))`` would change the masked fraction. With ``d_full``/``d_target`` set (or
:meth:`MultiBlockMask3D.rescale_for_d_target`), the block depth is drawn with stochastic rounding so that its
expected fraction of the depth equals the fraction at full depth.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["MultiBlockMask3D", "default_mask_generators", "VJEPA_MASK_CONFIGS"]

#: V-JEPA 2 pretraining mask list (short range, long range).
VJEPA_MASK_CONFIGS = (
    {"num_blocks": 8, "spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5)},
    {"num_blocks": 2, "spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5)},
)


def _range(value, name: str) -> Tuple[float, float]:
    lo, hi = (float(value), float(value)) if isinstance(value, (int, float)) else (float(value[0]), float(value[1]))
    if not 0 < lo <= hi:
        raise ValueError(f"{name} must be a positive (min, max) range, got {value!r}")
    return lo, hi


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return lo + torch.rand(1, generator=generator).item() * (hi - lo)


def _randint(high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(0, high, (1,), generator=generator).item())


class MultiBlockMask3D:
    """Sample context / target token indices for a batch.

    Args:
        num_blocks: blocks per sample; their union is the target set.
        spatial_scale: ``(min, max)`` fraction of the ``H' x W'`` plane covered by one block.
        temporal_scale: ``(min, max)`` fraction of the depth ``T'`` covered by one block (1.0 = full depth).
        aspect_ratio: ``(min, max)`` of block ``h / w`` in tokens.
        keep_ratio: if set, exactly ``round(keep_ratio * N)`` context tokens per sample, taken first from outside
            the blocks (then from inside) in random order; compute of the context encoder scales with it.
        target: with ``keep_ratio``: ``"blocks"`` (targets are the block tokens not in the context) or ``"rest"``
            (targets are all tokens not in the context).
        d_full, d_target: slices of the full volume and of the subsampled one (see module doc); the ratio
            ``d_full / d_target`` gives the full token depth ``T' * d_full / d_target``.
        max_tries: redraws of a sample whose context or target would be empty before giving up.
    """

    def __init__(
        self,
        num_blocks: int = 8,
        spatial_scale: Sequence[float] = (0.15, 0.15),
        temporal_scale: Sequence[float] = (1.0, 1.0),
        aspect_ratio: Sequence[float] = (0.75, 1.5),
        keep_ratio: Optional[float] = None,
        target: str = "blocks",
        d_full: Optional[int] = None,
        d_target: Optional[int] = None,
        max_tries: int = 100,
    ):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if keep_ratio is not None and not 0 < keep_ratio < 1:
            raise ValueError(f"keep_ratio must be in (0, 1), got {keep_ratio}")
        if target not in ("blocks", "rest"):
            raise ValueError(f"target must be 'blocks' or 'rest', got {target!r}")
        if (d_full is None) != (d_target is None) or (d_full is not None and (d_full < 1 or d_target < 1)):
            raise ValueError(f"d_full and d_target must both be positive or both None, got {d_full}, {d_target}")
        self.num_blocks = int(num_blocks)
        self.spatial_scale = _range(spatial_scale, "spatial_scale")
        self.temporal_scale = _range(temporal_scale, "temporal_scale")
        self.aspect_ratio = _range(aspect_ratio, "aspect_ratio")
        if self.spatial_scale[1] > 1 or self.temporal_scale[1] > 1:
            raise ValueError("spatial_scale and temporal_scale must not exceed 1")
        self.keep_ratio = keep_ratio
        self.target = target
        self.d_full = d_full
        self.d_target = d_target
        self.max_tries = int(max_tries)

    def __repr__(self) -> str:
        return (
            f"MultiBlockMask3D(num_blocks={self.num_blocks}, spatial_scale={self.spatial_scale}, "
            f"temporal_scale={self.temporal_scale}, aspect_ratio={self.aspect_ratio}, keep_ratio={self.keep_ratio}, "
            f"target={self.target!r}, d_full={self.d_full}, d_target={self.d_target})"
        )

    def rescale_for_d_target(self, d_full: int, d_target: int) -> "MultiBlockMask3D":
        """Copy of this generator for volumes subsampled from ``d_full`` to ``d_target`` slices."""
        return MultiBlockMask3D(
            self.num_blocks,
            self.spatial_scale,
            self.temporal_scale,
            self.aspect_ratio,
            self.keep_ratio,
            self.target,
            d_full,
            d_target,
            self.max_tries,
        )

    def sample_block_size(self, grid: Sequence[int], generator: Optional[torch.Generator] = None) -> Tuple[int, int, int]:
        """One block size ``(t, h, w)`` in tokens for ``grid (T', H', W')`` (V-JEPA's rule, see class doc)."""
        gt, gh, gw = (int(g) for g in grid)
        temporal = _uniform(*self.temporal_scale, generator)
        if self.d_full is not None and self.d_target is not None and self.d_full != self.d_target:
            full_t = max(1, int(round(gt * self.d_full / self.d_target)))
            frac = max(1, int(full_t * temporal)) / full_t  # the block's depth fraction at full depth
            expected = frac * gt
            t = int(math.floor(expected))
            if torch.rand(1, generator=generator).item() < expected - t:  # stochastic rounding keeps E[t] = expected
                t += 1
            t = min(max(t, 1), gt)
        else:
            t = max(1, int(gt * temporal))
        spatial = _uniform(*self.spatial_scale, generator)
        n_keep = int(gh * gw * spatial)
        ar = _uniform(*self.aspect_ratio, generator)
        h = min(max(1, int(round(math.sqrt(n_keep * ar)))), gh)
        w = min(max(1, int(round(math.sqrt(n_keep / ar)))), gw)
        return t, h, w

    def _block_union(self, grid: Tuple[int, int, int], size, generator) -> torch.Tensor:
        gt, gh, gw = grid
        t, h, w = size
        masked = torch.zeros(grid, dtype=torch.bool)
        for _ in range(self.num_blocks):
            s, top, left = _randint(gt - t + 1, generator), _randint(gh - h + 1, generator), _randint(gw - w + 1, generator)
            masked[s : s + t, top : top + h, left : left + w] = True
        return masked.flatten()

    def _sample(self, grid, size, n_keep: Optional[int], generator) -> Tuple[torch.Tensor, torch.Tensor]:
        for _ in range(self.max_tries):
            masked = self._block_union(grid, size, generator)
            if n_keep is None:
                ctx, tgt = torch.nonzero(~masked).flatten(), torch.nonzero(masked).flatten()
            else:
                outside, inside = torch.nonzero(~masked).flatten(), torch.nonzero(masked).flatten()
                order = torch.cat(
                    [
                        outside[torch.randperm(len(outside), generator=generator)],
                        inside[torch.randperm(len(inside), generator=generator)],
                    ]
                )
                ctx = order[:n_keep].sort().values
                in_ctx = torch.zeros_like(masked)
                in_ctx[ctx] = True
                tgt = torch.nonzero((masked if self.target == "blocks" else torch.ones_like(masked)) & ~in_ctx).flatten()
            if len(ctx) > 0 and len(tgt) > 0:
                return ctx, tgt
        raise RuntimeError(f"{self!r} could not draw a non-empty context and target on grid {grid}")

    @staticmethod
    def _equalise(idx: List[torch.Tensor], generator) -> torch.Tensor:
        n = min(len(i) for i in idx)
        out = []
        for i in idx:
            if len(i) > n:
                i = i[torch.randperm(len(i), generator=generator)[:n]].sort().values
            out.append(i)
        return torch.stack(out)

    def __call__(
        self, batch_size: int, grid: Sequence[int], generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masks for ``batch_size`` samples on ``grid (T', H', W')``.

        Returns:
            ``ctx_idx [B, Nc]`` and ``tgt_idx [B, Nt]`` (long, sorted token indices in raster order, disjoint per
            sample). Deterministic for a seeded ``generator``.
        """
        grid = tuple(int(g) for g in grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be three positive sizes (T', H', W'), got {grid}")
        n_tokens = grid[0] * grid[1] * grid[2]
        if n_tokens < 2:
            raise ValueError(f"grid {grid} has fewer than 2 tokens; cannot split into context and target")
        n_keep = None
        if self.keep_ratio is not None:
            n_keep = min(max(1, int(round(self.keep_ratio * n_tokens))), n_tokens - 1)
        size = self.sample_block_size(grid, generator)
        pairs = [self._sample(grid, size, n_keep, generator) for _ in range(batch_size)]
        ctx = self._equalise([p[0] for p in pairs], generator)
        tgt = self._equalise([p[1] for p in pairs], generator)
        return ctx, tgt


def default_mask_generators(
    temporal_scale: Sequence[float] = (1.0, 1.0),
    aspect_ratio: Sequence[float] = (0.75, 1.5),
    keep_ratio: Optional[float] = None,
    target: str = "blocks",
    d_full: Optional[int] = None,
    d_target: Optional[int] = None,
) -> List[MultiBlockMask3D]:
    """V-JEPA 2's pair of mask generators: short range (8 x 0.15) and long range (2 x 0.7)."""
    return [
        MultiBlockMask3D(
            num_blocks=cfg["num_blocks"],
            spatial_scale=cfg["spatial_scale"],
            temporal_scale=temporal_scale,
            aspect_ratio=aspect_ratio,
            keep_ratio=keep_ratio,
            target=target,
            d_full=d_full,
            d_target=d_target,
        )
        for cfg in VJEPA_MASK_CONFIGS
    ]
