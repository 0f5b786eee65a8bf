"""Tests for jaxcrl.metrics: semantic checks against independent references.

References used: brute force over all (injective) matchings with ``np.corrcoef`` /
``scipy.stats.spearmanr``; scikit-learn (``KernelRidge``, ``LinearRegression``,
``r2_score``, ``roc_auc_score``); hand-computed small cases. Statistical checks fix
their seeds and state their tolerance.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score, roc_auc_score

from jaxcrl.metrics import (
    align_graph,
    amari_distance,
    dci,
    dci_from_importance,
    edge_auroc,
    graph_metrics,
    kernel_ridge_predict,
    mcc,
    mcc_out_of_sample,
    median_heuristic_gamma,
    r2,
    score_latents,
    shd,
)
from jaxcrl.metrics.regression import LOO_ALPHAS, kernel_ridge_loo_residuals


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _permuted_rescaled_copy(z: np.ndarray, rng: np.random.Generator):
    """z_hat[:, k] = s_k * z[:, q[k]] + b_k with random signs; returns (z_hat, q)."""
    d = z.shape[1]
    q = rng.permutation(d)
    scale = rng.uniform(0.5, 3.0, size=d) * rng.choice([-1.0, 1.0], size=d)
    return z[:, q] * scale + rng.normal(size=d), q


# --------------------------------------------------------------------------------------
# MCC
# --------------------------------------------------------------------------------------


def test_mcc_of_permuted_rescaled_copy_is_one_and_recovers_inverse_permutation():
    rng = _rng(0)
    z = rng.normal(size=(500, 5))
    z_hat, q = _permuted_rescaled_copy(z, rng)
    res = mcc(z, z_hat)
    assert abs(res.value - 1.0) < 1e-6
    # Learned latent k is true latent q[k], so true latent i is learned latent argsort(q)[i].
    np.testing.assert_array_equal(res.perm, np.argsort(q))
    np.testing.assert_allclose(res.matched, 1.0, atol=1e-6)
    assert res.corr.shape == (5, 5)
    assert isinstance(res.value, float)


def test_spearman_mcc_is_one_for_monotone_warp_while_pearson_is_below_one():
    rng = _rng(1)
    z = rng.normal(size=(1000, 3))
    z_hat = np.column_stack([np.exp(z[:, 2]), z[:, 0] ** 3, -np.exp(2 * z[:, 1])])
    spearman = mcc(z, z_hat, method="spearman")
    pearson = mcc(z, z_hat, method="pearson")
    assert abs(spearman.value - 1.0) < 1e-6
    np.testing.assert_array_equal(spearman.perm, [1, 2, 0])
    assert pearson.value < 0.9


def test_out_of_sample_mcc_of_warped_copy_is_one_for_all_split_kinds():
    rng = _rng(2)
    z = rng.normal(size=(800, 4))
    z_hat, q = _permuted_rescaled_copy(z, rng)
    warped = np.exp(z_hat)
    for key in (None, 3, jax.random.key(3)):
        pearson = mcc_out_of_sample(z, z_hat, key=key)
        spearman = mcc_out_of_sample(z, warped, method="spearman", key=key, split=0.3)
        assert abs(pearson.value - 1.0) < 1e-6
        assert abs(spearman.value - 1.0) < 1e-6
        np.testing.assert_array_equal(spearman.perm, np.argsort(q))


def test_out_of_sample_mcc_int_seed_equals_jax_key_and_scores_the_train_matching():
    rng = _rng(3)
    z = rng.normal(size=(300, 3))
    z_hat = z @ rng.normal(size=(3, 3)) + rng.normal(size=(300, 3))
    a = mcc_out_of_sample(z, z_hat, key=7)
    b = mcc_out_of_sample(jnp.asarray(z), jnp.asarray(z_hat), key=jax.random.key(7))
    assert a.value == pytest.approx(b.value, abs=1e-6)  # jax arrays arrive as float32
    np.testing.assert_array_equal(a.perm, b.perm)
    # Independent recomputation: matching from the first half, correlations on the second.
    first = mcc(z[:150], z_hat[:150])
    second = np.abs(np.corrcoef(z[150:], z_hat[150:], rowvar=False)[:3, 3:])
    det = mcc_out_of_sample(z, z_hat)
    np.testing.assert_array_equal(det.perm, first.perm)
    assert det.value == pytest.approx(np.mean(second[np.arange(3), first.perm]), rel=1e-10)


def _brute_force_null_mcc(n: int, d: int, rng: np.random.Generator) -> float:
    """MCC of independent Gaussians by an independent formula: corrcoef + all perms."""
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    c = np.abs(np.corrcoef(x, y, rowvar=False)[:d, d:])
    return max(np.mean(c[np.arange(d), list(p)]) for p in itertools.permutations(range(d)))


def test_mcc_of_independent_noise_matches_simulated_null():
    rng = _rng(4)
    n, d, reps = 1000, 5, 40
    ours = np.array(
        [mcc(rng.normal(size=(n, d)), rng.normal(size=(n, d))).value for _ in range(reps)]
    )
    null = np.array([_brute_force_null_mcc(n, d, rng) for _ in range(reps)])
    # Expected |corr| of one pair is sqrt(2 / (pi n)) = 0.025; matching raises it a bit.
    assert ours.max() < 0.1
    assert ours.mean() > math.sqrt(2 / (math.pi * n))
    se = math.sqrt(ours.var(ddof=1) / reps + null.var(ddof=1) / reps)
    assert abs(ours.mean() - null.mean()) < 4 * se


def test_mcc_of_independent_noise_shrinks_like_one_over_sqrt_n():
    rng = _rng(5)

    def mean_null(n):
        draws = [mcc(rng.normal(size=(n, 4)), rng.normal(size=(n, 4))).value for _ in range(10)]
        return np.mean(draws)

    small, large = mean_null(100), mean_null(10_000)
    # 1/sqrt(n) scaling predicts a ratio of 10; allow sampling slack.
    assert 5 < small / large < 20


def test_in_sample_mcc_of_noise_is_biased_above_out_of_sample_mcc():
    rng = _rng(6)
    ins, oos = [], []
    for _ in range(20):
        z, z_hat = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
        ins.append(mcc(z, z_hat).value)
        oos.append(mcc_out_of_sample(z, z_hat).value)
    assert np.mean(ins) > np.mean(oos) + 0.02


def _brute_force_mcc(corr: np.ndarray) -> float:
    d_true, d_hat = corr.shape
    if d_hat >= d_true:
        perms = itertools.permutations(range(d_hat), d_true)
        cands = (corr[np.arange(d_true), list(p)] for p in perms)
    else:
        perms = itertools.permutations(range(d_true), d_hat)
        cands = (corr[list(p), np.arange(d_hat)] for p in perms)
    return max(float(np.mean(c)) for c in cands)


@pytest.mark.parametrize("d", [2, 3, 4, 5])
@pytest.mark.parametrize("extra", [0, 2, -1])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_mcc_equals_brute_force_max_over_injective_matchings(d, extra, method):
    d_hat = d + extra
    if d_hat < 1:
        pytest.skip("d_hat must be >= 1")
    rng = _rng(100 * d + 10 * extra + (method == "spearman"))
    n = 200
    z = rng.normal(size=(n, d))
    z_hat = z @ rng.normal(size=(d, d_hat)) + rng.normal(size=(n, d_hat))
    if method == "pearson":
        ref_corr = np.abs(np.corrcoef(z, z_hat, rowvar=False)[:d, d:])
    else:
        ref_corr = np.abs(scipy.stats.spearmanr(z, z_hat).statistic[:d, d:])
    res = mcc(z, z_hat, method=method)
    np.testing.assert_allclose(res.corr, ref_corr, rtol=1e-10, atol=1e-12)
    assert res.value == pytest.approx(_brute_force_mcc(ref_corr), rel=1e-10)
    matched_rows = np.flatnonzero(res.perm >= 0)
    assert len(matched_rows) == min(d, d_hat)
    np.testing.assert_allclose(res.matched, ref_corr[matched_rows, res.perm[matched_rows]])


def test_mcc_with_fewer_learned_latents_marks_unmatched_true_latents():
    rng = _rng(7)
    z = rng.normal(size=(400, 4))
    res = mcc(z, np.column_stack([2 * z[:, 3], -z[:, 1]]))
    np.testing.assert_array_equal(res.perm, [-1, 1, -1, 0])
    assert res.corr.shape == (4, 2)
    assert res.matched.shape == (2,)
    assert res.value == pytest.approx(1.0, abs=1e-9)


def test_mcc_with_more_learned_latents_ignores_the_extra_ones():
    rng = _rng(8)
    z = rng.normal(size=(400, 2))
    z_hat = np.column_stack([rng.normal(size=(400, 2)), z[:, 1], z[:, 0] + 1])
    res = mcc(z, z_hat)
    np.testing.assert_array_equal(res.perm, [3, 2])
    assert res.corr.shape == (2, 4)
    assert res.value == pytest.approx(1.0, abs=1e-9)


def test_constant_columns_have_zero_correlation_not_nan():
    rng = _rng(9)
    z = rng.normal(size=(100, 2))
    z_hat = np.column_stack([np.full(100, 0.1), z[:, 0]])
    for method in ("pearson", "spearman"):
        res = mcc(z, z_hat, method=method)
        assert np.all(np.isfinite(res.corr))
        assert res.corr[1, 0] == 0.0
        assert res.value == pytest.approx(0.5, abs=1e-9)


# --------------------------------------------------------------------------------------
# R²
# --------------------------------------------------------------------------------------


def test_linear_r2_of_linear_mixing_is_one():
    rng = _rng(10)
    z = rng.normal(size=(600, 3))
    z_hat = z @ rng.normal(size=(3, 5)) + 4.0  # more learned dims than true ones
    res = r2(z, z_hat)
    assert res.per_latent.shape == (3,)
    np.testing.assert_allclose(res.per_latent, 1.0, atol=1e-9)


def test_kernel_r2_recovers_nonlinear_elementwise_map_where_linear_fails():
    rng = _rng(11)
    z = rng.normal(size=(2000, 3))
    z_hat = np.exp(z[:, [2, 0, 1]])  # strongly nonlinear, invertible, element-wise
    kernel = r2(z, z_hat, "kernel")  # default alpha="loo"
    linear = r2(z, z_hat, "linear")
    assert kernel.mean > 0.95
    assert kernel.alpha.shape == (3,)
    assert linear.mean < 0.7
    assert linear.alpha is None
    assert r2(z, np.tanh(z), "kernel", key=0).mean > 0.95


def test_r2_of_independent_noise_is_near_zero():
    # n = 4000 -> 2000 training points (the max_train cap). Tolerance: |R²| <= 0.05 for
    # the mean and each latent (observed |R²| <= 0.01 here; the held-out R² of a model
    # that shrinks to the mean has spread ~ 1 / sqrt(n_test) ~ 0.02).
    rng = _rng(12)
    z, z_hat = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 4))
    assert abs(r2(z, z_hat).mean) < 0.02
    kernel = r2(z, z_hat, "kernel", key=0)
    assert abs(kernel.mean) < 0.05
    np.testing.assert_array_less(np.abs(kernel.per_latent), 0.05)
    # The failure mode the LOO ridge fixes: a fixed small ridge overfits the noise.
    assert r2(z, z_hat, "kernel", alpha=1e-3).mean < -0.05


def test_kernel_ridge_loo_residuals_equal_brute_force_refits():
    rng = _rng(30)
    n = 40
    x = rng.normal(size=(n, 2))
    y = np.column_stack([np.sin(2 * x[:, 0]) * x[:, 1], rng.normal(size=n)])
    gamma, alphas = 0.7, np.array([1e-4, 1e-2, 1.0, 100.0])
    ours = kernel_ridge_loo_residuals(x, y, gamma=gamma, alphas=alphas)
    assert ours.shape == (4, n, 2)
    brute = np.empty_like(ours)
    for a, alpha in enumerate(alphas):
        for i in range(n):
            keep = np.arange(n) != i
            model = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit(x[keep], y[keep])
            brute[a, i] = y[i] - model.predict(x[i : i + 1])[0]
    np.testing.assert_allclose(ours, brute, rtol=1e-6, atol=1e-9)
    ours_1d = kernel_ridge_loo_residuals(x, y[:, 0], gamma=gamma, alphas=alphas)
    np.testing.assert_allclose(ours_1d, ours[:, :, 0], rtol=1e-12)


def test_loo_selects_larger_alpha_for_noise_than_for_a_smooth_function():
    rng = _rng(31)
    z_hat = rng.normal(size=(1200, 2))
    smooth = np.sin(z_hat[:, 0]) + 0.5 * z_hat[:, 1] ** 2
    z = np.column_stack([smooth, rng.normal(size=1200)])
    res = r2(z, z_hat, "kernel")
    assert res.alpha[1] > res.alpha[0]
    assert res.alpha[0] <= 1e-2 and res.alpha[1] >= 10.0
    assert res.per_latent[0] > 0.99 and abs(res.per_latent[1]) < 0.05
    # The choice is the argmin of the mean squared LOO residual on the training part.
    x_tr = z_hat[:600] - z_hat[:600].mean(0)
    x_tr /= z_hat[:600].std(0)
    loo = kernel_ridge_loo_residuals(
        x_tr, z[:600] - z[:600].mean(0), gamma=median_heuristic_gamma(x_tr)
    )
    np.testing.assert_array_equal(res.alpha, LOO_ALPHAS[np.argmin(np.mean(loo**2, 1), 0)])


def test_kernel_ridge_predictions_equal_sklearn_kernel_ridge():
    rng = _rng(13)
    x_train, x_test = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))
    y = np.sin(x_train @ rng.normal(size=(3, 2))) + 0.1 * rng.normal(size=(200, 2))
    gamma, alpha = 0.3, 1e-3
    ours = kernel_ridge_predict(x_train, y, x_test, gamma=gamma, alpha=alpha, block_size=17)
    ref = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit(x_train, y).predict(x_test)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)
    ours_1d = kernel_ridge_predict(x_train, y[:, 0], x_test, gamma=gamma, alpha=alpha)
    assert ours_1d.shape == (50,)
    np.testing.assert_allclose(ours_1d, ref[:, 0], rtol=1e-5, atol=1e-8)


def test_r2_matches_sklearn_pipelines_on_the_same_split():
    rng = _rng(14)
    z = rng.normal(size=(300, 2))
    z_hat = np.column_stack([np.tanh(z[:, 0] + z[:, 1]), z[:, 1] ** 3, rng.normal(size=300)])
    tr, te = slice(0, 150), slice(150, None)
    lin = LinearRegression().fit(z_hat[tr], z[tr])
    ref_lin = r2_score(z[te], lin.predict(z_hat[te]), multioutput="raw_values")
    np.testing.assert_allclose(r2(z, z_hat).per_latent, ref_lin, rtol=1e-8)
    # Kernel: standardize inputs with train stats, centre targets with the train mean.
    mean, std = z_hat[tr].mean(0), z_hat[tr].std(0)
    x_tr, x_te = (z_hat[tr] - mean) / std, (z_hat[te] - mean) / std
    gamma = median_heuristic_gamma(x_tr)
    krr = KernelRidge(alpha=1e-3, kernel="rbf", gamma=gamma).fit(x_tr, z[tr] - z[tr].mean(0))
    ref_ker = r2_score(z[te], krr.predict(x_te) + z[tr].mean(0), multioutput="raw_values")
    np.testing.assert_allclose(r2(z, z_hat, "kernel", alpha=1e-3).per_latent, ref_ker, rtol=1e-5)
    # alpha="loo": the same pipeline per latent with the selected alpha.
    res = r2(z, z_hat, "kernel")
    for j in range(2):
        krr = KernelRidge(alpha=res.alpha[j], kernel="rbf", gamma=gamma)
        pred = krr.fit(x_tr, z[tr, j] - z[tr, j].mean()).predict(x_te) + z[tr, j].mean()
        assert res.per_latent[j] == pytest.approx(r2_score(z[te, j], pred), rel=1e-5)


def test_median_heuristic_gamma_is_inverse_twice_median_squared_distance():
    x = np.array([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4 -> median 4
    assert median_heuristic_gamma(x) == pytest.approx(1 / 8)


# --------------------------------------------------------------------------------------
# Amari distance
# --------------------------------------------------------------------------------------


def test_amari_distance_is_zero_for_scaled_permutation():
    rng = _rng(15)
    a = rng.normal(size=(4, 4))
    scaled_perm = np.eye(4)[[2, 0, 3, 1]] * np.array([1.5, -0.2, 3.0, -7.0])[:, None]
    w = scaled_perm @ np.linalg.inv(a)
    assert amari_distance(w, a) == pytest.approx(0.0, abs=1e-9)


def test_amari_distance_matches_hand_computed_values():
    # P = [[1, 1], [0, 1]]: rows give (2/1 - 1) + (1/1 - 1) = 1, columns (1 - 1) + (2 - 1) = 1;
    # normalized by 2 d (d - 1) = 4 -> 0.5.
    assert amari_distance(np.eye(2), [[1.0, 1.0], [0.0, 1.0]]) == pytest.approx(0.5)
    assert amari_distance(np.eye(3), np.ones((3, 3))) == pytest.approx(1.0)
    assert amari_distance([[2.0]], [[3.0]]) == 0.0


def test_amari_distance_is_positive_for_random_and_invariant_to_permutation_and_scale():
    rng = _rng(16)
    w, a = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    base = amari_distance(w, a)
    assert 0.05 < base <= 1.0
    assert amari_distance(w[[3, 0, 4, 1, 2]], a[:, [1, 2, 0, 4, 3]]) == pytest.approx(base)
    assert amari_distance(-7.0 * w, a) == pytest.approx(base, rel=1e-12)
    # Row scaling leaves the row term unchanged but not the column term, so the index
    # is not row-scale invariant; a scaled permutation stays at 0 under any scaling.
    rows = np.diag(rng.uniform(0.1, 10, 5))
    assert amari_distance(rows @ w, a) != pytest.approx(base, rel=1e-3)
    assert amari_distance(rows @ np.linalg.inv(a), a) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------------
# DCI
# --------------------------------------------------------------------------------------


def test_dci_of_permuted_rescaled_copy_is_near_one():
    rng = _rng(17)
    z = rng.normal(size=(1000, 4))
    z_hat, _ = _permuted_rescaled_copy(z, rng)
    res = dci(z, z_hat)
    assert res.disentanglement > 0.99
    assert res.completeness > 0.99
    assert res.informativeness > 0.99


def test_dci_of_random_rotation_has_clearly_lower_disentanglement():
    rng = _rng(18)
    z = rng.normal(size=(1000, 4))
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    res = dci(z, z @ rotation)
    assert res.disentanglement < 0.6
    assert res.completeness < 0.6
    assert res.informativeness > 0.99  # a rotation loses no information


def test_dci_with_extra_noise_codes_stays_high():
    rng = _rng(19)
    z = rng.normal(size=(1000, 3))
    z_hat = np.column_stack([z[:, [1, 2, 0]], 0.1 * rng.normal(size=(1000, 2))])
    res = dci(z, z_hat, key=1)
    assert res.disentanglement > 0.9
    assert res.completeness > 0.9


def test_dci_from_importance_hand_cases():
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-12)

    def entropy(p, base):
        return -sum(x * math.log(x, base) for x in p)

    # One factor (d_true = 1): codes are trivially disentangled; completeness is the
    # normalized entropy of (1, 2, 3) / 6 in base 3.
    d, c = dci_from_importance([[1.0], [2.0], [3.0]])
    assert d == pytest.approx(1.0)
    assert c == pytest.approx(1 - entropy([1 / 6, 2 / 6, 3 / 6], 3))
    # One code (d_hat = 1): factors trivially complete.
    d, c = dci_from_importance([[1.0, 2.0]])
    assert c == pytest.approx(1.0)
    assert d == pytest.approx(1 - entropy([1 / 3, 2 / 3], 2))
    # Weighting: a dominant pure code outweighs a weak mixed one.
    d, _ = dci_from_importance([[9.0, 0.0], [0.5, 0.5]])
    assert d == pytest.approx(0.9 * 1.0 + 0.1 * 0.0)


# --------------------------------------------------------------------------------------
# Graph metrics
# --------------------------------------------------------------------------------------

CHAIN = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=float)  # 0 -> 1 -> 2


def test_shd_single_edit_cases_each_cost_one():
    assert shd(CHAIN, CHAIN) == 0
    missing = CHAIN.copy()
    missing[1, 2] = 0
    assert shd(CHAIN, missing) == 1
    extra = CHAIN.copy()
    extra[0, 2] = 1
    assert shd(CHAIN, extra) == 1
    reversed_ = CHAIN.copy()
    reversed_[0, 1], reversed_[1, 0] = 0, 1
    assert shd(CHAIN, reversed_) == 1  # reversed counts once, not twice
    bidirected = CHAIN.copy()
    bidirected[1, 0] = 1
    assert shd(CHAIN, bidirected) == 1
    with_self_loop = CHAIN + np.eye(3)
    assert shd(CHAIN, with_self_loop) == 0  # diagonal ignored


def test_shd_mixed_three_node_example_computed_by_hand():
    # Truth: 0 -> 1, 1 -> 2. Prediction: 1 -> 0 (reversed, 1), no 1 -> 2 (missing, 1),
    # 0 -> 2 (extra, 1). SHD = 3 (a count doubling reversals would give 4).
    pred = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=float)
    assert shd(CHAIN, pred) == 3
    # 4-node: truth 0->1, 2->3, 0->3; prediction 1->0, 0->1 (bidirected: 1), 3->2
    # (reversed: 1), 0->3 kept, 1->2 (extra: 1) -> 3.
    truth = np.zeros((4, 4))
    truth[0, 1] = truth[2, 3] = truth[0, 3] = 1
    pred = np.zeros((4, 4))
    pred[1, 0] = pred[0, 1] = pred[3, 2] = pred[0, 3] = pred[1, 2] = 1
    assert shd(truth, pred) == 3


def test_shd_of_permuted_learned_graph_aligned_with_mcc_perm_is_zero():
    rng = _rng(20)
    d = 5
    g_true = np.triu(rng.uniform(0.5, 2.0, size=(d, d)) * (rng.random((d, d)) < 0.6), k=1)
    z = rng.normal(size=(300, d))
    z_hat, q = _permuted_rescaled_copy(z, rng)
    g_hat = g_true[np.ix_(q, q)]  # learned latent k is true latent q[k]
    perm = mcc(z, z_hat).perm
    np.testing.assert_allclose(align_graph(g_hat, perm), g_true)
    assert shd(g_true, g_hat, perm=perm) == 0
    assert shd(g_true, g_hat) > 0
    assert edge_auroc(g_true, g_hat, perm=perm) == 1.0


def test_align_graph_zeroes_unmatched_true_latents():
    g_hat = np.array([[0.0, 2.0], [3.0, 0.0]])
    out = align_graph(g_hat, np.array([1, -1, 0]))
    np.testing.assert_array_equal(out, [[0, 0, 3], [0, 0, 0], [2, 0, 0]])


def test_shd_threshold_and_edge_count_matched_variants():
    weights = np.array([[0.0, 0.9, 0.05], [0.0, 0.0, 0.4], [0.02, 0.0, 0.0]])
    assert shd(CHAIN, weights) == 2  # nonzeros are edges: extra 0->2 and 2->0 (2 in one pair)
    assert shd(CHAIN, weights, threshold=0.1) == 0
    assert shd(CHAIN, weights, threshold=0.5) == 1  # 1->2 (0.4) dropped
    # Edge-count matched keeps the 2 largest |w| (0.9, 0.4) regardless of threshold.
    assert shd(CHAIN, -weights, match_edge_count=True, threshold=10.0) == 0
    swapped = weights.copy()
    swapped[1, 2], swapped[2, 0] = 0.01, 0.5  # now 2->0 beats 1->2
    # Kept: 0->1, 2->0 -> missing 1->2 and extra 2->0 in different pairs -> 2.
    assert shd(CHAIN, swapped, match_edge_count=True) == 2
    # Zero weights never become edges even when fewer than k are nonzero.
    assert shd(CHAIN, np.zeros((3, 3)), match_edge_count=True) == 2


def test_edge_auroc_perfect_inverted_random_and_undefined():
    rng = _rng(21)
    d = 8
    g_true = (rng.random((d, d)) < 0.3).astype(float)
    np.fill_diagonal(g_true, 0)
    scores = g_true * rng.uniform(1, 2, (d, d)) + (1 - g_true) * rng.uniform(0, 0.9, (d, d))
    assert edge_auroc(g_true, scores) == 1.0
    assert edge_auroc(g_true, 1.0 / (scores + 1e-3)) == 0.0
    random_aucs = [edge_auroc(g_true, rng.normal(size=(d, d))) for _ in range(200)]
    assert abs(np.mean(random_aucs) - 0.5) < 0.03
    assert math.isnan(edge_auroc(np.zeros((d, d)), scores))
    assert math.isnan(edge_auroc(1 - np.eye(d), scores))


def test_edge_auroc_equals_sklearn_roc_auc_with_ties():
    rng = _rng(22)
    d = 10
    off = ~np.eye(d, dtype=bool)
    for _ in range(5):
        g_true = (rng.random((d, d)) < 0.25).astype(float)
        scores = np.round(rng.normal(size=(d, d)), 1)  # rounding creates ties
        ref = roc_auc_score(g_true[off] != 0, np.abs(scores[off]))
        assert edge_auroc(g_true, scores) == pytest.approx(ref, rel=1e-12)


def test_graph_metrics_reports_all_scores():
    weights = np.array([[0.0, 0.9, 0.05], [0.0, 0.0, 0.4], [0.3, 0.0, 0.0]])
    out = graph_metrics(CHAIN, weights, threshold=0.1)
    assert out == {
        "shd": 1,  # extra 2 -> 0
        "shd_matched": 0,
        "edge_auroc": 1.0,
        "n_edges_true": 2,
        "n_edges_pred": 3,
    }


# --------------------------------------------------------------------------------------
# Convenience and input validation
# --------------------------------------------------------------------------------------


def test_score_latents_returns_floats_for_all_scores():
    rng = _rng(23)
    z = rng.normal(size=(3000, 3))
    z_hat, _ = _permuted_rescaled_copy(z, rng)
    scores = score_latents(jnp.asarray(z), np.exp(z_hat / 3), seed=1)
    assert set(scores) == {
        "mcc_pearson",
        "mcc_spearman",
        "mcc_pearson_oos",
        "mcc_spearman_oos",
        "r2_linear",
        "r2_kernel",
    }
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["mcc_spearman"] > 0.999
    assert scores["mcc_spearman_oos"] > 0.999
    assert scores["r2_kernel"] > 0.95


Z = np.random.default_rng(24).normal(size=(20, 3))
Z_NAN = Z.copy()
Z_NAN[3, 1] = np.nan
Z_INF = Z.copy()
Z_INF[0, 0] = np.inf


@pytest.mark.parametrize("fn", [mcc, mcc_out_of_sample, r2, dci, score_latents])
@pytest.mark.parametrize(
    ("z_true", "z_hat", "match"),
    [
        (Z, Z_NAN, r"z_hat .*1 NaN"),
        (Z_INF, Z, r"z_true .*1 inf"),
        (Z, Z[:10], r"same number of samples n.*\(20, 3\).*\(10, 3\)"),
        (Z[:, 0], Z, r"z_true must be 2-D .*\(20,\)"),
        (Z, Z[None], r"z_hat must be 2-D .*\(1, 20, 3\)"),
    ],
)
def test_latent_metrics_reject_bad_input_naming_the_argument(fn, z_true, z_hat, match):
    with pytest.raises(ValueError, match=match):
        fn(z_true, z_hat)


def test_bad_options_raise_value_error_naming_the_argument():
    with pytest.raises(ValueError, match="method"):
        mcc(Z, Z, method="kendall")
    with pytest.raises(ValueError, match="split"):
        mcc_out_of_sample(Z, Z, split=1.0)
    with pytest.raises(ValueError, match="regressor"):
        r2(Z, Z, regressor="forest")
    for bad_alpha in ("gcv", 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha must be 'loo' or a float > 0"):
            r2(Z, Z, "kernel", alpha=bad_alpha)
    with pytest.raises(ValueError, match="alphas must be"):
        kernel_ridge_loo_residuals(Z, Z, gamma=1.0, alphas=[1.0, 0.0])
    with pytest.raises(ValueError, match="w_unmix @ a_mix must be a square"):
        amari_distance(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="g_hat must be a square"):
        shd(CHAIN, np.ones((3, 2)))
    with pytest.raises(ValueError, match="g_true .*NaN"):
        shd(np.full((3, 3), np.nan), CHAIN)
    with pytest.raises(ValueError, match="g_hat .*shape of g_true"):
        shd(CHAIN, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="perm entries"):
        align_graph(CHAIN, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="perm must not match"):
        align_graph(CHAIN, np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="z_true columns \\[1\\] are constant"):
        r2(np.column_stack([Z[:, 0], np.ones(20)]), Z)
