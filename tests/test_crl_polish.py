"""The linear polish (:mod:`jaxcrl.crl.polish`, ``CRLConfig.polish``): its likelihood, that
it undoes a linear leak without ground truth, its closed-form SCM, and a polished fit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl import prior as prior_lib
from jaxcrl.crl.models import flow_encoder
from jaxcrl.crl.polish import env_moments, linear_polish, order_nll, polish_fit, scm_mle
from jaxcrl.crl.svi import load_fit
from jaxcrl.metrics import mcc
from jaxcrl.scm import DatasetConfig, SCMConfig, make_dataset
from jaxcrl.scm.graphs import topological_order


def _linear_data(d: int, n_per_env: int, seed: int = 0):
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=d), n_per_env=n_per_env)
    data = make_dataset(jax.random.key(seed), cfg)
    return (np.asarray(data.z, np.float64), np.asarray(data.env),
            np.asarray(data.targets, bool), data)


def test_polish_likelihood_is_the_per_sample_gaussian_scm_log_density():
    """The moment-based profile likelihood of ``z A^T`` equals the sum over samples of the
    Gaussian log densities with each mechanism fitted by numpy least squares (an independent
    route: per-sample residuals and scipy's normal log density), plus ``N log|det A|``."""
    z, env, targets, _ = _linear_data(3, 500)
    a = np.eye(3) + 0.3 * np.random.default_rng(1).normal(size=(3, 3))
    order = [2, 0, 1]
    sums, counts = env_moments(z, env, targets.shape[0])
    with jax.enable_x64(True):
        nll = float(order_nll(sums, counts, targets, order)(a))
    zp = z @ a.T
    total = len(z) * np.linalg.slogdet(a)[1]
    for k, j in enumerate(order):
        keep = ~targets[env, j]
        xs = np.concatenate([np.ones((keep.sum(), 1)), zp[keep][:, order[:k]]], 1)
        coef = np.linalg.lstsq(xs, zp[keep, j], rcond=None)[0]
        resid = zp[keep, j] - xs @ coef
        total += stats.norm.logpdf(resid, scale=resid.std()).sum()
        for e in np.flatnonzero(targets[:, j]):
            v = zp[env == e, j]
            total += stats.norm.logpdf(v, v.mean(), v.std()).sum()
    np.testing.assert_allclose(nll, -total / len(z), rtol=1e-9)


def test_polish_undoes_a_linear_leak_between_true_latents():
    """True latents leaked into one another (``z (I + 0.2 G)``): the fitted map restores
    them (MCC 0.9998 against 0.93 leaked) without ground truth, latent j still true latent j,
    and the likelihood rose. (From a gross leak, ``0.3 G`` here with MCC 0.79, the
    alternation settles in a wrong order: the map corrects small leaks, it is no search.)"""
    z, env, targets, _ = _linear_data(4, 4000)
    zs = (z - z.mean(0)) / z.std(0)
    leaked = zs @ (np.eye(4) + 0.2 * np.random.default_rng(0).normal(size=(4, 4)))
    assert mcc(z, leaked).value < 0.97
    pol = linear_polish(leaked, env, targets)
    got = mcc(z, pol(leaked))
    assert got.value > 0.999
    np.testing.assert_array_equal(got.perm, np.arange(4))
    assert pol.history[0]["nll"] < pol.history[0]["nll_start"] - 0.01


def test_polish_rejects_nan_latents_and_targets_it_cannot_use():
    z, env, targets, _ = _linear_data(3, 200)
    with pytest.raises(ValueError, match="non-finite"):
        linear_polish(np.where(env[:, None] == 1, np.nan, z), env, targets)
    with pytest.raises(ValueError, match="never intervened: \\[2\\]"):
        linear_polish(z, env, targets & (np.arange(3) != 2))
    with pytest.raises(ValueError, match="env must be"):
        linear_polish(z, env[:-1], targets)


def test_scm_mle_is_the_prior_maximum_the_profile_likelihood_reports():
    """The closed-form SCM of :func:`scm_mle`, written into the library's linear prior and
    evaluated by :func:`jaxcrl.crl.prior.log_prob` on the shifted latents, gives exactly
    the profile likelihood of :func:`order_nll` at ``A = I``; on the true latents in the
    true order its weights are the simulator's."""
    z, env, targets, data = _linear_data(3, 20000)
    order = [int(i) for i in np.asarray(topological_order(data.scm.adj))]
    mle = scm_mle(z, env, targets, order)
    params = prior_lib.init_prior(jax.random.key(0), 3, targets.shape[0])
    params = dataclasses.replace(params, **{
        k: jnp.asarray(mle[k], jnp.float32) for k in ("w", "log_scale", "int_mean",
                                                      "int_log_scale")})
    with jax.enable_x64(True):
        sums, counts = env_moments(z, env, targets.shape[0])
        want = float(order_nll(sums, counts, targets, order)(np.eye(3)))
    lp = prior_lib.log_prob(params, jnp.asarray(z - mle["shift"], jnp.float32),
                            jnp.asarray(env), targets=jnp.asarray(targets, jnp.float32))
    np.testing.assert_allclose(-float(jnp.mean(lp)), want, rtol=1e-5)
    np.testing.assert_allclose(mle["w"], np.asarray(data.scm.weights), atol=0.03)
    np.testing.assert_allclose(np.exp(mle["log_scale"]), np.asarray(data.scm.noise_scale),
                               rtol=0.03)
    assert np.abs(data.scm.adj).sum() > 0  # some edge to recover


CFG = CRLConfig(latent_dim=3, n_envs=4, steps=60, batch_size=128, warmup=5, flow_layers=1,
                flow_terms=2, flow_linear="dense", restarts=2, polish=True)


@pytest.fixture(scope="module")
def polished():
    _, _, _, data = _linear_data(3, 600, seed=2)
    key = jax.random.key(4)
    raw = fit(dataclasses.replace(CFG, polish=False), data.x, data.env,
              targets=data.targets, key=key, seeds=2, progress=False)
    always = polish_fit(raw, data.x, data.env, data.targets, keep="always")
    return data, raw, always


def test_polished_fit_encodes_the_polish_of_the_raw_fit(polished, tmp_path):
    """Each run's latents are the raw fit's mapped by :func:`linear_polish` and shifted by
    :func:`scm_mle` (the map folded into the encoder's last layer); the saved fit loads
    with them."""
    data, raw, pol = polished
    z_raw, z_pol = np.asarray(raw.encode(data.x)), np.asarray(pol.encode(data.x))
    for r in range(2):
        lp = linear_polish(z_raw[r], data.env, data.targets)
        mle = scm_mle(lp(z_raw[r]), np.asarray(data.env), np.asarray(data.targets), lp.order)
        np.testing.assert_allclose(z_pol[r], lp(z_raw[r]) - mle["shift"], atol=2e-4)
        assert pol.history["polish"][r] == lp.history
    pol.save(tmp_path / "ck")
    np.testing.assert_array_equal(np.asarray(load_fit(tmp_path / "ck").encode(data.x)), z_pol)


def test_polished_fit_is_a_consistent_model_of_the_data(polished):
    """The polished encoder and refitted prior are one model: its exact log-likelihood of
    ``x`` (the library's prior density plus the polished flow's log-determinant, computed
    here by hand) is what the polish's last round reports (its profile NLL, moved to ``x``
    by the raw encoder's log-determinant and the standardization), and what
    ``history["polish_loglik"]`` records, per run."""
    data, raw, pol = polished
    net = flow_encoder(pol.cfg)
    for r in range(2):
        p = jax.tree.map(lambda v, r=r: v[r], pol.params)
        pre = jax.tree.map(lambda v, r=r: v[r], pol.preprocess)
        z, logdet_pol = net.apply({"params": p["encoder$params"]}, pre(data.x))
        lp = prior_lib.log_prob(p["prior"], z, data.env,
                                targets=jnp.asarray(data.targets, jnp.float32))
        p_raw = jax.tree.map(lambda v, r=r: v[r], raw.params)
        z_raw, logdet_raw = net.apply({"params": p_raw["encoder$params"]}, pre(data.x))
        # z'' = (z - mean) / std @ A^T - shift, and the profile NLL (per sample) is that of
        # z_std = (z - mean) / std, log|det A| included: log p(x) = -nll - sum(log std)
        # + the raw encoder's log-determinant.
        lp_polish = -pol.history["polish"][r][-1]["nll"] - np.log(
            np.asarray(z_raw).std(0)).sum()
        got = float(jnp.mean(lp + logdet_pol))
        np.testing.assert_allclose(got, lp_polish + float(jnp.mean(logdet_raw)), atol=2e-3)
        np.testing.assert_allclose(pol.history["polish_loglik"][r, 1], got, atol=1e-4)


def test_config_polish_keeps_a_runs_polish_only_where_the_likelihood_does_not_fall(
        polished):
    """``CRLConfig.polish`` at the end of ``fit`` (same keys, so the same training): a run
    whose polished log-likelihood is at least the fit's is the polished run, any other run
    is the raw fit's, unchanged."""
    data, raw, always = polished
    pol = fit(CFG, data.x, data.env, targets=data.targets, key=jax.random.key(4), seeds=2,
              progress=False)
    ll = pol.history["polish_loglik"]
    np.testing.assert_allclose(ll, always.history["polish_loglik"], rtol=1e-6)
    np.testing.assert_array_equal(pol.history["polish_kept"], ll[:, 1] >= ll[:, 0])
    z, z_raw, z_always = (np.asarray(f.encode(data.x)) for f in (pol, raw, always))
    for r in range(2):
        want = z_always[r] if pol.history["polish_kept"][r] else z_raw[r]
        np.testing.assert_allclose(z[r], want, atol=1e-5)
    assert pol.history["polish_wall_s"] > 0
    with pytest.raises(ValueError, match="keep must be"):
        polish_fit(raw, data.x, data.env, data.targets, keep="sometimes")


def test_a_run_whose_polish_lowers_the_likelihood_keeps_the_raw_fit(polished, monkeypatch):
    """The other branch of the rule (short test fits always gain): with the likelihoods
    forced so that run 1's polish lowers it, run 0 is the polished run and run 1 the raw
    fit's, every parameter unchanged."""
    from jaxcrl.crl import polish as polish_mod

    data, raw, always = polished
    calls = []

    def fake_loglik(result, x, env, targets):
        calls.append(result)
        return np.array([0.0, 0.0]) if len(calls) == 1 else np.array([1.0, -1.0])

    monkeypatch.setattr(polish_mod, "loglik", fake_loglik)
    pol = polish_fit(raw, data.x, data.env, data.targets)
    np.testing.assert_array_equal(pol.history["polish_kept"], [True, False])
    for new, old, pol_leaf in zip(jax.tree.leaves(pol.params), jax.tree.leaves(raw.params),
                                  jax.tree.leaves(always.params), strict=True):
        np.testing.assert_array_equal(np.asarray(new)[1], np.asarray(old)[1])
        np.testing.assert_allclose(np.asarray(new)[0], np.asarray(pol_leaf)[0], rtol=1e-6)


def test_polish_config_needs_the_linear_known_perfect_dense_setting():
    with pytest.raises(ValueError, match="polish needs"):
        dataclasses.replace(CFG, flow_linear="lu")
    with pytest.raises(ValueError, match="polish needs"):
        dataclasses.replace(CFG, scm="flow")
    with pytest.raises(ValueError, match="polish_fit needs"):
        polish_fit(type("R", (), {"cfg": dataclasses.replace(CFG, polish=False,
                                                              flow_linear="lu")})(),
                   None, None, None)
