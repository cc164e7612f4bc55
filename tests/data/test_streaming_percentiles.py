"""Streamed percentile scaling equals MONAI's percentile scaling of the whole volume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from oct_foundation.data.transforms import MAISI_PERCENTILES, StreamingPercentiles, scale_to_unit


@pytest.mark.parametrize("dtype,high", [(np.uint8, 255), (np.uint16, 4000)])
def test_streamed_percentiles_match_the_whole_volume(dtype, high):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, high, size=(3, 9, 16, 20)).astype(dtype)  # [C, T, H, W]
    vol[1] = 7  # a constant channel: MONAI's rule (x - lo) applies
    ref = ScaleIntensityRangePercentiles(*MAISI_PERCENTILES, b_min=0.0, b_max=1.0, clip=True,
                                         channel_wise=True)(torch.from_numpy(vol.astype(np.float32)))
    stats = StreamingPercentiles()
    for t in range(vol.shape[1]):
        stats.update(vol[:, t])
    lo, hi = stats.range(*MAISI_PERCENTILES)
    got = scale_to_unit(torch.from_numpy(vol.astype(np.float32))[None], lo, hi)[0]
    assert torch.allclose(torch.as_tensor(ref), got, atol=1e-6)


def test_too_many_distinct_values_is_not_exact():
    stats = StreamingPercentiles(max_distinct=100)
    stats.update(np.random.default_rng(0).random((1, 16, 16)))
    assert not stats.exact
    with pytest.raises(ValueError, match="distinct values"):
        stats.range(0.5, 99.5)
