"""The one home of ridge, R², Hungarian matching and kernel ridge, against sklearn/scipy."""

import itertools

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score as sk_r2_score

from jaxcrl.metrics.regression import (
    LOO_ALPHAS,
    fit_ridge,
    hungarian_match,
    kernel_ridge_loo_predict,
    kernel_ridge_loo_residuals,
    predict_linear,
    r2_score,
)


def _data(n=200, d=6, m=3, seed=0):
    rng = np.random.default_rng(seed)
    # features on very different scales, so standardisation matters
    x = rng.normal(size=(n, d)) * np.logspace(-2, 2, d) + rng.normal(size=d)
    w = rng.normal(size=(d, m))
    y = x @ w + rng.normal(size=(n, m)) + 3.0
    return x, y


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 2.0])
def test_fit_ridge_standardized_equals_sklearn_ridge_on_scaled_features(alpha):
    x, y = _data()
    n = len(x)
    ours = fit_ridge(x, y, alpha=alpha)
    # the convention: sklearn's Ridge(alpha * n) on features scaled to unit variance
    mu, sd = x.mean(0), x.std(0)
    ref = Ridge(alpha=alpha * n).fit((x - mu) / sd, y)
    np.testing.assert_allclose(predict_linear(ours, x), ref.predict((x - mu) / sd),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.w * sd[:, None], ref.coef_.T, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("alpha", [1e-3, 0.5])
def test_fit_ridge_raw_uses_one_common_scale(alpha):
    x, y = _data(seed=1)
    n = len(x)
    ours = fit_ridge(x, y, alpha=alpha, standardize=False)
    s2 = np.mean(x.var(0))  # the mean feature variance
    ref = Ridge(alpha=alpha * n * s2).fit(x, y)
    np.testing.assert_allclose(ours.w, ref.coef_.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.b, ref.intercept_, rtol=1e-8)
    # scale-free: rescaling every feature by one factor rescales w inversely, same fit
    big = fit_ridge(1e3 * x, y, alpha=alpha, standardize=False)
    np.testing.assert_allclose(big.w * 1e3, ours.w, rtol=1e-7)


def test_fit_ridge_alpha_zero_is_least_squares_and_1d_targets():
    x, y = _data(seed=2)
    ours = fit_ridge(x, y[:, 0], alpha=0.0)
    assert ours.w.shape == (x.shape[1],) and np.ndim(ours.b) == 0
    design = np.column_stack([np.ones(len(x)), x])
    ref = np.linalg.lstsq(design, y[:, 0], rcond=None)[0]
    np.testing.assert_allclose(ours.w, ref[1:], rtol=1e-8)
    np.testing.assert_allclose(ours.b, ref[0], rtol=1e-8)


def test_fit_ridge_constant_feature_gets_zero_weight_and_errors_name_the_argument():
    x, y = _data(seed=3)
    x[:, 2] = 5.0
    fit = fit_ridge(x, y)
    assert np.all(fit.w[2] == 0.0) and np.all(np.isfinite(fit.w))
    with pytest.raises(ValueError, match="alpha must be"):
        fit_ridge(x, y, alpha=-1.0)
    with pytest.raises(ValueError, match="y must have n=200 rows"):
        fit_ridge(x, y[:-1])
    with pytest.raises(ValueError, match="x must be 2-D"):
        fit_ridge(x[:, 0], y)
    with pytest.raises(ValueError, match="x must have d=6 columns"):
        predict_linear(fit, x[:, :3])


def test_r2_score_matches_sklearn_and_groups_pool_columns():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(100, 6))
    pred = y + rng.normal(size=(100, 6)) * np.linspace(0.1, 2.0, 6)
    np.testing.assert_allclose(r2_score(y, pred),
                               sk_r2_score(y, pred, multioutput="raw_values"), rtol=1e-12)
    grouped = r2_score(y, pred, groups=2)
    for g in range(2):
        cols = slice(3 * g, 3 * g + 3)
        sse = ((y[:, cols] - pred[:, cols]) ** 2).sum()
        sst = ((y[:, cols] - y[:, cols].mean(0)) ** 2).sum()
        assert grouped[g] == pytest.approx(1 - sse / sst, rel=1e-12)
    y[:, 4] = 1.0
    with pytest.raises(ValueError, match=r"z columns \[4\] are constant"):
        r2_score(y, pred, name="z")
    with pytest.raises(ValueError, match="groups must divide"):
        r2_score(y, pred, groups=4)


def test_hungarian_match_is_the_best_permutation_by_brute_force():
    rng = np.random.default_rng(5)
    for a, b in ((4, 4), (3, 5), (5, 3)):
        w = rng.uniform(size=(a, b))
        rows, cols, perm = hungarian_match(w)
        k = min(a, b)
        if a <= b:
            brute = max(sum(w[i, p[i]] for i in range(a))
                        for p in itertools.permutations(range(b), a))
        else:
            brute = max(sum(w[p[j], j] for j in range(b))
                        for p in itertools.permutations(range(a), b))
        assert w[rows, cols].sum() == pytest.approx(brute)
        assert len(rows) == k and (perm >= 0).sum() == k
        assert np.all(perm[rows] == cols)


def test_kernel_ridge_loo_predict_picks_the_loo_best_ridge_and_equals_sklearn():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(80, 2))
    y = np.column_stack([np.sin(2 * x[:, 0]), rng.normal(size=80)])
    x_test = rng.normal(size=(30, 2))
    pred, best = kernel_ridge_loo_predict(x, y, x_test, gamma=0.5)
    loo = np.mean(kernel_ridge_loo_residuals(x, y, gamma=0.5) ** 2, axis=1)  # [A, k]
    np.testing.assert_array_equal(best, LOO_ALPHAS[np.argmin(loo, axis=0)])
    assert best[1] > best[0]  # pure noise is shrunk harder than a smooth signal
    for j in range(2):
        ref = KernelRidge(alpha=best[j], kernel="rbf", gamma=0.5).fit(x, y[:, j])
        np.testing.assert_allclose(pred[:, j], ref.predict(x_test), rtol=1e-6, atol=1e-8)
