"""The learnable latent-SCM density is the right density (checked against scipy)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jaxcrl.crl import prior as P

D, E = 3, 4
# Chain 0 -> 1 -> 2 plus 0 -> 2, with weights.
W = np.array([[0.0, 1.5, -0.7], [0.0, 0.0, 0.8], [0.0, 0.0, 0.0]], np.float32)
TARGETS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)


def _params(**kw):
    p = P.init_prior(jax.random.key(0), D, E)
    base = dict(
        w=jnp.asarray(W),
        log_scale=jnp.log(jnp.array([1.0, 0.5, 2.0])),
        int_mean=jnp.array([[0, 0, 0], [2.0, 0, 0], [0, -1.0, 0], [0, 0, 3.0]]),
        int_log_scale=jnp.log(jnp.full((E, D), 0.7)),
        int_factor=jnp.full((E, D), 0.4),
    )
    base.update(kw)
    return dataclasses.replace(p, **base)


def _analytic(env: int, soft: bool):
    """Mean and covariance of z = u (I - W_e)^-1 for the environment's intervention."""
    t = TARGETS[env]
    w = W.copy()
    scale = np.array([1.0, 0.5, 2.0])
    mean_u = np.zeros(D)
    for j in np.nonzero(t)[0]:
        w[:, j] *= 0.4 if soft else 0.0
        scale[j] = 0.7
        mean_u[j] = [2.0, -1.0, 3.0][j]
    b = np.linalg.inv(np.eye(D) - w)
    return mean_u @ b, b.T @ np.diag(scale**2) @ b


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("env", range(E))
def test_linear_log_prob_equals_multivariate_normal(env, soft):
    z = jax.random.normal(jax.random.key(env), (50, D)) * 2
    lp = P.log_prob(_params(), z, jnp.full(50, env), targets=jnp.asarray(TARGETS), soft=soft)
    mean, cov = _analytic(env, soft)
    np.testing.assert_allclose(lp, multivariate_normal(mean, cov).logpdf(np.asarray(z)),
                               rtol=1e-4, atol=1e-4)


def test_log_prob_is_normalized_even_for_a_cyclic_graph():
    """With log|det(I - W)| the linear density integrates to one for any W (here a 2-cycle):
    compare with the Gaussian it implies."""
    w = jnp.array([[0.0, 0.5, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = _params(w=w, log_scale=jnp.zeros(D))
    z = jax.random.normal(jax.random.key(0), (20, D))
    lp = P.log_prob(p, z, jnp.zeros(20, int), targets=jnp.asarray(TARGETS))
    a = np.eye(D) - np.asarray(w)
    cov = np.linalg.inv(a @ a.T)  # z (I - W) = u ~ N(0, I)
    np.testing.assert_allclose(lp, multivariate_normal(np.zeros(D), cov).logpdf(np.asarray(z)),
                               rtol=1e-4)


def test_interventions_touch_only_their_environment_and_target():
    """d log p / d int_mean[e, j] is nonzero exactly for e's own target j, on e's samples."""
    z = jax.random.normal(jax.random.key(1), (40, D))
    env = jnp.arange(40) % E
    for e in range(E):
        g = jax.grad(lambda m, e=e: P.log_prob(_params(int_mean=m), z[env == e],
                                               env[env == e], targets=jnp.asarray(TARGETS)
                                               ).sum())(jnp.zeros((E, D)))
        expected = np.zeros((E, D), bool)
        expected[e] = TARGETS[e]
        np.testing.assert_array_equal(np.asarray(g) != 0, expected)


def test_unknown_targets_is_the_mixture_over_single_targets():
    logits = jax.random.normal(jax.random.key(2), (E, D))
    p = _params(target_logits=logits)
    z = jax.random.normal(jax.random.key(3), (30, D))
    env = jnp.arange(30) % E
    lp = P.log_prob(p, z, env, targets=None)
    pi = jax.nn.softmax(logits, -1)
    for n in range(30):
        e = int(env[n])
        if e == 0:
            ref = P.log_prob(p, z[n:n + 1], env[n:n + 1], targets=jnp.asarray(TARGETS))[0]
        else:
            comps = []
            for j in range(D):
                t = np.zeros((E, D), bool)
                t[1:, j] = True  # every interventional environment targets j
                comps.append(P.log_prob(p, z[n:n + 1], env[n:n + 1], targets=jnp.asarray(t))[0])
            ref = jax.nn.logsumexp(jnp.log(pi[e]) + jnp.stack(comps))
        np.testing.assert_allclose(lp[n], ref, rtol=1e-5, atol=1e-5)


def test_acyclicity_is_zero_exactly_on_dags():
    assert float(P.acyclicity(jnp.asarray(W))) == pytest.approx(0.0, abs=1e-6)
    cyc = jnp.asarray(W).at[2, 0].set(0.5)
    assert float(P.acyclicity(cyc)) > 1e-3
    # gradient pushes the cycle-closing weight towards zero
    assert float(jax.grad(P.acyclicity)(cyc)[2, 0]) > 0


def test_nonlinear_prior_graph_gates_parents():
    """With W[:, j] = 0 the nonlinear mechanism of j ignores every other latent."""
    p = P.init_prior(jax.random.key(0), D, E, hidden=8)
    p = dataclasses.replace(p, w=jnp.asarray(W))
    z = jax.random.normal(jax.random.key(1), (10, D))
    jac = jax.vmap(jax.jacfwd(lambda zz: P.node_loc(p, zz[None])[0]))(z)  # [n, j, i]
    np.testing.assert_array_equal(np.abs(np.asarray(jac)).max(0).T > 0, W != 0)
