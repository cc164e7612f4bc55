"""OCT transforms: depth (B-scan) subsampling, time-as-depth views, input checks, preprocessing presets.

Volumes are ``MetaTensor [C, D, H, W]`` (D = B-scan index, H = axial, W = lateral); batches
``[B, C, D, H, W]``. Random transforms are MONAI ``Randomizable`` and reproducible under
``Compose.set_random_state`` / ``monai.utils.set_determinism``.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import ensure_tuple

from oct_foundation.errors import OCTInputError

__all__ = [
    "DEPTH_STRATEGIES",
    "sample_depth_indices",
    "select_depth",
    "DepthSubsampled",
    "MinDepthd",
    "CheckFinited",
    "RecordSpacingd",
    "time_as_depth",
    "TimeAsDepth",
    "default_maisi_transforms",
    "MAISI_PERCENTILES",
    "StreamingPercentiles",
    "scale_to_unit",
    "TimeAsDepthd",
    "build_preprocessing",
    "input_error_from",
]

DEPTH_STRATEGIES = ("uniform", "contiguous", "random")
#: intensity percentiles mapped to 0 and 1 (clipped) before the MAISI autoencoder, in every bundle that uses it
MAISI_PERCENTILES = (0.5, 99.5)


def _source(d: Mapping, key: Hashable) -> str:
    """The file an item came from (meta ``filename_or_obj``), else the key name."""
    x = d.get(key)
    if isinstance(x, MetaTensor):
        name = x.meta.get("filename_or_obj")
        if name:
            return str(name)
    return f"<{key}>"


def input_error_from(exc: BaseException) -> OCTInputError | None:
    """The :class:`OCTInputError` behind ``exc``, if any.

    MONAI's ``Compose`` re-raises a failing transform's error as ``RuntimeError("applying transform ...")``
    with the original as ``__cause__``; this walks that chain so callers can report the one-line message.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OCTInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def sample_depth_indices(
    depth: int,
    d_target: int,
    strategy: str = "uniform",
    rng: np.random.RandomState | None = None,
    preserve_first_last: bool = False,
    random_phase: bool = True,
    centred: bool = False,
) -> np.ndarray:
    """Choose ``d_target`` sorted, unique slice indices in ``[0, depth)``.

    - ``uniform``: evenly spaced (consecutive gaps differ by at most 1). Without ``preserve_first_last`` the
      grid ``floor(phase + k * depth / d_target)`` has a random phase in ``[0, depth / d_target)`` when
      ``random_phase`` (else the centred phase); with it, the grid runs from 0 to ``depth - 1``.
    - ``contiguous``: a run of consecutive slices at a random start (or centred when ``centred``); with
      ``preserve_first_last`` the first and last slices plus a run of ``d_target - 2`` in between.
    - ``random``: sorted draw without replacement (first and last always in when ``preserve_first_last``).

    ``d_target >= depth`` returns ``arange(depth)``. Returns int64 ``[min(d_target, depth)]``.
    """
    if strategy not in DEPTH_STRATEGIES:
        raise ValueError(f"strategy must be one of {DEPTH_STRATEGIES}, got {strategy!r}")
    depth, d = int(depth), int(d_target)
    if d < 1 or (preserve_first_last and d < 2):
        raise ValueError(f"d_target must be >= {2 if preserve_first_last else 1}, got {d_target}")
    if d >= depth:
        return np.arange(depth, dtype=np.int64)
    rng = rng if rng is not None else np.random.RandomState()
    if strategy == "uniform":
        if preserve_first_last:
            # round-half-up of an evenly spaced grid with step > 1: strictly increasing, ends included
            idx = np.floor(np.linspace(0, depth - 1, d) + 0.5)
        else:
            step = depth / d
            phase = rng.uniform(0.0, step) if random_phase else (step - 1.0) / 2.0
            # step > 1 so floors are strictly increasing; phase < step keeps the last one < depth
            idx = np.minimum(np.floor(phase + step * np.arange(d)), depth - 1)
    elif strategy == "contiguous":
        inner = d - 2 if preserve_first_last else d
        lo, hi = (1, depth - 1 - inner) if preserve_first_last else (0, depth - inner)
        start = lo + (hi - lo) // 2 if centred else int(rng.randint(lo, hi + 1))
        idx = np.arange(start, start + inner)
        if preserve_first_last:
            idx = np.concatenate([[0], idx, [depth - 1]])
    else:
        if preserve_first_last:
            inner = rng.choice(depth - 2, size=d - 2, replace=False) + 1
            idx = np.concatenate([[0], np.sort(inner), [depth - 1]])
        else:
            idx = np.sort(rng.choice(depth, size=d, replace=False))
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) != d or np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= depth:  # invariant, never expected
        raise RuntimeError(f"depth sampling produced invalid indices {idx.tolist()} for depth {depth}")
    return idx


