"""Contrastive CRL and likelihood target assignment: the logits are the exact Gaussian
log-density ratios (scipy), the assignment is the exact maximum (brute force)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from test_crl_prior import TARGETS, E, _analytic, _params

from jaxcrl.crl import CRLConfig, fit
from jaxcrl.crl import prior as P
from jaxcrl.crl.targets import assign_targets, brute_force_assignment
from jaxcrl.metrics import mcc

D = 3


@pytest.mark.parametrize("soft", [False, True])
def test_contrastive_logit_differences_are_the_gaussian_log_density_ratios(soft):
    z = jax.random.normal(jax.random.key(5), (40, D)) * 1.5
    logits = np.asarray(P.env_log_probs(_params(), z, targets=jnp.asarray(TARGETS), soft=soft))
    dens = [multivariate_normal(*_analytic(e, soft)).logpdf(np.asarray(z)) for e in range(E)]
    ratios = np.stack([d - dens[0] for d in dens], 1)
    np.testing.assert_allclose(logits - logits[:, :1], ratios, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("known", [True, False])
def test_env_log_probs_columns_equal_log_prob_per_environment(known):
    p = _params(target_logits=jax.random.normal(jax.random.key(1), (E, D)))
    z = jax.random.normal(jax.random.key(2), (20, D))
    t = jnp.asarray(TARGETS) if known else None
    all_envs = P.env_log_probs(p, z, targets=t)
    for e in range(E):
        np.testing.assert_allclose(all_envs[:, e], P.log_prob(p, z, jnp.full(20, e), targets=t),
                                   rtol=1e-5, atol=1e-5)


def test_likelihood_assignment_recovers_shuffled_targets_on_an_exact_model():
    """Samples drawn from the model itself, environments relabelled: the likelihood
    assignment recovers the true targets, and the Hungarian solution equals the
    brute-force maximum over all permutations."""
    rng = np.random.default_rng(0)
    old_env = np.repeat(np.arange(E), 400)
    z = np.concatenate([rng.multivariate_normal(*_analytic(e, False), 400) for e in range(E)])
    perm = np.array([0, 3, 1, 2])  # data of environment e is now labelled perm[e]
    inv = np.argsort(perm)
    p = _params()
    p = dataclasses.replace(p, int_mean=p.int_mean[inv], int_log_scale=p.int_log_scale[inv])
    scores = P.target_scores(p, jnp.asarray(z, jnp.float32), jnp.asarray(perm[old_env]))
    est = assign_targets(scores)
    np.testing.assert_array_equal(est, TARGETS[inv])
    np.testing.assert_array_equal(est, brute_force_assignment(scores))


def test_assignment_is_the_exact_maximum_on_random_scores():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = rng.normal(size=(5, 4))
        s[0] = 0
        np.testing.assert_array_equal(assign_targets(s), brute_force_assignment(s))
    with pytest.raises(ValueError, match="at most d"):
        assign_targets(np.zeros((6, 4)))


def test_tiny_contrastive_fit_beats_a_random_encoder_and_assigns_targets():
    """D = 6 > d = 2 (injective mixing), unknown targets: a few hundred steps give latents
    well above a random encoder's MCC, and the likelihood assignment finds the targets."""
    from jaxcrl.crl.nets import MLP
    from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset

    cfg = DatasetConfig(scm=SCMConfig(latent_dim=2),
                        mixing=MixingConfig(kind="injective", n_layers=2, obs_dim=6),
                        n_per_env=1500)
    ds = make_dataset(jax.random.key(0), cfg)
    crl = CRLConfig(method="contrastive", latent_dim=2, n_envs=3, targets="unknown",
                    steps=600, batch_size=512, lr=3e-3, warmup=20, hidden=(32, 32),
                    restarts=1, penalty_max=1.0, recon=1.0)
    trained = fit(crl, ds.x, ds.env, key=jax.random.key(0), progress=False)
    z = np.asarray(ds.z)
    x_std = (ds.x - ds.x.mean(0)) / ds.x.std(0)
    net = MLP((32, 32), 2)
    random_z = net.apply(net.init(jax.random.key(3), x_std[:1]), x_std)
    baseline = mcc(z, np.asarray(random_z)).value
    after = mcc(z, np.asarray(trained.encode(ds.x)[0]))
    assert after.value > 0.85 and after.value > baseline + 0.1, (baseline, after.value)
    t_hat = trained.assign_targets(ds.x, ds.env)[0][:, after.perm]
    np.testing.assert_array_equal(t_hat, np.asarray(ds.targets))


