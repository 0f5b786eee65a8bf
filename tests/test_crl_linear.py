"""Reference linear unmixings recover what theory says they can."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import FastICA

from jaxcrl.crl import fast_ica, pca


def _abs_corr(a, b):
    k = a.shape[1]
    return np.abs(np.corrcoef(np.asarray(a).T, np.asarray(b).T)[:k, k:])


def _ica_problem(n=4000, d=4, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    s = jax.random.laplace(k1, (n, d))
    a = jax.random.normal(k2, (d, d))
    return s, s @ a.T


def test_pca_whitens():
    s, x = _ica_problem()
    z = pca(x, 4)(x)
    np.testing.assert_allclose(np.cov(np.asarray(z).T), np.eye(4), atol=1e-3)


def test_fast_ica_recovers_laplace_sources_up_to_permutation_and_scale():
    s, x = _ica_problem()
    z = fast_ica(x, 4, jax.random.key(1))(x)
    c = _abs_corr(s, z)
    # every source matched by one estimate, and the matching is a permutation
    assert c.max(1).min() > 0.98
    assert sorted(c.argmax(1).tolist()) == [0, 1, 2, 3]


def test_fast_ica_matches_sklearn_up_to_sign_and_order():
    s, x = _ica_problem(seed=3)
    ours = np.asarray(fast_ica(x, 4, jax.random.key(0))(x))
    ref = FastICA(4, whiten="unit-variance", random_state=0, max_iter=1000).fit_transform(
        np.asarray(x)
    )
    c = _abs_corr(ours, ref)
    assert c.max(1).min() > 0.99


def test_fast_ica_is_jittable_and_deterministic():
    _, x = _ica_problem()
    f = jax.jit(lambda x, k: fast_ica(x, 4, k).unmixing)
    np.testing.assert_allclose(f(x, jax.random.key(2)), fast_ica(x, 4, jax.random.key(2)).unmixing,
                               atol=1e-4)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"x must be \[n, D\]"):
        pca(jnp.zeros(5), 1)
    with pytest.raises(ValueError, match="n_components"):
        pca(jnp.zeros((5, 2)), 3)
