"""ClassificationNet's feature standardisation (fit_feature_scaler): statistics, state_dict, head input."""
import pytest
import torch

from oct_foundation.networks.heads import ClassificationNet

ENC = dict(in_chans=1, img_size=(4, 16, 16), patch_size=8, tubelet_size=2, embed_dim=16, depth=1, num_heads=2)


def _loader(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(2, 1, 4, 16, 16, generator=g) * 3.0} for _ in range(n // 2)]


def test_fit_sets_training_statistics_and_standardises_the_head_input():
    torch.manual_seed(0)
    net = ClassificationNet(num_classes=3, freeze=True, **ENC)
    loader = _loader()
    x = torch.cat([b["image"] for b in loader])
    raw = net.pooled(x).detach()
    torch.testing.assert_close(net.features(x), raw)  # identity before fitting
    info = net.fit_feature_scaler(loader)
    assert info["n"] == 6 and info["mean_std"] > 0
    z = net.features(x).detach()
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(16), atol=1e-4, rtol=0)
    # the statistics travel with the state_dict
    other = ClassificationNet(num_classes=3, freeze=True, **ENC)
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other.feature_std, net.feature_std)
    assert net.training  # mode restored


def test_fit_rejects_too_little_data():
    net = ClassificationNet(num_classes=2, freeze=True, **ENC)
    with pytest.raises(ValueError, match="no batch"):
        net.fit_feature_scaler([])
    with pytest.raises(ValueError, match="at least 2"):
        net.fit_feature_scaler([{"image": torch.rand(1, 1, 4, 16, 16)}])
