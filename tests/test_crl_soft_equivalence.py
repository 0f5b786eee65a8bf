"""Soft interventions identify the latents only up to shears (jaxcrl.crl.equivalence): which
shears keep every environment's density, checked by covariance algebra independent of the
prior's code, and the equivalent prior parameters checked against the prior's log_prob."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl.crl import prior as P
from jaxcrl.crl.equivalence import class_r2, shear_prior, shear_sets

# 0 -> 1, 0 -> 2, 1 -> 2, 2 -> 3; 4 and 0 are roots. Node 2 has two parents.
ADJ = np.zeros((5, 5))
for i, j in ((0, 1), (0, 2), (1, 2), (2, 3)):
    ADJ[i, j] = 1
W = ADJ * np.array([[0, 1.3, 0.9, 0, 0], [0, 0, -1.1, 0, 0], [0, 0, 0, 0.8, 0],
                    [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
SCALE = np.array([1.0, 0.8, 0.6, 0.9, 1.2])
# environment e >= 1 intervenes on node e - 1: factor, new mean, new noise std
FACTOR = np.array([0.5, -0.4, 0.6, 0.35, 0.7])
MEAN = np.array([1.0, -1.5, 0.7, 2.0, -0.8])
INT_SCALE = np.array([0.7, 1.3, 0.5, 1.1, 0.9])


def test_shear_sets_are_roots_non_descendants_and_single_parents():
    assert shear_sets(ADJ) == [(4,), (0,), (), (2,), (0, 1, 2, 3)]


def _env_cov(e, soft):
    """Covariance of z in environment e (rows: z = u (I - W_e)^-1, u independent)."""
    w, s = W.copy(), SCALE.copy()
    if e > 0:
        j = e - 1
        w[:, j] *= FACTOR[j] if soft else 0.0
        s[j] = INT_SCALE[j]
    a = np.linalg.inv(np.eye(5) - w)
    return a.T @ np.diag(s**2) @ a


def _cond_var(cov, y, xs):
    """Var(y | xs) of a Gaussian with covariance cov."""
    if not xs:
        return cov[y, y]
    sxx, sxy = cov[np.ix_(xs, xs)], cov[xs, y]
    return cov[y, y] - sxy @ np.linalg.solve(sxx, sxy)


@pytest.mark.parametrize("soft", [True, False])
def test_only_the_listed_shears_keep_the_intervened_mechanism_in_the_family(soft):
    """For z'_j = z_j + c z_k (k a non-descendant of j), the model must explain z'_j in j's
    own environment by ``a * loc'_j + m`` with loc'_j fixed by the observational environment
    (the regression of z'_j on j's non-descendants). The residual variance of the best such
    fit equals the true intervened noise variance exactly when the shear is listed by
    shear_sets (soft), and never under perfect interventions (loc'_j must drop out)."""
    sets = shear_sets(ADJ)
    closure = np.linalg.matrix_power(np.eye(5) + ADJ, 5) > 0
    c = 0.9
    for j, k in itertools.permutations(range(5), 2):
        if closure[j, k]:  # k a descendant of j: z'_j would carry j's descendants' noise
            continue
        t = np.eye(5)
        t[k, j] = c  # z' = z t
        nd = [i for i in range(5) if i != j and not closure[j, i]]
        cov0 = t.T @ _env_cov(0, soft) @ t
        beta = np.linalg.solve(cov0[np.ix_(nd, nd)], cov0[nd, j])  # loc'_j = beta . z'_nd
        cov_e = t.T @ _env_cov(j + 1, soft) @ t
        u = np.zeros(5)
        u[nd] = beta
        # z'_j and u = loc'_j(z') in env j+1: best scalar fit a*u + m
        var_y, var_u, cov_yu = cov_e[j, j], u @ cov_e @ u, u @ cov_e[:, j]
        if soft:
            resid = var_y - cov_yu**2 / var_u if var_u > 1e-12 else var_y
        else:  # perfect: no parental term in the model, the residual is z'_j's variance
            resid = var_y
        # the intervened noise of the true model, and the best unconstrained regression on
        # the non-descendants (a lower bound every model in any family pays)
        floor = _cond_var(cov_e, j, nd)
        np.testing.assert_allclose(floor, INT_SCALE[j] ** 2, rtol=1e-9)
        kept = soft and k in sets[j]
        if kept:
            np.testing.assert_allclose(resid, INT_SCALE[j] ** 2, rtol=1e-9,
                                       err_msg=f"shear z_{j} + c z_{k}")
        else:
            assert resid > INT_SCALE[j] ** 2 * 1.01, (j, k, resid)


def _params(per_node=1, dtype=jnp.float32):
    """The SCM above as linear-prior parameters; environment 1 + r * 5 + j intervenes on node
    j (r < per_node; the second round with other factors, means and scales)."""
    e = 1 + 5 * per_node
    f = np.ones((e, 5))
    m, ls = np.zeros((e, 5)), np.zeros((e, 5))
    for r, j in itertools.product(range(per_node), range(5)):
        i = 1 + 5 * r + j
        f[i, j] = FACTOR[j] * (1 - 1.6 * r)
        m[i, j] = MEAN[j] - 1.3 * r
        ls[i, j] = np.log(INT_SCALE[j]) + 0.4 * r
    p = P.init_prior(jax.random.key(0), 5, e)
    return P.PriorParams(
        w=jnp.asarray(W, dtype), log_scale=jnp.asarray(np.log(SCALE), dtype),
        int_mean=jnp.asarray(m, dtype), int_log_scale=jnp.asarray(ls, dtype),
        int_factor=jnp.asarray(f, dtype), target_logits=p.target_logits,
        mlp_w1=p.mlp_w1, mlp_b1=p.mlp_b1, mlp_w2=p.mlp_w2)


@pytest.mark.parametrize("per_node", [1, 2])
@pytest.mark.parametrize("j,k", [(4, 0), (4, 3), (0, 4), (1, 0), (3, 2)])
def test_shear_prior_gives_every_soft_environment_the_same_density(j, k, per_node):
    """Two soft interventions per node do not remove the shears either: each environment
    gets its own factor."""
    params = _params(per_node)
    targets = jnp.concatenate([jnp.zeros((1, 5)), *[jnp.eye(5)] * per_node]).astype(bool)
    z = jax.random.normal(jax.random.key(1), (660, 5)) * 2.0
    env = jnp.arange(660) % (1 + 5 * per_node)
    c = 0.7
    z_new = z.at[:, j].add(c * z[:, k])
    sheared = shear_prior(params, j, k, c)
    before = P.log_prob(params, z, env, targets=targets, soft=True)
    after = P.log_prob(sheared, z_new, env, targets=targets, soft=True)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-4)
    # ... but not under perfect interventions, and not when the shear is applied to z alone
    perfect = P.log_prob(sheared, z_new, env, targets=targets, soft=False)
    assert jnp.abs(perfect - P.log_prob(params, z, env, targets=targets, soft=False)).max() > 0.1
    assert jnp.abs(P.log_prob(params, z_new, env, targets=targets, soft=True) - before).max() > 0.1


