"""Intervention strength: per-target KL terms against the closed-form Gaussian KL."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.scm import (
    DatasetConfig,
    Intervention,
    SCMConfig,
    analytic_covariance,
    analytic_mean,
    init_scm,
    make_dataset,
)
from jaxcrl.scm.strength import dataset_intervention_kl, intervention_kl


def _mvn_kl(m1, s1, m0, s0):
    """KL(N(m1, s1) || N(m0, s0)) of multivariate normals, in float64."""
    m1, s1, m0, s0 = (np.asarray(a, np.float64) for a in (m1, s1, m0, s0))
    inv = np.linalg.inv(s0)
    dm = m0 - m1
    return 0.5 * (np.trace(inv @ s1) + dm @ inv @ dm - len(m1)
                  + np.linalg.slogdet(s0)[1] - np.linalg.slogdet(s1)[1])


@pytest.mark.parametrize("kind", ["perfect", "soft"])
def test_intervention_kl_sums_to_the_closed_form_kl_of_the_linear_gaussian_scm(kind):
    params = init_scm(jax.random.key(3), SCMConfig(latent_dim=5, graph=dataclasses.replace(
        SCMConfig().graph, edge_prob=0.7)))
    assert float(params.adj.sum()) >= 4  # targets below have parents
    order = np.argsort(np.asarray(params.adj).sum(0))  # a root first, then nodes with parents
    for targets in ([order[-1]], [order[0]], [order[1], order[-1]]):
        mask = np.zeros(5, bool)
        mask[targets] = True
        iv = Intervention.make(jnp.asarray(mask), new_mean=jnp.array([0.7, -1.2, 0.3, 1.5, -0.4]),
                               new_scale=jnp.array([0.6, 1.3, 0.8, 1.1, 0.9]),
                               weight_factor=jnp.array([0.5, -0.4, 0.6, 0.3, 0.7]))
        fwd, rev = intervention_kl(params, iv, jax.random.key(1), 200_000, kind=kind)
        m0, c0 = analytic_mean(params), analytic_covariance(params)
        me, ce = analytic_mean(params, iv, kind=kind), analytic_covariance(params, iv, kind=kind)
        np.testing.assert_allclose(float(fwd.sum()), _mvn_kl(me, ce, m0, c0), rtol=0.02, atol=1e-4)
        np.testing.assert_allclose(float(rev.sum()), _mvn_kl(m0, c0, me, ce), rtol=0.02, atol=1e-4)
        assert np.all(np.asarray(fwd)[~mask] == 0) and np.all(np.asarray(rev)[~mask] == 0)
        assert np.all(np.asarray(fwd)[mask] > 0)


def test_a_root_intervened_with_its_own_noise_distribution_has_zero_strength():
    params = init_scm(jax.random.key(0), SCMConfig(latent_dim=4))
    root = int(np.flatnonzero(np.asarray(params.adj).sum(0) == 0)[0])
    mask = jnp.arange(4) == root
    null = Intervention.make(mask, new_mean=0.0, new_scale=params.noise_scale[root])
    fwd, rev = intervention_kl(params, null, jax.random.key(0), 1000)
    assert float(fwd.sum()) == pytest.approx(0.0, abs=1e-6)
    assert float(rev.sum()) == pytest.approx(0.0, abs=1e-6)
    shifted = Intervention.make(mask, new_mean=2.0, new_scale=params.noise_scale[root])
    fwd, _ = intervention_kl(params, shifted, jax.random.key(0), 1000)
    # a mean shift of 2 at the same scale sigma: KL = 2^2 / (2 sigma^2)
    assert float(fwd.sum()) == pytest.approx(2.0 / float(params.noise_scale[root]) ** 2, rel=1e-5)


def test_nonlinear_strength_equals_the_mean_log_density_ratio_of_the_joint():
    """Second route: the mean of log p_e(z) - log p_0(z) over samples of p_e, every node's
    conditional written out (non-targets cancel only in expectation here)."""
    from jaxcrl.scm.mechanisms import _mechanism, sample_scm

    params = init_scm(jax.random.key(2), SCMConfig(latent_dim=4, mechanism="location_scale"))
    child = int(np.argmax(np.asarray(params.adj).sum(0)))
    iv = Intervention.make(jnp.arange(4) == child, new_mean=0.5, new_scale=0.7)
    fwd, _ = intervention_kl(params, iv, jax.random.key(5), 100_000)
    z = sample_scm(params, jax.random.key(9), 100_000, iv)
    loc, scale = _mechanism(params, z)
    loc_e = jnp.where(iv.targets, iv.new_mean, loc)
    scale_e = jnp.where(iv.targets, iv.new_scale, scale)

    def logp(m, s):
        return jnp.sum(-jnp.log(s) - 0.5 * ((z - m) / s) ** 2, -1)

    ratio = np.asarray(logp(loc_e, scale_e) - logp(loc, scale), np.float64)
    se = ratio.std() / np.sqrt(len(ratio))
    assert abs(float(fwd.sum()) - ratio.mean()) < 4 * se + 1e-3


def test_dataset_intervention_kl_covers_every_environment_and_only_its_targets():
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=3), n_per_env=50)
    ds = make_dataset(jax.random.key(4), cfg)
    fwd, rev = dataset_intervention_kl(ds, jax.random.key(0), 2000)
    assert fwd.shape == rev.shape == ds.targets.shape
    tg = np.asarray(ds.targets)
    assert np.all(np.asarray(fwd)[~tg] == 0) and np.all(np.asarray(fwd)[tg] > 0)
    e = 1 + int(np.argmax(tg[1:].any(1)))
    one, _ = intervention_kl(ds.scm, jax.tree.map(lambda a: a[e], ds.interventions),
                             jax.random.fold_in(jax.random.key(0), e), 2000)
    np.testing.assert_allclose(np.asarray(fwd[e]), np.asarray(one), rtol=1e-6)
    batched = jax.vmap(lambda k: make_dataset(k, cfg))(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="one data set"):
        dataset_intervention_kl(batched, jax.random.key(0), 10)


def test_intervention_kl_refuses_non_gaussian_noise_and_bad_shapes():
    params = init_scm(jax.random.key(0), SCMConfig(latent_dim=3, noise="laplace"))
    iv = Intervention.make(jnp.array([True, False, False]))
    with pytest.raises(ValueError, match="Gaussian noise"):
        intervention_kl(params, iv, jax.random.key(0), 10)
    params = init_scm(jax.random.key(0), SCMConfig(latent_dim=3))
    with pytest.raises(ValueError, match="intervention.targets"):
        intervention_kl(params, Intervention.make(jnp.array([True, False])), jax.random.key(0), 10)
    with pytest.raises(ValueError, match="intervention kind"):
        intervention_kl(params, iv, jax.random.key(0), 10, kind="hard")


def test_a_fits_own_strength_estimates_the_true_one_and_flags_a_null_intervention():
    """KL between environments is invariant under the invertible mixing, so a fit whose
    density is good estimates each latent's true strength from x alone; a root intervened
    with its own noise distribution must come out near 0."""
    from jaxcrl.crl import CRLConfig, fit
    from jaxcrl.scm import MixingConfig, apply_mixing, sample_scm

    d, n = 3, 3000
    ds = make_dataset(jax.random.key(1), DatasetConfig(
        scm=SCMConfig(latent_dim=d), mixing=MixingConfig(n_layers=2), n_per_env=10))
    root = int(np.flatnonzero(np.asarray(ds.adj).sum(0) == 0)[0])
    ivs, zs = [Intervention.observational(d)], []
    for j in range(d):
        mask = jnp.arange(d) == j
        ivs.append(Intervention.make(mask, new_mean=0.0, new_scale=ds.scm.noise_scale[root])
                   if j == root else Intervention.make(mask, new_mean=2.0, new_scale=0.5))
    for e, iv in enumerate(ivs):
        zs.append(sample_scm(ds.scm, jax.random.fold_in(jax.random.key(2), e), n, iv))
    z = jnp.concatenate(zs)
    x, env = apply_mixing(ds.mixing, z), jnp.repeat(jnp.arange(d + 1), n)
    targets = jnp.concatenate([jnp.zeros((1, d), bool), jnp.eye(d, dtype=bool)])
    truth = np.array([sum(float(a.sum()) for a in intervention_kl(
        ds.scm, iv, jax.random.key(3), 100_000)) for iv in ivs[1:]])
    assert truth[root] < 1e-6 and np.all(np.delete(truth, root) > 1.0)

    cfg = CRLConfig(latent_dim=d, n_envs=d + 1, steps=1500, batch_size=512, lr=1e-2,
                    warmup=50, flow_layers=2, restarts=1)
    result = fit(cfg, x, env, targets=targets, key=jax.random.key(0), progress=False)
    per_env, per_latent = result.intervention_strength(x, env, targets)
    assert per_env.shape == (1, d + 1) and per_latent.shape == (1, d)
    assert per_env[0, 0] == 0.0
    np.testing.assert_allclose(per_latent[0], per_env[0, 1:])  # one target per environment
    # The scan over chunks of samples (7 does not divide N; padding must not count) gives
    # what one chunk of all N samples gives.
    n_all = x.shape[0]
    for chunk in (7, n_all):
        np.testing.assert_allclose(
            result.intervention_strength(x, env, targets, chunk=chunk)[0], per_env,
            rtol=1e-4, atol=1e-5)
    assert per_latent[0, root] < 0.1, (per_latent, truth)
    others = np.delete(np.arange(d), root)
    np.testing.assert_allclose(per_latent[0, others], truth[others], rtol=0.3)
    with pytest.raises(ValueError, match="needs targets"):
        result.intervention_strength(x, env)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        result.intervention_strength(x, env, targets, chunk=0)
