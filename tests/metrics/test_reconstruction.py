"""Reconstruction metrics against hand-computed values and scikit-image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from oct_foundation.metrics.reconstruction import mse, psnr, reconstruction_metrics, ssim, summarise_reconstruction


def test_mse_and_psnr_hand_computed():
    ref = np.zeros((1, 2, 4, 4))
    rec = ref.copy()
    rec[0, 0, 0, :2] = 0.5  # two voxels off by 0.5 among 32
    assert mse(rec, ref) == pytest.approx(2 * 0.25 / 32)
    assert psnr(rec, ref, data_range=1.0) == pytest.approx(-10 * math.log10(2 * 0.25 / 32))
    assert psnr(rec, ref, data_range=2.0) == pytest.approx(20 * math.log10(2) - 10 * math.log10(2 * 0.25 / 32))
    assert math.isinf(psnr(ref, ref))
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 20, 20)), rng.random((6, 20, 20))
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1.0), rel=1e-9)


def test_ssim_matches_skimage_per_bscan():
    rng = np.random.default_rng(1)
    ref = rng.random((2, 5, 32, 40))
    rec = np.clip(ref + 0.1 * rng.standard_normal(ref.shape), 0, 1)
    expected = np.mean([
        structural_similarity(rec[c, d], ref[c, d], data_range=1.0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, win_size=11)
        for c in range(2) for d in range(5)
    ])
    assert ssim(torch.from_numpy(rec), torch.from_numpy(ref)) == pytest.approx(expected, abs=1e-6)
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert ssim(rec, ref) < 0.99


def test_per_input_and_summary():
    rng = np.random.default_rng(2)
    ref = rng.random((4, 16, 16))
    rows = [dict(reconstruction_metrics(np.clip(ref + s * rng.standard_normal(ref.shape), 0, 1), ref), id=str(i))
            for i, s in enumerate([0.05, 0.1, 0.2])]
    assert rows[0]["psnr"] > rows[1]["psnr"] > rows[2]["psnr"] and rows[0]["ssim"] > rows[2]["ssim"]
    rows.append({"id": "bad", "status": "error", "mse": "", "psnr": "", "ssim": ""})
    rows.append({"id": "csv", "mse": "0.5", "psnr": "inf", "ssim": "0.25"})
    summary = summarise_reconstruction(rows)
    mses = [r["mse"] for r in rows[:3]] + [0.5]
    assert summary["mse"]["n"] == 4 and summary["mse"]["mean"] == pytest.approx(np.mean(mses))
    assert summary["mse"]["std"] == pytest.approx(np.std(mses, ddof=1))
    assert summary["psnr"]["n"] == 3  # inf and empty values are left out
    assert summary["ssim"]["median"] == pytest.approx(np.median([r["ssim"] for r in rows[:3]] + [0.25]))


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        mse(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="at least 3 x 3"):
        ssim(np.zeros((2, 2, 8)), np.zeros((2, 2, 8)))
