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


def _score(adj, z, env, targets):
    grams, counts = _node_grams(z, env, targets)
    return sum(_local_bic(grams[j], counts[j], j, tuple(np.nonzero(adj[:, j])[0]))[0]
               for j in range(adj.shape[0]))


def test_dp_optimum_equals_brute_force_over_all_dags():
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=3, graph=GraphConfig(edge_prob=0.6)),
                        n_per_env=300)
    for seed in range(3):
        ds = make_dataset(jax.random.key(seed), cfg)
        z = np.asarray(ds.z, np.float64) + np.random.default_rng(seed).normal(0, 0.5, (1200, 3))
        env, targets = np.asarray(ds.env), np.asarray(ds.targets)
        w, score = exact_dag_search(z, env, targets)
        brute = max(_score(a, z, env, targets) for a in _all_dags(3))
        assert len(list(_all_dags(3))) == 25
        assert score == pytest.approx(brute, rel=1e-9)
        assert _score(w != 0, z, env, targets) == pytest.approx(score, rel=1e-9)


@pytest.mark.parametrize("d", [4, 6])
def test_true_latents_give_the_true_graph_and_weights(d):
    cfg = DatasetConfig(scm=SCMConfig(latent_dim=d), n_per_env=5000)
    for seed in range(2):
        ds = make_dataset(jax.random.key(seed), cfg)
        w, _ = exact_dag_search(np.asarray(ds.z), np.asarray(ds.env), np.asarray(ds.targets))
        assert shd(np.asarray(ds.adj), w) == 0
        np.testing.assert_allclose(w, np.asarray(ds.weights), atol=0.05)


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="targets must be"):
        exact_dag_search(np.zeros((10, 3)), np.zeros(10, int), np.zeros((1, 2), bool))
