"""Random DAG generators and graph queries, checked against pure-Python references."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrl import scm


def _reach_dfs(adj: np.ndarray) -> np.ndarray:
    """Reference reachability by paths of length >= 1 (depth-first search from every node)."""
    d = adj.shape[0]
    reach = np.zeros((d, d), dtype=bool)
    for start in range(d):
        stack = list(np.flatnonzero(adj[start]))
        while stack:
            node = stack.pop()
            if not reach[start, node]:
                reach[start, node] = True
                stack.extend(np.flatnonzero(adj[node]))
    return reach


@functools.cache
def _graphs(key_seed: int, cfg: scm.GraphConfig, d: int, n: int) -> np.ndarray:
    """``n`` graphs ``[n, d, d]`` from ``n`` keys (a loop over the jitted ``make_graph``:
    a single-key compilation is several times cheaper than a vmapped one)."""
    keys = jax.random.split(jax.random.key(key_seed), n)
    return np.stack([np.asarray(scm.make_graph(k, cfg, d)) for k in keys])


ALL_KINDS = [
    scm.GraphConfig(kind="er", edge_prob=0.5),
    scm.GraphConfig(kind="er", expected_degree=2.0),
    scm.GraphConfig(kind="scale_free", m=2),
    scm.GraphConfig(kind="chain"),
    scm.GraphConfig(kind="full"),
]


@pytest.mark.parametrize("cfg", ALL_KINDS, ids=lambda c: c.kind)
def test_generated_graphs_are_binary_dags_for_many_keys(cfg: scm.GraphConfig) -> None:
    adjs = _graphs(0, cfg, 9, 64)
    assert adjs.dtype == np.float32 and set(np.unique(adjs)) <= {0.0, 1.0}
    assert np.all(np.asarray(scm.is_dag(adjs)))
    for adj in adjs[:16]:  # independent check: no node reaches itself
        assert not np.any(np.diag(_reach_dfs(adj)))


def test_is_dag_detects_cycles() -> None:
    adj = np.asarray(scm.chain(6))
    assert bool(scm.is_dag(adj))
    cyclic = adj.copy()
    cyclic[5, 0] = 1.0  # closes a cycle of length 6 = d (needs all log-steps)
    assert not bool(scm.is_dag(cyclic))
    assert not bool(scm.is_dag(np.eye(3)))  # self-loops are cycles


def test_er_edge_frequency_matches_edge_prob() -> None:
    d, n, p = 10, 400, 0.3
    adjs = _graphs(1, scm.GraphConfig(kind="er", edge_prob=p), d, n)
    pair = adjs + np.swapaxes(adjs, 1, 2)  # 1 iff the unordered pair is joined
    assert pair.max() == 1.0  # never both directions
    iu = np.triu_indices(d, k=1)
    per_pair = pair[:, iu[0], iu[1]].mean(axis=0)
    # Overall frequency over 400 * 45 pairs: sd 0.0034, tolerance ~4.4 sd.
    assert abs(per_pair.mean() - p) < 0.015
    # Each pair on its own (400 draws): sd 0.023, tolerance ~4.4 sd.
    assert np.all(np.abs(per_pair - p) < 0.1)
    # Random causal order: edges point from lower to higher index half of the time.
    upward = adjs[:, iu[0], iu[1]].sum() / adjs.sum()
    assert abs(upward - 0.5) < 0.03


def test_er_expected_degree_sets_mean_total_degree() -> None:
    d, n, k = 20, 200, 3.0
    cfg = scm.GraphConfig(kind="er", expected_degree=k)
    adjs = _graphs(2, cfg, d, n)
    mean_degree = 2.0 * adjs.sum() / (n * d)  # in + out
    assert abs(mean_degree - k) < 0.15  # sd of the mean is about 0.035


def test_erdos_renyi_needs_exactly_one_density_argument() -> None:
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="exactly one"):
        scm.erdos_renyi(key, 5)
    with pytest.raises(ValueError, match="exactly one"):
        scm.erdos_renyi(key, 5, edge_prob=0.3, expected_degree=2.0)
    with pytest.raises(ValueError, match="impossible"):
        scm.erdos_renyi(key, 5, expected_degree=5.0)


def test_scale_free_has_hubs_unlike_er_of_same_density() -> None:
    d, n = 50, 20
    sf = _graphs(3, scm.GraphConfig(kind="scale_free", m=1), d, n)
    assert np.all(sf.sum(axis=(1, 2)) == d - 1)  # m = 1: a tree, d - 1 edges
    assert np.all(sf.sum(axis=1) <= 1)  # ... each node points to at most one other
    er_cfg = scm.GraphConfig(kind="er", expected_degree=2.0 * (d - 1) / d)
    er = _graphs(4, er_cfg, d, n)
    sf_max = (sf.sum(axis=1) + sf.sum(axis=2)).max(axis=1)
    er_max = (er.sum(axis=1) + er.sum(axis=2)).max(axis=1)
    mean_degree = 2.0 * (d - 1) / d
    assert np.median(sf_max) >= 4 * mean_degree
    assert sf_max.mean() > er_max.mean() + 3


def test_scale_free_edge_count_for_m_two() -> None:
    d = 12
    adjs = _graphs(5, scm.GraphConfig(kind="scale_free", m=2), d, 8)
    # node t attaches to min(2, t) earlier nodes: 0 + 1 + 2 * (d - 2)
    assert np.all(adjs.sum(axis=(1, 2)) == 1 + 2 * (d - 2))


def test_topological_order_puts_parents_first() -> None:
    adjs = _graphs(6, ALL_KINDS[0], 9, 64)[:32]
    for adj in adjs:
        order = np.asarray(scm.topological_order(adj))  # numpy input
        assert sorted(order.tolist()) == list(range(9))
        position = np.argsort(order)
        src, dst = np.nonzero(adj)
        assert np.all(position[src] < position[dst])
    batched = np.asarray(jax.jit(jax.vmap(scm.topological_order))(adjs))
    assert np.array_equal(batched[0], np.asarray(scm.topological_order(adjs[0])))


def test_transitive_closure_matches_dfs() -> None:
    rng = np.random.default_rng(0)
    cases = list(_graphs(7, ALL_KINDS[0], 9, 64)[:10])
    cases += [np.asarray(scm.chain(13)), np.asarray(scm.full(4))]
    # Closure must also be right on cyclic digraphs (used by is_dag).
    cases += [(rng.random((d, d)) < 0.15).astype(np.float32) for d in (1, 2, 7, 16)]
    for adj in cases:
        np.testing.assert_array_equal(np.asarray(scm.transitive_closure(adj)), _reach_dfs(adj))


def test_descendants_ancestors_parents_children_are_consistent() -> None:
    adj = np.asarray(scm.make_graph(jax.random.key(8), scm.GraphConfig(edge_prob=0.4), 10))
    reach = _reach_dfs(adj)
    for i in range(10):
        desc = np.asarray(scm.descendants(adj, i))
        anc = np.asarray(scm.ancestors(adj, i))
        np.testing.assert_array_equal(desc, reach[i])
        np.testing.assert_array_equal(anc, reach[:, i])
        np.testing.assert_array_equal(np.asarray(scm.parents(adj, i)), adj[:, i] == 1)
        np.testing.assert_array_equal(np.asarray(scm.children(adj, i)), adj[i] == 1)
        assert not desc[i] and not anc[i]
        assert np.all(desc[adj[i] == 1])  # children are descendants
        for j in range(10):
            assert desc[j] == bool(scm.ancestors(adj, j)[i])


def test_chain_and_full_edge_counts() -> None:
    d = 7
    for key in (None, jax.random.key(9)):
        c = np.asarray(scm.chain(d, key))
        f = np.asarray(scm.full(d, key))
        assert c.sum() == d - 1 and f.sum() == d * (d - 1) // 2
        assert c.sum(axis=0).max() == 1 and c.sum(axis=1).max() == 1
        assert _reach_dfs(c).sum() == d * (d - 1) // 2  # a single directed path
        assert bool(scm.is_dag(c)) and bool(scm.is_dag(f))
    np.testing.assert_array_equal(np.asarray(scm.chain(d)), np.eye(d, k=1))
    assert not np.array_equal(np.asarray(scm.chain(d, jax.random.key(9))), np.eye(d, k=1))


def test_make_graph_respects_permute_flag() -> None:
    cfg = scm.GraphConfig(kind="full", permute=False)
    adj = scm.make_graph(jax.random.key(0), cfg, 5)
    np.testing.assert_array_equal(np.asarray(adj), np.triu(np.ones((5, 5)), k=1))


def test_same_key_same_graph_and_different_keys_differ() -> None:
    cfg = scm.GraphConfig(edge_prob=0.5)
    a = scm.make_graph(jax.random.key(11), cfg, 8)
    b = jax.jit(scm.make_graph, static_argnums=(1, 2))(jax.random.key(11), cfg, 8)
    c = scm.make_graph(jax.random.key(12), cfg, 8)
    assert jnp.array_equal(a, b) and not jnp.array_equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kind="tree"), "GraphConfig.kind"),
        (dict(edge_prob=0.2, expected_degree=1.0), "at most one"),
        (dict(edge_prob=1.5), "edge_prob"),
        (dict(expected_degree=-1.0), "expected_degree"),
        (dict(kind="scale_free", m=0), "GraphConfig.m"),
    ],
)
def test_bad_graph_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scm.GraphConfig(**kwargs)
