"""Exact DAG search: equals brute force over all DAGs, recovers the truth from true latents."""

import itertools

import jax
import numpy as np
import pytest

from jaxcrl.crl.discovery import _local_bic, _node_grams, exact_dag_search
from jaxcrl.metrics import shd
from jaxcrl.scm import DatasetConfig, GraphConfig, SCMConfig, is_dag, make_dataset


def _all_dags(d):
    pairs = [(i, j) for i in range(d) for j in range(d) if i != j]
    for bits in itertools.product([0, 1], repeat=len(pairs)):
        a = np.zeros((d, d), bool)
        for b, (i, j) in zip(bits, pairs, strict=True):
            a[i, j] = b
        if bool(is_dag(a)):
            yield a


def _score(adj, z, env, targets, min_r2=0.0):
    grams, counts = _node_grams(z, env, targets)
    charge = -0.5 * np.log(1.0 - min_r2)  # per parent and sample
    return sum(_local_bic(grams[j], counts[j], j, tuple(np.nonzero(adj[:, j])[0]))[0]
               - charge * counts[j] * adj[:, j].sum() for j in range(adj.shape[0]))


@pytest.mark.parametrize("min_r2", [0.0, 0.05])
def test_dp_optimum_equals_brute_force_over_all_dags(min_r2):
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=3, graph=GraphConfig(edge_prob=0.6)),
                        n_per_env=300)
    for seed in range(3):
        ds = make_dataset(jax.random.key(seed), cfg)
        z = np.asarray(ds.z, np.float64) + np.random.default_rng(seed).normal(0, 0.5, (1200, 3))
        env, targets = np.asarray(ds.env), np.asarray(ds.targets)
        w, score = exact_dag_search(z, env, targets, min_r2=min_r2)
        brute = max(_score(a, z, env, targets, min_r2) for a in _all_dags(3))
        assert len(list(_all_dags(3))) == 25
        assert score == pytest.approx(brute, rel=1e-9)
        assert _score(w != 0, z, env, targets, min_r2) == pytest.approx(score, rel=1e-9)


@pytest.mark.parametrize("d", [4, 6])
def test_true_latents_give_the_true_graph_and_weights(d):
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=d), n_per_env=5000)
    for seed in range(2):
        ds = make_dataset(jax.random.key(seed), cfg)
        w, _ = exact_dag_search(np.asarray(ds.z), np.asarray(ds.env), np.asarray(ds.targets))
        assert shd(np.asarray(ds.adj), w) == 0
        np.testing.assert_allclose(w, np.asarray(ds.weights), atol=0.05)


@pytest.mark.parametrize("r2_weak", [0.005, 0.03])
def test_min_r2_keeps_a_parent_only_above_its_partial_r2(r2_weak):
    # z2 = a z0 + b z1 + e with independent unit-variance z0, z1: z1's partial R² (given z0)
    # is b² / (b² + 1). BIC keeps any such parent at n = 40k; min_r2 = 0.01 keeps only the
    # one above 0.01.
    rng = np.random.default_rng(0)
    n = 40_000
    b = np.sqrt(r2_weak / (1.0 - r2_weak))
    z0, z1, e = rng.normal(size=(3, n))
    z = np.stack([z0, z1, 1.0 * z0 + b * z1 + e], 1)
    env = np.zeros(n, int)
    targets = np.zeros((1, 3), bool)
    # Two roots are exchangeable without interventions; compare the parent sets of z2 only.
    bic, _ = exact_dag_search(z, env, targets)
    assert bic[1, 2] != 0 and bic[0, 2] != 0
    w, _ = exact_dag_search(z, env, targets, min_r2=0.01)
    assert (w[0, 2] != 0) or (w[2, 0] != 0)  # the strong parent (R² 0.5) stays, some way
    assert (w[1, 2] != 0 or w[2, 1] != 0) == (r2_weak > 0.01)


def test_min_r2_removes_the_edges_measurement_noise_adds_at_large_n():
    # Latents known only up to noise (an encoder's error): the BIC search adds spurious
    # edges (conditional independences fail), the effect-size charge does not.
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=5), n_per_env=20_000)
    spurious = []
    for seed in range(3):
        ds = make_dataset(jax.random.key(seed), cfg)
        z = np.asarray(ds.z, np.float64)
        env, targets, adj = np.asarray(ds.env), np.asarray(ds.targets), np.asarray(ds.adj)
        z = z / z[env == 0].std(0)
        noisy = z + 0.2 * np.random.default_rng(seed).normal(size=z.shape)
        w0, _ = exact_dag_search(noisy, env, targets)
        w, _ = exact_dag_search(noisy, env, targets, min_r2=0.02)
        spurious.append(shd(adj, w0))
        assert shd(adj, w) == 0
    assert sum(spurious) > 0


def test_bad_min_r2_raises():
    with pytest.raises(ValueError, match="min_r2"):
        exact_dag_search(np.zeros((10, 3)), np.zeros(10, int), np.zeros((1, 3), bool),
                         min_r2=1.0)


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="targets must be"):
        exact_dag_search(np.zeros((10, 3)), np.zeros(10, int), np.zeros((1, 2), bool))
