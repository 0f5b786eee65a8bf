"""The nonlinear exact DAG search (random-feature regressions) on mechanisms a linear score
cannot see, and its agreement with the linear search where both are right."""

import itertools
import math

import jax
import numpy as np
import pytest
from scipy.optimize import minimize

from jaxcrl.crl.config import CRLConfig
from jaxcrl.crl.discovery import _location_scale_loglik, exact_dag_search, nonlinear_dag_search


def _chain(n=3000, seed=0):
    """z0 -> z1 -> z2 with z1 = z0² - 1 + noise (no linear trace of z0 in z1 when z0 is
    observed) and z2 = 2 tanh(2 z1) + noise; env 0 observational, env j+1 intervenes on j."""
    rng = np.random.default_rng(seed)
    zs, envs = [], []
    for e in range(4):
        z0 = rng.normal(size=n) if e != 1 else rng.normal(0.5, 0.5, size=n)
        z1 = z0 ** 2 - 1 + 0.3 * rng.normal(size=n) if e != 2 else rng.normal(size=n)
        z2 = 2 * np.tanh(2 * z1) + 0.3 * rng.normal(size=n) if e != 3 else rng.normal(size=n)
        zs.append(np.stack([z0, z1, z2], 1))
        envs.append(np.full(n, e))
    targets = np.zeros((4, 3), bool)
    targets[1, 0] = targets[2, 1] = targets[3, 2] = True
    return np.concatenate(zs), np.concatenate(envs), targets


def test_a_quadratic_edge_is_found_and_oriented_by_the_nonlinear_search():
    z, env, t = _chain()
    eff, score = nonlinear_dag_search(z, env, t, key=jax.random.key(0))
    adj = eff > 0.05
    assert adj.tolist() == [[False, True, False], [False, False, True], [False] * 3], eff
    assert eff[0, 1] > 0.8 and eff[1, 2] > 0.8, eff  # noise 0.3 against a unit-scale signal
    assert np.isfinite(score)
    # the linear view of the same edge, where z0 is observed: almost no correlation
    obs = env == 0
    assert abs(np.corrcoef(z[obs, 0], z[obs, 1])[0, 1]) < 0.1
    w_lin, _ = exact_dag_search(z, env, t)  # ... and the linear search misses the edge
    assert w_lin[0, 1] == 0 and w_lin[1, 0] == 0, w_lin


def test_effects_are_partial_r2_of_explicit_regressions():
    """Independent route: refit the chosen parents' features by least squares on the
    explicit design matrix (same features: one parent set each, same key split)."""
    z, env, t = _chain(n=800, seed=1)
    key = jax.random.key(3)
    eff, _ = nonlinear_dag_search(z, env, t, key=key, n_features=8, noise="homoscedastic")
    zs = (z - z.mean(0)) / z.std(0)
    subsets = [s for k in range(3) for s in itertools.combinations(range(3), k)]
    keys = dict(zip(subsets, jax.random.split(key, len(subsets)), strict=True))

    def rss(j, s):
        keep = ~t[env, j]
        cols = [np.ones((keep.sum(), 1))]
        if s:
            ka, kb = jax.random.split(keys[s])
            a = np.asarray(jax.random.normal(ka, (len(s), 8))) * 1.5 / math.sqrt(len(s))
            b = np.asarray(jax.random.uniform(kb, (8,), minval=-2.0, maxval=2.0))
            cols += [zs[keep][:, s], np.tanh(zs[keep][:, s] @ a + b)]
        x = np.concatenate(cols, 1)
        y = zs[keep, j]
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        return ((y - x @ coef) ** 2).sum()

    for i, j in zip(*np.nonzero(eff), strict=True):
        parents = tuple(int(p) for p in np.nonzero(eff[:, j])[0])
        rest = tuple(p for p in parents if p != i)
        want = 1 - rss(j, parents) / rss(j, rest)
        assert eff[i, j] == pytest.approx(want, abs=1e-6), (i, j)


