import numpy as np
import pytest
import torch

from oct_foundation.metrics import extract_features, knn_predict, knn_top1, linear_cka, linear_probe


def test_knn_hand_example_dino_vs_majority():
    # test point at angle 0; neighbours: one class-0 point very close, two class-1 points further away
    train = torch.tensor([[1.0, 0.05], [1.0, 0.9], [1.0, -0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    test = torch.tensor([[1.0, 0.0]])
    # majority among k=3: class 1 (2 votes vs 1)
    assert knn_predict(train, labels, test, k=3, weighting="majority").tolist() == [1]
    # DINO weights exp(sim/T) with a small T: the nearest point dominates
    assert knn_predict(train, labels, test, k=3, temperature=0.01, weighting="dino").tolist() == [0]
    # with a large temperature the weights are almost equal -> majority again
    assert knn_predict(train, labels, test, k=3, temperature=100.0, weighting="dino").tolist() == [1]
    # cosine: scale does not matter
    assert knn_predict(train * 5, labels, test * 0.1, k=1).tolist() == [0]


def test_knn_top1_on_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    ytr, yte = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
    xtr = centres[ytr] + rng.normal(size=(90, 16))
    xte = centres[yte] + rng.normal(size=(30, 16))
    assert knn_top1(xtr, ytr, xte, yte, k=5) == 1.0
    shuffled = knn_top1(xtr, rng.permutation(ytr), xte, yte, k=5)
    assert shuffled < 0.8
    with pytest.raises(ValueError):
        knn_predict(xtr, ytr, xte, weighting="mean")


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x.double() @ q) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0)  # centring
    y = torch.randn(50, 12, generator=g)
    v = linear_cka(x, y)
    assert 0.0 < v < 0.6
    assert v == pytest.approx(linear_cka(y, x))
    # reference formula on centred data with numpy
    xc = x.numpy() - x.numpy().mean(0)
    yc = y.numpy() - y.numpy().mean(0)
    ref = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert v == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError):
        linear_cka(x, y[:10])


def test_linear_probe_separable_and_extract_features():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8,))
    x = rng.normal(size=(300, 8))
    x = x[np.abs(x @ w) > 0.5][:120]  # linearly separable with a margin
    y = (x @ w > 0).astype(int)
    out = linear_probe(x[:80], y[:80], x[80:], y[80:], c=100.0)
    assert out["accuracy"] >= 0.95
    assert out["probabilities"].shape == (40, 2)

    class Enc(torch.nn.Module):
        def forward(self, img):  # [B, 1, D, H, W] -> tokens [B, 2, 3]
            return img.flatten(2)[:, :, :6].reshape(img.shape[0], 2, 3)

    batches = [{"image": torch.arange(2 * 8, dtype=torch.float32).reshape(2, 1, 2, 2, 2), "class": torch.tensor([0, 1])}]
    f = extract_features(Enc(), batches, keys=("class",))
    assert f["features"].shape == (2, 3) and f["class"] == [0, 1]
    assert f["features"][0].tolist() == pytest.approx([1.5, 2.5, 3.5])
