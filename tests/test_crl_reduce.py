"""Choosing the flow's input subspace (``CRLConfig.reduce``): PCA vs the environments' span."""

import jax
import numpy as np
import pytest

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl.svi import env_subspace, make_preprocess
from jaxcrl.metrics import mcc
from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset


def _principal_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the column spans of a and b."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


@pytest.fixture(scope="module")
def nuisance_data():
    """Latents of a 3-node linear SCM (1 observational + 3 interventional environments)
    embedded linearly in D = 32, beside 6 nuisance directions with 30x the latents' standard
    deviation that do not depend on the environment (a residual stream's token identity)."""
    d, dim, k = 3, 32, 6
    ds = make_dataset(jax.random.key(0), DatasetConfig(
        scm=SCMConfig(latent_dim=d), mixing=MixingConfig(kind="linear"), n_per_env=1500))
    z, env = np.asarray(ds.z), np.asarray(ds.env)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(d, dim)) / np.sqrt(dim)
    nuis = rng.normal(size=(k, dim)) / np.sqrt(dim)
    n = 30.0 * z.std() * rng.normal(size=(len(z), k))
    x = z @ emb + n @ nuis + 0.02 * rng.normal(size=(len(z), dim))
    return x.astype(np.float32), z, env, np.asarray(ds.targets), emb


def test_env_subspace_spans_the_environment_mean_differences_when_noiseless():
    # x = A m_e + within-env noise with full-rank covariance S_w: S_b V = S_w V diag(lam),
    # so S_w V lies in the span of the mean differences A (m_e - m_0), whatever S_w is.
    rng = np.random.default_rng(1)
    dim, d, e = 10, 3, 4
    a = rng.normal(size=(dim, d))
    m = rng.normal(size=(e, d)) * 3
    env = np.repeat(np.arange(e), 500)
    chol = rng.normal(size=(dim, dim))
    x = m[env] @ a.T + rng.normal(size=(len(env), dim)) @ chol.T
    v = np.asarray(env_subspace(x, env, e, d, shrink=0.0))
    means = np.stack([x[env == i].mean(0) for i in range(e)])
    xc = x - np.stack([means[i] for i in env])
    sw = xc.T @ xc / len(x)
    cos = _principal_cosines(sw @ v, (means[1:] - means[0]).T)
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    # and the basis is S_w-orthonormal
    np.testing.assert_allclose(v.T @ sw @ v, np.eye(d), atol=2e-2)  # float32


def test_env_preprocess_outputs_whitened_latent_subspace_and_pca_outputs_nuisance(
        nuisance_data):
    x, z, env, _, _ = nuisance_data
    pre_env = make_preprocess(x, 3, True, env, reduce="envs", n_envs=4)
    pre_pca = make_preprocess(x, 3, True)
    xe, xp = np.asarray(pre_env(x)), np.asarray(pre_pca(x))
    np.testing.assert_allclose(np.cov(xe, rowvar=False), np.eye(3), atol=1e-3)
    # the latents are a linear function of the env projection, not of the PCA one
    r2 = [1 - np.linalg.lstsq(np.c_[p, np.ones(len(p))], z, rcond=None)[1].sum()
          / ((z - z.mean(0)) ** 2).sum() for p in (xe, xp)]
    assert r2[0] > 0.9 and r2[1] < 0.2, r2  # measured 0.943 and 0.0006


def test_latent_scm_with_env_reduction_recovers_latents_that_pca_misses(nuisance_data):
    x, z, env, targets, _ = nuisance_data
    scores = {}
    for reduce in ("envs", "pca"):
        cfg = CRLConfig(latent_dim=3, n_envs=4, steps=800, batch_size=512, lr=1e-2,
                        warmup=50, flow_layers=1, restarts=1, reduce=reduce)
        r = fit(cfg, x, env, targets=targets, key=jax.random.key(0), progress=False)
        scores[reduce] = mcc(z, np.asarray(r.encode(x))[0]).value
    assert scores["envs"] > 0.9 and scores["pca"] < 0.5, scores  # measured 0.948, 0.016


@pytest.mark.parametrize("kw, match", [
    (dict(reduce="lda"), "reduce must be one of"),
    (dict(reduce="envs", n_envs=3, latent_dim=3), "needs n_envs > latent_dim"),
    (dict(reduce="envs", method="beta_vae"), "method='latent_scm'"),
    (dict(flow_layers=-1), "flow_layers must be >= 0"),
])
def test_bad_reduce_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        CRLConfig(**kw)


def test_pca_default_is_unchanged(nuisance_data):
    # the default preprocessing is the whitened top-d variance directions, as before
    x = nuisance_data[0]
    assert CRLConfig().reduce == "pca"
    pre = make_preprocess(x, 3, True)
    cov = np.cov(x, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    top = evecs[:, ::-1][:, :3]
    np.testing.assert_allclose(_principal_cosines(np.asarray(pre.proj), top), 1.0, atol=1e-3)
