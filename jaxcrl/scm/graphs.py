"""Random DAGs over latent variables and jit-friendly graph queries.

Convention used throughout ``jaxcrl``: ``adj[i, j] = 1`` means the edge ``i -> j``
(row = cause, column = effect). Adjacency matrices are ``float32`` ``[d, d]`` with
entries in ``{0, 1}``; the query helpers accept numpy or jax arrays (any nonzero
entry is an edge) and return jax arrays.

Every generator draws the DAG in a fixed causal order and then relabels the nodes
with a random permutation, so node indices carry no information about the order.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.checkpoint import register_config
from jaxcrl.scm._util import check_choice, uniform

GRAPH_KINDS = ("er", "scale_free", "chain", "full")
DEFAULT_EDGE_PROB = 0.5


@register_config
@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """Which random DAG to draw.

    Attributes:
        kind: ``"er"`` (Erdős–Rényi), ``"scale_free"`` (Barabási–Albert), ``"chain"``
            or ``"full"`` (fully connected DAG).
        edge_prob: ER edge probability per unordered node pair. At most one of
            ``edge_prob`` / ``expected_degree``; if both are None, ER uses 0.5
            (the CauCA setting).
        expected_degree: ER expected total (in + out) degree ``k``; ``p = k / (d - 1)``.
        m: edges each new node attaches with (scale-free only).
        permute: randomly permute the causal order of ``chain`` and ``full``
            (``er`` and ``scale_free`` are always permuted).
    """

    kind: str = "er"
    edge_prob: float | None = None
    expected_degree: float | None = None
    m: int = 1
    permute: bool = True

    def __post_init__(self) -> None:
        check_choice("GraphConfig.kind", self.kind, GRAPH_KINDS)
        if self.edge_prob is not None and self.expected_degree is not None:
            raise ValueError("GraphConfig: give at most one of edge_prob and expected_degree")
        if self.edge_prob is not None and not 0.0 <= self.edge_prob <= 1.0:
            raise ValueError(f"GraphConfig.edge_prob must be in [0, 1], got {self.edge_prob}")
        if self.expected_degree is not None and self.expected_degree < 0:
            raise ValueError(
                f"GraphConfig.expected_degree must be >= 0, got {self.expected_degree}"
            )
        if self.m < 1:
            raise ValueError(f"GraphConfig.m must be >= 1, got {self.m}")

    def validate_for(self, d: int) -> None:
        """Raises ValueError if this config cannot produce a graph on ``d`` nodes."""
        if d < 1:
            raise ValueError(f"number of nodes d must be >= 1, got {d}")
        if self.kind == "er":
            _edge_prob(d, self.edge_prob, self.expected_degree)


def _edge_prob(d: int, edge_prob: float | None, expected_degree: float | None) -> float:
    if edge_prob is not None and expected_degree is not None:
        raise ValueError("give exactly one of edge_prob and expected_degree, not both")
    if expected_degree is None:
        return DEFAULT_EDGE_PROB if edge_prob is None else float(edge_prob)
    if d < 2:
        raise ValueError(f"expected_degree needs d >= 2 nodes, got d={d}")
    p = expected_degree / (d - 1)
    if p > 1.0:
        raise ValueError(
            f"expected_degree={expected_degree} is impossible with d={d} nodes "
            f"(maximum total degree is d - 1 = {d - 1})"
        )
    return float(p)


def permute_nodes(key: jax.Array, adj: jax.Array) -> jax.Array:
    """Relabels the nodes of ``adj [d, d]`` with a uniformly random permutation."""
    perm = jax.random.permutation(key, adj.shape[-1])
    return adj[perm][:, perm]


@functools.partial(jax.jit, static_argnums=1, static_argnames=("edge_prob", "expected_degree"))
def erdos_renyi(
    key: jax.Array,
    d: int,
    *,
    edge_prob: float | None = None,
    expected_degree: float | None = None,
) -> jax.Array:
    """Erdős–Rényi DAG: each unordered pair is joined with probability ``p``.

    A strictly upper-triangular Bernoulli(p) mask is drawn (edges go from earlier to
    later nodes in the causal order) and the nodes are then randomly permuted.

    Args:
        key: PRNG key.
        d: number of nodes (static).
        edge_prob: ``p``. Give exactly one of ``edge_prob`` / ``expected_degree``.
        expected_degree: expected total degree ``k`` (in + out); ``p = k / (d - 1)``.

    Returns:
        adj: ``[d, d] float32`` DAG adjacency, ``adj[i, j] = 1`` for ``i -> j``.
    """
    if (edge_prob is None) == (expected_degree is None):
        raise ValueError("erdos_renyi: give exactly one of edge_prob and expected_degree")
    p = _edge_prob(d, edge_prob, expected_degree)
    key_mask, key_perm = jax.random.split(key)
    upper = jnp.triu(jnp.ones((d, d), dtype=bool), k=1)
    mask = (uniform(key_mask, (d, d)) < p) & upper
    return permute_nodes(key_perm, mask.astype(jnp.float32))


@functools.partial(jax.jit, static_argnums=1, static_argnames="m")
def scale_free(key: jax.Array, d: int, *, m: int = 1) -> jax.Array:
    """Barabási–Albert scale-free DAG (preferential attachment), jit-compatible.

    Nodes arrive in a causal order ``t = 0..d-1``; node ``t`` attaches to ``min(m, t)``
    distinct earlier nodes drawn without replacement with probability proportional
    to ``degree + 1`` (Gumbel-top-k, the sampler behind ``jax.random.choice``).
    Edges point from the earlier to the later node, then nodes are relabelled
    randomly.

    Args:
        key: PRNG key.
        d: number of nodes (static).
        m: edges per arriving node (static).

    Returns:
        adj: ``[d, d] float32`` DAG adjacency.
    """
    if m < 1:
        raise ValueError(f"scale_free: m must be >= 1, got {m}")
    key_attach, key_perm = jax.random.split(key)
    idx = jnp.arange(d)
    n_pick = min(m, d)

    def attach(t: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        adj, degree = carry
        earlier = idx < t
        logits = jnp.where(earlier, jnp.log(degree + 1.0), -jnp.inf)
        scores = logits + jax.random.gumbel(jax.random.fold_in(key_attach, t), (d,))
        _, chosen = jax.lax.top_k(scores, n_pick)
        # With fewer than m earlier nodes top_k also returns ineligible ones: mask them.
        new_parents = jnp.zeros(d, dtype=bool).at[chosen].set(True) & earlier
        adj = adj.at[:, t].set(new_parents.astype(jnp.float32))
        degree = degree + new_parents + jnp.where(idx == t, new_parents.sum(), 0.0)
        return adj, degree

    init = (jnp.zeros((d, d), jnp.float32), jnp.zeros(d, jnp.float32))
    adj, _ = jax.lax.fori_loop(1, d, attach, init)
    return permute_nodes(key_perm, adj)


def chain(d: int, key: jax.Array | None = None) -> jax.Array:
    """Chain DAG ``0 -> 1 -> ... -> d-1``; with ``key``, in a random node order.

    Returns:
        adj: ``[d, d] float32`` with ``d - 1`` edges.
    """
    adj = jnp.eye(d, k=1, dtype=jnp.float32)
    return adj if key is None else permute_nodes(key, adj)


def full(d: int, key: jax.Array | None = None) -> jax.Array:
    """Fully connected DAG (``i -> j`` for all ``i < j``); with ``key``, in a random order.

    Returns:
        adj: ``[d, d] float32`` with ``d (d - 1) / 2`` edges.
    """
    adj = jnp.triu(jnp.ones((d, d), jnp.float32), k=1)
    return adj if key is None else permute_nodes(key, adj)


@functools.partial(jax.jit, static_argnums=(1, 2))
def make_graph(key: jax.Array, cfg: GraphConfig, d: int) -> jax.Array:
    """Draws a DAG on ``d`` nodes as described by ``cfg``.

    Returns:
        adj: ``[d, d] float32`` DAG adjacency.
    """
    cfg.validate_for(d)
    if cfg.kind == "er":
        p = _edge_prob(d, cfg.edge_prob, cfg.expected_degree)
        return erdos_renyi(key, d, edge_prob=p)
    if cfg.kind == "scale_free":
        return scale_free(key, d, m=cfg.m)
    order_key = key if cfg.permute else None
    return chain(d, order_key) if cfg.kind == "chain" else full(d, order_key)


# --------------------------------------------------------------------------- queries


def _as_bool(adj: jax.Array | np.ndarray) -> jax.Array:
    adj = jnp.asarray(adj)
    if adj.ndim < 2 or adj.shape[-1] != adj.shape[-2]:
        raise ValueError(f"adj must have shape [..., d, d], got {adj.shape}")
    return adj != 0


@jax.jit
def transitive_closure(adj: jax.Array | np.ndarray) -> jax.Array:
    """Reachability by directed paths of length >= 1.

    Repeated squaring ``R <- R | R @ R`` doubles the covered path length, so
    ``ceil(log2 d)`` boolean matrix products cover all paths of length ``1..d``
    (enough to detect any cycle).

    Args:
        adj: ``[..., d, d]`` adjacency (nonzero = edge).

    Returns:
        reach: ``[..., d, d] bool``, ``reach[i, j]`` iff there is a path ``i -> ... -> j``.
    """
    reach = _as_bool(adj)
    d = reach.shape[-1]
    for _ in range((d - 1).bit_length()):  # 2 ** n_steps >= d
        r = reach.astype(jnp.float32)
        reach = reach | (r @ r > 0)
    return reach


@jax.jit
def is_dag(adj: jax.Array | np.ndarray) -> jax.Array:
    """True iff ``adj`` has no directed cycle (the closure has a zero diagonal).

    Returns:
        ``[...] bool``.
    """
    reach = transitive_closure(adj)
    return ~jnp.any(jnp.diagonal(reach, axis1=-2, axis2=-1), axis=-1)


@jax.jit
def topological_order(adj: jax.Array | np.ndarray) -> jax.Array:
    """A causal order of a DAG: every node comes after all of its parents.

    Sorts nodes by their number of ancestors, which strictly increases along each
    edge of a DAG (a child has its parent's ancestors plus the parent). The result
    is meaningless for cyclic graphs.

    Args:
        adj: ``[d, d]`` DAG adjacency.

    Returns:
        order: ``[d] int32`` node indices, causes first.
    """
    n_ancestors = transitive_closure(adj).sum(axis=-2)
    return jnp.argsort(n_ancestors, axis=-1, stable=True).astype(jnp.int32)


def parents(adj: jax.Array | np.ndarray, i: int | jax.Array) -> jax.Array:
    """``[d] bool`` mask of the parents of node ``i``."""
    return _as_bool(adj)[..., :, i]


def children(adj: jax.Array | np.ndarray, i: int | jax.Array) -> jax.Array:
    """``[d] bool`` mask of the children of node ``i``."""
    return _as_bool(adj)[..., i, :]


def descendants(adj: jax.Array | np.ndarray, i: int | jax.Array) -> jax.Array:
    """``[d] bool`` mask of nodes reachable from ``i`` (``i`` excluded in a DAG)."""
    return transitive_closure(adj)[..., i, :]


def ancestors(adj: jax.Array | np.ndarray, i: int | jax.Array) -> jax.Array:
    """``[d] bool`` mask of nodes with a path to ``i`` (``i`` excluded in a DAG)."""
    return transitive_closure(adj)[..., :, i]