def test_on_linear_gaussian_data_both_searches_agree():
    rng = np.random.default_rng(2)
    n, d = 2000, 4
    w = np.zeros((d, d))
    w[0, 1], w[1, 2], w[0, 3], w[2, 3] = 1.0, -0.8, 0.7, 0.9
    targets = np.vstack([np.zeros(d, bool), np.eye(d, dtype=bool)])
    zs, envs = [], []
    for e, tg in enumerate(targets):
        z = np.zeros((n, d))
        for j in range(d):
            z[:, j] = rng.normal(size=n) if tg[j] else z @ w[:, j] + rng.normal(size=n)
        zs.append(z)
        envs.append(np.full(n, e))
    z, env = np.concatenate(zs), np.concatenate(envs)
    eff, _ = nonlinear_dag_search(z, env, targets, key=jax.random.key(0))
    w_lin, _ = exact_dag_search(z, env, targets)
    assert ((eff > 0.05) == (w != 0)).all(), eff
    assert ((w_lin != 0) == (w != 0)).all(), w_lin


def _scale_chain(n=3000, seed=0):
    """z0 -> z1 through the spread only: z1 = exp(0.8 z0) eps, so E[z1 | z0] = 0 and z0
    leaves no trace in any regression of z1's mean; env 1 intervenes on z0, env 2 on z1."""
    rng = np.random.default_rng(seed)
    zs, envs = [], []
    for e in range(3):
        z0 = rng.normal(size=n) if e != 1 else rng.normal(1.0, 0.5, size=n)
        z1 = np.exp(0.8 * z0) * rng.normal(size=n) if e != 2 else rng.normal(size=n)
        zs.append(np.stack([z0, z1], 1))
        envs.append(np.full(n, e))
    return np.concatenate(zs), np.concatenate(envs), np.array([[0, 0], [1, 0], [0, 1]], bool)


def test_an_edge_acting_only_on_the_spread_is_found_by_the_location_scale_score():
    z, env, t = _scale_chain()
    eff, _ = nonlinear_dag_search(z, env, t, key=jax.random.key(0))
    assert (eff > 0.05).tolist() == [[False, True], [False, False]], eff
    homo, _ = nonlinear_dag_search(z, env, t, key=jax.random.key(0), noise="homoscedastic")
    # the additive-noise score cannot see the edge's direction: z0's mean does depend on
    # |z1|, so it keeps the reversed edge
    assert homo[0, 1] < 0.05 and homo[1, 0] > 0.05, homo


def test_location_scale_likelihood_matches_a_direct_optimizer():
    """Independent route: maximize the same Gaussian location-scale likelihood over
    (beta, gamma) with scipy's BFGS from zero."""
    rng = np.random.default_rng(4)
    n = 600
    u = rng.normal(size=n)
    x = np.stack([np.ones(n), u, np.tanh(1.5 * u - 0.5)], 1)
    y = np.sin(2 * u) + np.exp(0.4 * u - 0.3 * x[:, 2]) * rng.normal(size=n)

    def nll(p):
        mean, log_var = x @ p[:3], x @ p[3:]
        return 0.5 * np.sum(np.log(2 * np.pi) + log_var + (y - mean) ** 2 * np.exp(-log_var))

    ref = -minimize(nll, np.zeros(6), method="BFGS", options={"gtol": 1e-8}).fun
    assert _location_scale_loglik(x, y) == pytest.approx(ref, abs=1e-3)
    # and it is above the homoscedastic fit by the scale's evidence
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    homo = -0.5 * n * (np.log(2 * np.pi * np.mean((y - x @ coef) ** 2)) + 1)
    assert ref > homo + 10


def test_bad_input_is_refused_by_name():
    z, env, t = _chain(n=50)
    with pytest.raises(ValueError, match="non-finite"):
        nonlinear_dag_search(np.where(z > 2, np.nan, z), env, t, key=jax.random.key(0))
    with pytest.raises(ValueError, match="targets"):
        nonlinear_dag_search(z, env, t[:, :2], key=jax.random.key(0))
    with pytest.raises(ValueError, match="noise"):
        nonlinear_dag_search(z, env, t, key=jax.random.key(0), noise="laplace")
    with pytest.raises(ValueError, match="graph_search"):
        CRLConfig(graph_search="kernel")
    with pytest.raises(ValueError, match="effect_threshold"):
        CRLConfig(effect_threshold=1.5)
