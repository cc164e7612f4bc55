import math

import numpy as np
import pytest
import torch

from oct_foundation.metrics import effective_rank


def _zero_mean_orthonormal(n, e, seed=0):
    """[n, e] with orthonormal, zero-mean columns: QR of [ones, random] without the first column."""
    g = torch.Generator().manual_seed(seed)
    a = torch.cat([torch.ones(n, 1, dtype=torch.float64), torch.randn(n, e, generator=g, dtype=torch.float64)], 1)
    q, _ = torch.linalg.qr(a)
    return q[:, 1:]


def _rotation(e, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(e, e, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("method", ["participation", "rankme"])
def test_rank_one_is_one(method):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50, 1, generator=g)
    v = torch.randn(1, 16, generator=g)
    x = u @ v + 3.0  # rank 1 after centring (the offset is a constant row)
    assert effective_rank(x, method) == pytest.approx(1.0, abs=1e-3)


def test_equal_variance_orthonormal_columns_give_e():
    x = _zero_mean_orthonormal(64, 12)
    assert torch.allclose(x.T @ x, torch.eye(12, dtype=torch.float64), atol=1e-12)
    assert effective_rank(x, "participation") == pytest.approx(12.0, rel=1e-12)
    assert effective_rank(x, "rankme") == pytest.approx(12.0, rel=1e-4)
    # uncentred: the columns are already zero-mean, same answer
    assert effective_rank(x, "participation", center=False) == pytest.approx(12.0, rel=1e-12)


@pytest.mark.parametrize("method", ["participation", "rankme"])
def test_invariant_to_rotation_of_feature_space(method):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 10, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2.0, 10, dtype=torch.float64)
    r = effective_rank(x, method)
    assert 1.0 < r < 10.0
    assert effective_rank(x @ _rotation(10), method) == pytest.approx(r, rel=1e-9)


def test_hand_computed_spectrum():
    # X = U diag(3, 1) V^T with orthonormal zero-mean U [n, 2] and orthonormal V [e, 2]: singular values (3, 1)
    u = _zero_mean_orthonormal(30, 2, seed=5)
    v = _rotation(6, seed=6)[:, :2]
    x = u @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ v.T
    assert effective_rank(x, "participation") == pytest.approx((9 + 1) ** 2 / (81 + 1), rel=1e-10)
    p = np.array([0.75, 0.25])
    assert effective_rank(x, "rankme") == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    # the same matrix plus a constant offset: centring removes it, no centring does not
    shifted = x + 5.0
    assert effective_rank(shifted, "participation") == pytest.approx(100 / 82, rel=1e-10)
    assert effective_rank(shifted, "participation", center=False) != pytest.approx(100 / 82, rel=1e-3)


def test_numpy_torch_and_batched_inputs_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 40, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    for method in ("participation", "rankme"):
        a = effective_rank(x, method)
        b = effective_rank(torch.from_numpy(x), method)
        c = effective_rank(x.reshape(80, 8), method)
        assert a == pytest.approx(b, rel=1e-12) and a == pytest.approx(c, rel=1e-12)


def test_bad_input():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="method"):
        effective_rank(x, "entropy")
    with pytest.raises(ValueError, match="at least 2 rows"):
        effective_rank(x[:1])
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        effective_rank(torch.randn(10))
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    assert effective_rank(torch.ones(5, 3)) == 1.0  # no variance at all
