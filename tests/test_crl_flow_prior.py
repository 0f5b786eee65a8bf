"""The flow prior is a normalized density for any W (checked by quadrature), reduces to the
hand-written Gaussian SCM density when its flows are the identity, and its causal order is
the one the interventions imply."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_experiment
from scipy.stats import norm

from jaxcrl.crl import CRLConfig, fit, load_fit
from jaxcrl.crl import flow_prior as F
from jaxcrl.metrics import mcc
from jaxcrl.scm import DatasetConfig, InterventionConfig, MixingConfig, SCMConfig, make_dataset

TARGETS2 = jnp.array([[0, 0], [1, 0], [0, 1]], bool)
env_log_probs = jax.jit(F.env_log_probs, static_argnames="soft")


def _wild_params(d=2, e=3, key=0):
    """Random, far-from-identity parameters with a 2-cycle in W."""
    p = F.init_flow_prior(jax.random.key(key), d, e, hidden=8, terms=3)
    k = jax.random.split(jax.random.key(key + 1), 4)
    w = jnp.array([[0.0, 1.3], [-0.9, 0.0]]) if d == 2 else p.w
    return dataclasses.replace(
        p, w=w, log_scale=jnp.linspace(-0.3, 0.3, d),
        scale_w2=jax.random.normal(k[0], p.scale_w2.shape),
        noise=dataclasses.replace(p.noise, amp=jax.random.normal(k[1], p.noise.amp.shape)),
        int_noise=dataclasses.replace(p.int_noise,
                                      amp=jax.random.normal(k[2], p.int_noise.amp.shape)),
        int_mean=jax.random.normal(k[3], (e, d)), int_factor=jnp.full((e, d), -0.6),
        int_log_scale=jnp.full((e, d), 0.2))


def _grid(lim=14.0, n=561):
    g = jnp.linspace(-lim, lim, n)
    zz = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return zz, float(g[1] - g[0])


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("pos", [(0, 1), (1, 0)])
def test_density_integrates_to_one_for_a_cyclic_w_in_every_environment(pos, soft):
    """2-d quadrature of exp(log p_e) over a wide grid: 1 for each environment and either
    order, although W holds a 2-cycle (a penalty-free likelihood could not cheat on it)."""
    p = _wild_params()
    zz, dz = _grid()
    lp = env_log_probs(p, zz, jnp.array(pos), targets=TARGETS2, soft=soft)  # [n, E]
    mass = np.asarray(jnp.exp(lp).sum(0) * dz * dz)
    np.testing.assert_allclose(mass, 1.0, atol=2e-3)


def test_identity_flows_give_the_hand_written_gaussian_scm_density():
    """Zero MLPs and amplitudes -inf: z_j | pa ~ N((z W∘M)_j, s_j), written with scipy."""
    d, e = 3, 4
    p = F.init_flow_prior(jax.random.key(0), d, e, hidden=4, terms=2)
    off = lambda f: dataclasses.replace(f, amp=jnp.full(f.amp.shape, -jnp.inf))
    w = np.array([[0.0, 1.5, -0.7], [0.4, 0.0, 0.8], [2.0, 0.3, 0.0]], np.float32)  # cyclic
    p = dataclasses.replace(p, w=jnp.asarray(w), log_scale=jnp.log(jnp.array([1.0, 0.5, 2.0])),
                            loc_w2=jnp.zeros_like(p.loc_w2), scale_w2=jnp.zeros_like(p.scale_w2),
                            noise=off(p.noise), int_noise=off(p.int_noise),
                            int_mean=jnp.full((e, d), 0.5), int_log_scale=jnp.full((e, d), -0.2),
                            int_factor=jnp.full((e, d), 0.3))
    pos = np.array([2, 0, 1])  # order: node 1, node 2, node 0
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    z = np.asarray(jax.random.normal(jax.random.key(1), (40, d)) * 1.5)
    m = (pos[:, None] < pos[None, :]).astype(np.float32)
    loc, sd = z @ (w * m), np.array([1.0, 0.5, 2.0])
    for soft in (False, True):
        got = np.asarray(env_log_probs(p, jnp.asarray(z), jnp.asarray(pos), targets=targets,
                                         soft=soft))
        for env in range(e):
            want = np.zeros(len(z))
            for j in range(d):
                if np.asarray(targets)[env, j]:
                    mu = 0.3 * loc[:, j] + 0.5 if soft else 0.5
                    s = sd[j] * np.exp(-0.2) if soft else np.exp(-0.2)
                    want += norm(mu, s).logpdf(z[:, j])
                else:
                    want += norm(loc[:, j], sd[j]).logpdf(z[:, j])
            np.testing.assert_allclose(got[:, env], want, rtol=1e-5, atol=1e-4)


def test_weights_against_the_order_do_not_change_the_density():
    p = _wild_params(d=2)
    z = jax.random.normal(jax.random.key(2), (30, 2))
    env = jnp.arange(30) % 3
    pos = jnp.array([0, 1])  # 0 before 1: W[1, 0] is against the order
    a = F.log_prob(p, z, env, pos, targets=TARGETS2)
    b = F.log_prob(dataclasses.replace(p, w=p.w.at[1, 0].set(7.0)), z, env, pos,
                   targets=TARGETS2)
    c = F.log_prob(dataclasses.replace(p, w=p.w.at[0, 1].set(7.0)), z, env, pos,
                   targets=TARGETS2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a - c)).max() > 1e-2


@pytest.mark.parametrize("soft", [False, True])
def test_training_log_prob_is_every_environment_density_at_the_samples_own(soft):
    """The loss's log_prob (own environment only, parameters picked by one-hot matmuls)
    equals env_log_probs (every environment) read at each sample's environment, with
    a two-node target set among the environments."""
    d, e = 3, 4
    p = _wild_params(d=d, e=e, key=3)
    p = dataclasses.replace(p, w=jax.random.normal(jax.random.key(5), (d, d)))  # cyclic
    z = jax.random.normal(jax.random.key(4), (50, d)) * 1.5
    env = jnp.arange(50) % e
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], bool)
    pos = jnp.array([1, 2, 0])
    got = F.log_prob(p, z, env, pos, targets=targets, soft=soft)
    want = env_log_probs(p, z, pos, targets=targets, soft=soft)[jnp.arange(50), env]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_gated_pre_activations_equal_the_mlps_on_explicitly_gated_parents():
    """pre[n, j, k] = sum_i (z[n, i] W[i, j]) w1[j, i, k], written as loops in numpy."""
    from jaxcrl.crl.prior import gated_pre_activations
    rng = np.random.default_rng(0)
    n, d, h = 7, 4, 3
    z, w, w1 = (rng.normal(size=s).astype(np.float32) for s in ((n, d), (d, d), (d, d, h)))
    want = np.zeros((n, d, h), np.float32)
    for j in range(d):
        gated = z * w[:, j]  # node j's parents, gated by W[:, j]
        want[:, j] = gated @ w1[j]
    np.testing.assert_allclose(gated_pre_activations(jnp.asarray(z), jnp.asarray(w),
                                                     jnp.asarray(w1)), want, rtol=1e-5,
                               atol=1e-5)


def test_noise_flow_is_strictly_increasing_and_its_log_derivative_is_exact():
    p = _wild_params()
    e = jnp.linspace(-6, 6, 2001)
    h, logdet = F.noise_flow(jax.tree.map(lambda a: a[0], p.noise), e)
    assert np.all(np.diff(np.asarray(h)) > 0)
    fd = np.gradient(np.asarray(h), np.asarray(e))
    np.testing.assert_allclose(np.exp(np.asarray(logdet))[1:-1], fd[1:-1], rtol=1e-3)


def test_implied_order_of_the_true_latents_is_topological(mechanism="location_scale",
                                                         kind="soft"):
    """Descendant counts in the closure of 'intervening on j moves i' order the true DAG."""
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=5, mechanism=mechanism),
                        intervention=InterventionConfig(kind=kind), n_per_env=3000)
    ds = jax.jit(jax.vmap(lambda k: make_dataset(k, cfg)))(jax.random.split(jax.random.key(0), 4))
    order = jax.jit(jax.vmap(F.implied_order))(ds.z, ds.env, ds.targets)
    ok = []
    for pos, adj in zip(np.asarray(order), np.asarray(ds.adj), strict=True):
        assert sorted(pos.tolist()) == list(range(5))
        ok.append(all(pos[i] < pos[j] for i, j in zip(*np.nonzero(adj), strict=True)))
    assert sum(ok) >= 3, ok


def test_flow_prior_fit_recovers_small_latents_and_reloads(tmp_path):
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=2, mechanism="nonlinear"),
                        mixing=MixingConfig(n_layers=2), n_per_env=1000)
    ds = make_dataset(jax.random.key(0), cfg)
    c = CRLConfig(latent_dim=2, n_envs=3, scm="flow", steps=400, batch_size=256, warmup=50,
                  flow_layers=2, flow_terms=2, restarts=1, scm_hidden=4)
    result = fit(c, ds.x, ds.env, targets=ds.targets, key=jax.random.key(0), progress=False)
    z_hat = np.asarray(result.encode(ds.x))[0]
    got = mcc(np.asarray(ds.z), z_hat).value
    assert got > 0.8 and got > mcc(np.asarray(ds.z), np.asarray(ds.x)).value + 0.05
    loss = result.history["loss"]
    assert loss[-100:].mean() < loss[:10].mean() - 0.5
    result.save(tmp_path / "ck")
    again = load_fit(tmp_path / "ck")
    np.testing.assert_array_equal(np.asarray(again.encode(ds.x)), np.asarray(result.encode(ds.x)))


@pytest.mark.parametrize("kw,match", [
    (dict(method="beta_vae"), "latent_scm"),
    (dict(method="contrastive"), "latent_scm"),
    (dict(targets="unknown"), "scm_order"),
    (dict(scm_order="random"), "scm_order"),
])
def test_flow_prior_rejects_incompatible_settings_at_config_time(kw, match):
    with pytest.raises(ValueError, match=match):
        CRLConfig(scm="flow", **kw)


def test_benchmark_setting_rejects_a_flow_prior_it_cannot_fit():
    from jaxcrl.crl.synthetic import SyntheticConfig

    with pytest.raises(ValueError, match="scm_prior"):
        SyntheticConfig(scm_prior="spline")
    with pytest.raises(ValueError, match="known"):
        SyntheticConfig(scm_prior="flow", targets="unknown")


@pytest.mark.slow  # a benchmark smoke test; the equality is tested above
def test_prior_step_benchmark_arms_compute_the_same_likelihood(tmp_path):
    """The speed benchmark's two arms (every environment's density with explicitly gated
    MLP inputs vs the library's own-environment form) agree (soft: the intervened density
    depends on the mechanism too)."""
    res = load_experiment("experiments/bench/crl_prior_step.py").main([
        "--runs", "2", "--batch", "32", "--flow-layers", "1", "--terms", "2", "--iters", "1",
        "--repeats", "1", "--kinds", "soft", "--out", str(tmp_path / "b.json")])
    assert list(res["results"]) == ["soft"]
    assert res["results"]["soft"]["max_rel_diff"] < 1e-5
    assert res["results"]["soft"]["speedup_model"] > 0