def _spacing(affine) -> np.ndarray:
    """``(sd, sh, sw)`` from a 4x4 affine: column norms, as MONAI's ``affine_to_spacing`` (which is slower)."""
    a = np.asarray(affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def select_depth(x, idx: np.ndarray, depth: int, selected: bool = False):
    """``x [C, D, H, W]`` -> ``[C, len(idx), H, W]``; affine and ``spacing`` follow the kept slices.

    The depth column of the affine becomes the mean step between kept slices (exact for uniform and
    contiguous choices) and the origin moves to the first kept slice. ``selected``: ``x`` already holds only
    the slices ``idx`` of a volume of ``depth`` slices (read so by :class:`~oct_foundation.data.readers.LoadOCTSlicesd`),
    with the whole volume's affine; only the metadata is updated.
    """
    t = torch.as_tensor(idx, dtype=torch.long)
    if not isinstance(x, MetaTensor):
        x = MetaTensor(torch.as_tensor(x))
    data = x.as_tensor() if selected else torch.index_select(x.as_tensor(), 1, t.to(x.device))
    affine = x.affine.clone().to(torch.float64)
    step = float(idx[-1] - idx[0]) / (len(idx) - 1) if len(idx) > 1 else 1.0
    shift = torch.eye(affine.shape[0], dtype=torch.float64)
    shift[0, 0] = step
    shift[0, -1] = float(idx[0])
    new_affine = affine @ shift
    meta = dict(x.meta)
    meta.pop("affine", None)
    out = MetaTensor(data, affine=new_affine, meta=meta, applied_operations=list(x.applied_operations))
    out.meta["slice_indices"] = t.clone()
    out.meta["original_depth"] = int(depth)
    out.meta["spacing"] = _spacing(new_affine)
    return out


_select_depth = select_depth
#: meta flag of volumes that LoadOCTSlicesd already subsampled while reading (same as readers.READ_SUBSAMPLED)
READ_SUBSAMPLED = "depth_subsampled_on_read"


def _read_subsampled(x) -> bool:
    return isinstance(x, MetaTensor) and bool(x.meta.get(READ_SUBSAMPLED, False))


class DepthSubsampled(Randomizable, MapTransform):
    """Keep ``d_target`` of the D slices of ``[C, D, H, W]`` volumes (same slices for every key of an item).

    The chosen indices (LongTensor ``[d]``) go to each output's meta ``slice_indices`` (and the input depth
    to ``original_depth``); affine/``spacing`` are updated. ``d_target >= D`` and ``eval_mode=True`` keep
    every slice. See :func:`sample_depth_indices` for the strategies.

    Args:
        keys: keys of ``[C, D, H, W]`` volumes (image and label).
        d_target: number of slices to keep.
        strategy: ``"uniform"``, ``"contiguous"`` or ``"random"``.
        preserve_first_last: always keep the first and the last slice.
        random_phase: random offset of the uniform grid (else centred).
        centred: contiguous run centred instead of at a random start.
        eval_mode: keep the full depth (``slice_indices`` = ``arange(D)``).
        min_depth: raise :class:`OCTInputError` (naming the file) when D is smaller.
    """

    def __init__(
        self,
        keys: KeysCollection,
        d_target: int,
        strategy: str = "uniform",
        preserve_first_last: bool = False,
        random_phase: bool = True,
        centred: bool = False,
        eval_mode: bool = False,
        min_depth: int | None = None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if strategy not in DEPTH_STRATEGIES:
            raise ValueError(f"strategy must be one of {DEPTH_STRATEGIES}, got {strategy!r}")
        if int(d_target) < (2 if preserve_first_last else 1):
            raise ValueError(f"d_target must be >= {2 if preserve_first_last else 1}, got {d_target}")
        self.d_target = int(d_target)
        self.strategy = strategy
        self.preserve_first_last = preserve_first_last
        self.random_phase = random_phase
        self.centred = centred
        self.eval_mode = eval_mode
        self.min_depth = min_depth
        self._indices: np.ndarray | None = None

    def randomize(self, depth: int) -> None:
        if self.eval_mode:
            self._indices = np.arange(depth, dtype=np.int64)
            return
        self._indices = sample_depth_indices(
            depth, self.d_target, self.strategy, self.R, self.preserve_first_last, self.random_phase, self.centred
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        done = [k for k in keys if _read_subsampled(d[k])]
        if done:  # LoadOCTSlicesd drew the indices from this transform and read only those slices
            for k in done:
                d[k].meta.pop(READ_SUBSAMPLED, None)
            depth = int(d[done[0]].meta["original_depth"])
            for k in keys:
                if k in done:
                    continue
                if int(d[k].shape[1]) != depth:
                    raise OCTInputError(_source(d, k), f"keys have different slice counts "
                                                       f"({depth} and {int(d[k].shape[1])})")
                d[k] = _select_depth(d[k], self._indices, depth)
            return d
        depths = {k: int(d[k].shape[1]) for k in keys}
        depth = depths[keys[0]]
        if any(v != depth for v in depths.values()):
            raise OCTInputError(_source(d, keys[0]), f"keys have different slice counts {depths}")
        if self.min_depth is not None and depth < self.min_depth:
            raise OCTInputError(
                _source(d, keys[0]), f"{depth} slices, fewer than the {self.min_depth} this pipeline needs"
            )
        self.randomize(depth)
        for k in keys:
            d[k] = _select_depth(d[k], self._indices, depth)
        return d


class MinDepthd(MapTransform):
    """Refuse volumes ``[C, D, H, W]`` with fewer than ``min_depth`` slices (e.g. D < tubelet size)."""

    def __init__(self, keys: KeysCollection, min_depth: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_depth = int(min_depth)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            depth = int(d[k].meta["original_depth"] if _read_subsampled(d[k]) else d[k].shape[1])
            if depth < self.min_depth:
                raise OCTInputError(_source(d, k), f"{depth} slices, fewer than the {self.min_depth} needed")
        return d


class CheckFinited(MapTransform):
    """Refuse NaN/Inf voxels with :class:`OCTInputError` naming the file, or set them to 0 (``sanitize``)."""

    def __init__(self, keys: KeysCollection, sanitize: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.sanitize = sanitize

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            x = d[k]
            t = torch.as_tensor(x)
            if not torch.is_floating_point(t):
                continue
            bad = ~torch.isfinite(t)
            n_bad = int(bad.sum())
            if not n_bad:
                continue
            if not self.sanitize:
                raise OCTInputError(_source(d, k), f"{n_bad} non-finite (NaN/Inf) voxels")
            d[k] = torch.where(bad, torch.zeros((), dtype=t.dtype), x) if isinstance(x, torch.Tensor) else (
                np.where(np.isfinite(x), x, 0).astype(x.dtype)
            )
        return d


class RecordSpacingd(MapTransform):
    """Write the current voxel size (from the affine, mm) into meta ``spacing`` = ``(sd, sh, sw)``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            if isinstance(d[k], MetaTensor):
                d[k].meta["spacing"] = _spacing(d[k].affine)
        return d


def time_as_depth(x: torch.Tensor) -> torch.Tensor:
    """Swap the channel and depth axes: ``[B, C, D, H, W] <-> [B, D, C, H, W]`` (or ``[C, D, H, W] <-> [D, C, H, W]``).

    The first is the Conv3d / V-JEPA view (D as time T), the second the video-library view. It is its own
    inverse. Returns a view (call ``.contiguous()`` if needed).
    """
    if x.ndim == 5:
        return x.transpose(1, 2)
    if x.ndim == 4:
        return x.transpose(0, 1)
    raise ValueError(f"time_as_depth expects [B, C, D, H, W] or [C, D, H, W], got shape {tuple(x.shape)}")


class TimeAsDepth(Transform):
    """Array transform form of :func:`time_as_depth` (``contiguous`` output)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return time_as_depth(torch.as_tensor(x) if isinstance(x, np.ndarray) else x).contiguous()


class TimeAsDepthd(MapTransform):
    """Dictionary form of :class:`TimeAsDepth`."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        f = TimeAsDepth()
        for k in self.key_iterator(d):
            d[k] = f(d[k])
        return d


def build_preprocessing(
    keys: KeysCollection = ("image",),
    label_key: str | None = None,
    d_target: int | None = None,
    strategy: str = "uniform",
    target_spacing: Sequence[float] | None = None,
    image_size: Sequence[int] | None = None,
    normalize: bool | str = True,
    train: bool = True,
    load: bool = True,
    sanitize_nan: bool = False,
    min_depth: int | None = None,
    preserve_first_last: bool = False,
    eval_full_depth: bool = False,
    percentiles: Sequence[float] = (0.5, 99.5),
    allow_missing_keys: bool = False,
    max_voxels: int | None = None,
    assume_spacing: Sequence[float] | None = None,
    allow_non_oct: bool = False,
    read_kept_slices: bool = True,
) -> list:
    """The standard OCT preprocessing chain, as a list of dictionary transforms (``Compose`` it).

    Order (cheap first, so cost grows with ``d_target``, not D):
    ``LoadOCTd`` (refuses NaN/Inf; ``LoadOCTSlicesd``, reading only the kept slices, when ``read_kept_slices``)
    -> ``EnsureTyped`` -> ``MinDepthd`` -> ``DepthSubsampled`` ->
    ``CheckFinited`` (only when ``load=False``) ->
    ``Spacingd`` (``target_spacing`` ``(sd, sh, sw)``; labels nearest) -> ``Resized`` (``image_size``
    ``(D, H, W)`` or ``(H, W)``; images ``area``, labels nearest) -> intensity normalisation (images only)
    -> ``RecordSpacingd`` (meta ``spacing``).

    Args:
        keys: image keys. label_key: optional label key (nearest interpolation, no normalisation).
        d_target: slices kept by :class:`DepthSubsampled` (``None``: all). When set, the depth component of
            ``target_spacing`` is not resampled (the subsampled slices keep their spacing).
        strategy: depth strategy for training. With ``train=False`` the choice is deterministic
            (uniform without random phase, or a centred contiguous run) unless ``eval_full_depth``,
            which keeps every slice.
        normalize: ``True``/``"percentile"`` (``percentiles`` -> [0, 1], clipped), ``"zscore"``, or ``False``.
        load: start with :class:`LoadOCTd` (set ``False`` when items already hold tensors).
        sanitize_nan: NaN/Inf voxels become 0 instead of an error. min_depth: refuse shorter volumes.
        max_voxels, assume_spacing, allow_non_oct: the readers' limits (:mod:`oct_foundation.data.validation`).
        read_kept_slices: with ``load`` and ``d_target`` (and not ``eval_full_depth``), read only the slices
            :class:`DepthSubsampled` keeps (:class:`~oct_foundation.data.readers.LoadOCTSlicesd` draws them from
            that transform's random state before reading, so the output and the seeded choice are those of the
            read-all chain). ``False``: read every slice, then subsample (the chain to use when a
            ``CacheDataset`` keeps whole volumes in memory; the partial reader is not cached).
    """
    from monai.transforms import (
        EnsureTyped,
        NormalizeIntensityd,
        Resized,
        ScaleIntensityRangePercentilesd,
        Spacingd,
    )

    from oct_foundation.data.readers import LoadOCTd

    image_keys = list(ensure_tuple(keys))
    all_keys = image_keys + ([label_key] if label_key else [])
    modes = ["bilinear"] * len(image_keys) + (["nearest"] * (1 if label_key else 0))
    resize_modes = ["area"] * len(image_keys) + (["nearest"] * (1 if label_key else 0))
    amk = allow_missing_keys
    out: list = []
    depth = None
    if d_target:
        eval_strategy = "contiguous" if strategy == "contiguous" else "uniform"
        depth = DepthSubsampled(
            all_keys,
            d_target,
            strategy=strategy if train else eval_strategy,
            preserve_first_last=preserve_first_last,
            random_phase=train,
            centred=not train,
            eval_mode=(not train) and eval_full_depth,
            allow_missing_keys=amk,
        )
    if load:
        limits = dict(allow_missing_keys=amk, sanitize_nan=sanitize_nan, max_voxels=max_voxels,
                      assume_spacing=assume_spacing, allow_non_oct=allow_non_oct)
        if depth is not None and read_kept_slices and not depth.eval_mode:
            from oct_foundation.data.readers import LoadOCTSlicesd

            out.append(LoadOCTSlicesd(all_keys, depth, min_depth=min_depth, **limits))
        else:
            out.append(LoadOCTd(all_keys, **limits))
    out.append(EnsureTyped(image_keys, dtype=torch.float32, track_meta=True, allow_missing_keys=amk))
    if label_key:
        out.append(EnsureTyped([label_key], track_meta=True, allow_missing_keys=True))
    if min_depth:
        out.append(MinDepthd(all_keys, min_depth, allow_missing_keys=amk))
    if depth is not None:
        out.append(depth)
    if not load:
        # The readers already refuse (or sanitise) non-finite voxels; tensors given directly are checked
        # here, after depth subsampling, so the check costs d_target slices, not D.
        out.append(CheckFinited(image_keys, sanitize=sanitize_nan, allow_missing_keys=amk))
    if target_spacing is not None:
        pix = [float(s) for s in ensure_tuple(target_spacing)]
        if len(pix) != 3:
            raise ValueError(f"target_spacing needs (sd, sh, sw), got {target_spacing}")
        if d_target:
            pix[0] = -1.0  # keep the depth spacing of the kept slices (non-positive = unchanged in Spacingd)
        out.append(Spacingd(all_keys, pixdim=pix, mode=modes, allow_missing_keys=amk))
    if image_size is not None:
        size = [int(s) for s in ensure_tuple(image_size)]
        if len(size) == 2:
            size = [-1] + size
        if len(size) != 3:
            raise ValueError(f"image_size needs (D, H, W) or (H, W), got {image_size}")
        out.append(Resized(all_keys, spatial_size=size, mode=resize_modes, allow_missing_keys=amk))
    if normalize:
        kind = "percentile" if normalize is True else str(normalize)
        if kind == "percentile":
            lo, hi = percentiles
            out.append(
                ScaleIntensityRangePercentilesd(
                    image_keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, channel_wise=True,
                    allow_missing_keys=amk,
                )
            )
        elif kind == "zscore":
            out.append(NormalizeIntensityd(image_keys, channel_wise=True, allow_missing_keys=amk))
        else:
            raise ValueError(f"normalize must be True, False, 'percentile' or 'zscore', got {normalize!r}")
    out.append(RecordSpacingd(all_keys, allow_missing_keys=True))
    return out


def default_maisi_transforms(keys: KeysCollection = ("image",), max_voxels: int | None = None,
                             assume_spacing: Sequence[float] | None = None, allow_non_oct: bool = False,
                             percentiles: Sequence[float] = MAISI_PERCENTILES):
    """The MAISI autoencoder's input: each volume read at its own size and depth and scaled to [0, 1] exactly as
    the ``oct_latent_diffusion`` autoencoder training scales it (:func:`build_preprocessing`: ``percentiles`` ->
    [0, 1], clipped, per channel), so weights trained there encode the same intensities here. ``max_voxels``,
    ``assume_spacing``, ``allow_non_oct``: the readers' limits (:mod:`oct_foundation.data.validation`)."""
    from monai.transforms import Compose

    return Compose(build_preprocessing(keys, d_target=None, train=False, normalize="percentile",
                                       percentiles=percentiles, max_voxels=max_voxels, assume_spacing=assume_spacing,
                                       allow_non_oct=allow_non_oct))


class StreamingPercentiles:
    """Exact per-channel percentiles of frames seen one at a time, as the percentile scaling of
    :func:`build_preprocessing` computes them on a whole volume (linear interpolation between order statistics),
    without holding the volume: the distinct values of each channel are counted.

    ``update(frame [C, H, W])``; ``range(lower, upper) -> (lo [C], hi [C])``. Frames with more than
    ``max_distinct`` distinct values per channel (float data rather than 8/16-bit frames) make ``exact`` False
    and :meth:`range` raise ``ValueError``: the caller then loads the volume whole.
    """

    def __init__(self, max_distinct: int = 1 << 17) -> None:
        self.max_distinct = int(max_distinct)
        self.counts: list[dict] = []
        self.n = 0
        self.exact = True

    def update(self, frame) -> None:
        frame = np.asarray(frame)
        if not self.counts:
            self.counts = [dict() for _ in range(frame.shape[0])]
        self.n += int(np.prod(frame.shape[1:]))
        if not self.exact:
            return
        for c, table in enumerate(self.counts):
            values, counts = np.unique(frame[c], return_counts=True)
            for v, k in zip(values.tolist(), counts.tolist()):
                table[v] = table.get(v, 0) + k
            if len(table) > self.max_distinct:
                self.exact = False
                self.counts = [dict() for _ in self.counts]
                return

    def _order_stat(self, values: np.ndarray, cum: np.ndarray, i: int) -> float:
        return float(values[int(np.searchsorted(cum, i, side="right"))])

    def range(self, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
        if not self.exact:
            raise ValueError(f"more than {self.max_distinct} distinct values per channel: no exact streamed "
                             "percentiles")
        if self.n == 0:
            raise ValueError("no frames seen")
        out = []
        for table in self.counts:
            values = np.array(sorted(table), dtype=np.float64)
            cum = np.cumsum([table[v] for v in sorted(table)])
            row = []
            for q in (lower, upper):
                pos = q / 100.0 * (self.n - 1)
                i = int(np.floor(pos))
                a = self._order_stat(values, cum, i)
                b = self._order_stat(values, cum, min(i + 1, self.n - 1))
                row.append(a + (pos - i) * (b - a))
            out.append(row)
        arr = np.array(out)
        return arr[:, 0], arr[:, 1]


def scale_to_unit(x: torch.Tensor, lo, hi, channel_dim: int = 1) -> torch.Tensor:
    """``(x - lo) / (hi - lo)`` clipped to [0, 1] per channel (``lo``, ``hi``: one value per channel along
    ``channel_dim``); a channel with ``hi == lo`` becomes ``x - lo``, as MONAI's ``ScaleIntensityRange`` does."""
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    lo_t = torch.as_tensor(np.asarray(lo), dtype=x.dtype, device=x.device).reshape(shape)
    hi_t = torch.as_tensor(np.asarray(hi), dtype=x.dtype, device=x.device).reshape(shape)
    span = hi_t - lo_t
    scaled = ((x - lo_t) / torch.where(span == 0, torch.ones_like(span), span)).clamp(0.0, 1.0)
    return torch.where(span == 0, x - lo_t, scaled)