def test_shear_prior_refuses_a_shear_that_changes_the_likelihood():
    params = _params()
    with pytest.raises(ValueError, match="changes the likelihood"):
        shear_prior(params, 2, 0, 0.5)  # two parents
    with pytest.raises(ValueError, match="changes the likelihood"):
        shear_prior(params, 0, 1, 0.5)  # 1 is a descendant of root 0
    with pytest.raises(ValueError, match="removes the edge"):
        shear_prior(params, 1, 0, -1.3)
    with pytest.raises(ValueError, match="linear prior"):
        shear_prior(P.init_prior(jax.random.key(0), 5, 6, hidden=4), 4, 0, 0.5)


def test_class_r2_is_one_inside_the_class_and_below_outside():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5))
    inside = z.copy()
    inside[:, 1] += 2.0 * z[:, 0]   # 1's single parent
    inside[:, 4] -= 1.5 * z[:, 3]   # root 4, non-descendant 3
    perm = np.array([2, 0, 1, 3, 4])  # learned latent perm[j] <-> true j
    zh = np.empty_like(inside)
    zh[:, perm] = inside
    r2 = class_r2(z, zh, perm, ADJ)
    np.testing.assert_allclose(r2, 1.0, atol=1e-9)
    outside = inside.copy()
    outside[:, 2] += 0.8 * z[:, 0]  # node 2 has two parents: pinned
    zh[:, perm] = outside
    r2 = class_r2(z, zh, perm, ADJ)
    assert r2[2] < 0.7 and np.allclose(np.delete(r2, 2), 1.0)


def test_class_r2_is_nan_for_unmatched_and_dead_learned_latents():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2000, 5))
    zh = z.copy()
    zh[:, 3] = 7.0 + 1e-15 * rng.normal(size=2000)  # dead up to float noise
    perm = np.array([0, 1, -1, 3, 4])
    r2 = np.asarray(class_r2(z, zh, perm, ADJ))
    assert np.isnan(r2[[2, 3]]).all()
    np.testing.assert_allclose(np.delete(r2, [2, 3]), 1.0, atol=1e-9)