def test_contrastive_rejects_unbalanced_environments_before_compiling():
    x = np.zeros((300, 4), np.float32)
    env = np.array([0] * 200 + [1] * 50 + [2] * 50)
    with pytest.raises(ValueError, match="equal samples per environment"):
        fit(CRLConfig(method="contrastive", latent_dim=2, n_envs=3, targets="unknown",
                      batch_size=64), x, env, key=jax.random.key(0), progress=False)


def test_restarts_are_chosen_by_heldout_loss():
    from jaxcrl.scm import DatasetConfig, MixingConfig, SCMConfig, make_dataset

    ds = make_dataset(jax.random.key(1), DatasetConfig(
        scm=SCMConfig(latent_dim=2), mixing=MixingConfig(n_layers=1), n_per_env=300))
    cfg = CRLConfig(latent_dim=2, n_envs=3, steps=30, batch_size=128, flow_layers=1,
                    restarts=3, holdout=0.2)
    r = fit(cfg, ds.x, ds.env, targets=ds.targets, key=jax.random.key(0), seeds=2,
            progress=False)
    held = r.history["heldout_loss"].reshape(2, 3)
    assert np.all(np.isfinite(held))
    np.testing.assert_array_equal(r.history["restart_chosen"], held.argmin(1))


def test_jarque_bera_equals_scipy_per_environment_and_pools_gaussian_environments():
    from scipy.stats import jarque_bera as scipy_jb

    from jaxcrl.crl.models import jarque_bera

    rng = np.random.default_rng(3)
    one = rng.gamma(2.0, size=(4000, 1))  # skewed: a large statistic
    got = float(jarque_bera(jnp.asarray(one), jnp.ones((4000, 1)))) * 4000
    assert got == pytest.approx(scipy_jb(one[:, 0]).statistic, rel=1e-3)
    # Three environments of Gaussians with their own means and scales: each standardized
    # in its environment, so the pool is Gaussian; a fold |z - c| in one latent is not.
    env = np.repeat(np.arange(3), 4000)
    z = rng.normal(size=(12000, 2)) * np.array([1.0, 5.0, 0.3])[env, None] + 4.0 * env[:, None]
    onehot = jax.nn.one_hot(env, 3)
    gauss = float(jarque_bera(jnp.asarray(z, jnp.float32), onehot)) * len(z)
    assert gauss < 20.0  # chi-squared, 4 degrees of freedom: P(> 20) ~ 5e-4
    folded = z.copy()
    folded[:, 1] = np.abs(folded[:, 1] - 4.0 * env + 0.2)
    assert float(jarque_bera(jnp.asarray(folded, jnp.float32), onehot)) * len(z) > 1000.0


def test_gauss_moments_enters_the_contrastive_objective_as_the_jarque_bera_term():
    from numpyro.handlers import seed, trace

    from jaxcrl.crl.models import contrastive_model, jarque_bera

    x = jax.random.normal(jax.random.key(0), (64, 5))
    env = jnp.arange(64) % 3
    base = CRLConfig(method="contrastive", latent_dim=2, n_envs=3, hidden=(8,), targets="known")
    targets = jnp.asarray([[0, 0], [1, 0], [0, 1]], bool)

    def factor_and_z(cfg):
        tr = trace(seed(contrastive_model, jax.random.key(1))).get_trace(
            x, env, targets, 0.0, cfg=cfg, n_total=640)
        return float(tr["log_likelihood"]["fn"].log_factor), tr

    plain, tr = factor_and_z(base)
    with_term, _ = factor_and_z(dataclasses.replace(base, gauss_moments=0.5))
    enc = tr["encoder$params"]["value"]
    from jaxcrl.crl.models import contrastive_encoder

    z = contrastive_encoder(base).apply({"params": enc}, x)
    expected = 0.5 * 640 * float(jarque_bera(z, jax.nn.one_hot(env, 3)))
    assert plain - with_term == pytest.approx(expected, rel=1e-4)
    assert expected > 0
    with pytest.raises(ValueError, match="gauss_moments"):
        dataclasses.replace(base, gauss_moments=-1.0)
