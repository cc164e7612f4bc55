"""Paired bootstrap comparison of two models scored on the same cases."""
import numpy as np
import pytest

from oct_foundation.metrics.comparison import compare_classifiers, compare_per_case, paired_bootstrap, verdict


def _probs(y, quality, rng, c=3):
    """Class probabilities that put ``quality`` extra mass on the true class."""
    p = rng.dirichlet(np.ones(c), size=len(y))
    p[np.arange(len(y)), y] += quality
    return p / p.sum(1, keepdims=True)


def test_paired_bootstrap_estimate_and_interval_of_a_mean():
    d = np.r_[np.full(30, 1.0), np.full(10, -1.0)]
    r = paired_bootstrap(lambda idx: d[idx].mean(), d.size, n_resamples=500, seed=1)
    assert r["estimate"] == pytest.approx(0.5)
    assert r["ci_low"] < 0.5 < r["ci_high"] and r["ci_low"] > 0.0  # clearly positive
    assert r["n"] == 40 and r["n_resamples"] == 500 and r["n_invalid"] == 0
    assert r["p_positive"] == 1.0


def test_stratified_resamples_keep_every_stratum_size():
    strata = np.r_[np.zeros(3, int), np.ones(17, int)]
    seen = []
    paired_bootstrap(lambda idx: seen.append(np.bincount(strata[idx], minlength=2)) or 0.0, 20, n_resamples=50,
                     strata=strata)
    assert all((c == [3, 17]).all() for c in seen)


def test_compare_classifiers_better_model_and_identical_models():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    good, bad = _probs(y, 1.5, rng), _probs(y, 0.0, rng)
    res = compare_classifiers(y, good, bad, n_resamples=300)
    for m in ("accuracy", "macro_f1", "auroc"):
        assert res[m]["ci_low"] > 0, m
        assert verdict(res[m], "good", "bad").startswith("good better")
    same = compare_classifiers(y, bad, bad, metrics=("auroc",), n_resamples=100)["auroc"]
    assert same["estimate"] == 0.0 and same["ci_low"] == 0.0 and same["ci_high"] == 0.0
    assert verdict(same).startswith("no clear difference")
    # the point estimate is the metric difference on all cases
    from sklearn.metrics import roc_auc_score
    expected = roc_auc_score(y, good, multi_class="ovr") - roc_auc_score(y, bad, multi_class="ovr")
    assert res["auroc"]["estimate"] == pytest.approx(expected)


def test_compare_per_case_drops_nan_pairs_and_reports_worse():
    a = np.array([0.5, 0.6, np.nan, 0.55, 0.52, 0.58])
    b = np.array([0.7, 0.8, 0.9, 0.75, 0.72, np.nan])
    r = compare_per_case(a, b, n_resamples=200)
    assert r["n"] == 4 and r["estimate"] == pytest.approx(np.mean([-0.2, -0.2, -0.2, -0.2]))
    assert verdict(r, "A", "B").startswith("B better")


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap(lambda i: 0.0, 1)
    with pytest.raises(ValueError, match="must both be"):
        compare_classifiers([0, 1], np.ones((2, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="strata"):
        paired_bootstrap(lambda i: 0.0, 3, strata=[0, 1])


def test_fast_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    from oct_foundation.metrics.comparison import _metric

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 50)
    p = _probs(y, 0.4, rng)
    p[:5] = p[5]  # ties
    assert _metric("auroc", y, p, 3) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert _metric("macro_f1", y, p, 3) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert _metric("accuracy", y, p, 3) == pytest.approx((p.argmax(1) == y).mean())
    with pytest.raises(ValueError, match="unknown metric"):
        compare_classifiers(y, p, p, metrics=("kappa",))


def test_a_real_but_tiny_difference_is_called_negligible():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.90, 0.92, size=36)
    r = compare_per_case(a + 0.001, a)  # every case higher by 0.001: the interval excludes 0
    assert r["ci_low"] > 0
    assert verdict(r, "A", "B").startswith("A better")
    assert verdict(r, "A", "B", min_effect=0.01).startswith("negligible difference: A higher by less than 0.01")
    r = compare_per_case(a + 0.05, a)
    assert verdict(r, "A", "B", min_effect=0.01).startswith("A better")
