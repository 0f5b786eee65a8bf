"""Exact score-based DAG search over (learned) latents with interventional data.

Given latents ``z [n, d]`` (e.g. a fitted encoder's output), their environments and the
intervention targets per environment, find the DAG maximizing the decomposable
*interventional BIC* score of a linear-Gaussian SCM:

    score(G) = sum_j  BIC_j(pa_j),   BIC_j(S) = loglik of OLS z_j ~ [1, z_S] on the samples
                                     where j is NOT intervened  -  (|S| + 2)/2 log n_j

Samples where ``j`` is intervened do not inform ``j``'s mechanism (a perfect intervention
replaces it), which is what orients edges: intervening on a cause changes the effect's
distribution, not the other way round.

The maximum over all DAGs is exact, by dynamic programming over subsets (Silander &
Myllymäki 2006): best parent sets within every candidate set, then the best order.
Cost: ``d 2^(d-1)`` least-squares fits on ``(d+1) x (d+1)`` Gram blocks; fine up to d ~ 12.

:func:`nonlinear_dag_search` runs the same dynamic programme with a nonlinear local model
(a location-scale regression on random tanh features of the parent set), for nonlinear
mechanisms whose parents leave little linear trace, or act on the child's spread: it returns
each chosen edge's (likelihood) partial R² instead of a weight.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import numpy as np


def _node_grams(z: np.ndarray, env: np.ndarray, targets: np.ndarray):
    """Per node j: Gram matrix of [1, z] over samples where j is not intervened, and n_j."""
    n, d = z.shape
    za = np.concatenate([np.ones((n, 1)), z], axis=1)
    grams, counts = [], []
    for j in range(d):
        keep = ~targets[env, j]
        zk = za[keep]
        grams.append(zk.T @ zk)
        counts.append(int(keep.sum()))
    return grams, counts


def _local_bic(
    gram: np.ndarray, n: int, j: int, parents: tuple[int, ...]
) -> tuple[float, np.ndarray]:
    """BIC and OLS coefficients of z_j on [1, z_parents] from the Gram matrix of [1, z]."""
    cols = [0] + [p + 1 for p in parents]
    g = gram[np.ix_(cols, cols)]
    b = gram[cols, j + 1]
    coef = np.linalg.solve(g + 1e-9 * np.eye(len(cols)), b)
    rss = gram[j + 1, j + 1] - 2 * coef @ b + coef @ g @ coef
    var = max(rss / n, 1e-12)
    loglik = -0.5 * n * (math.log(2 * math.pi * var) + 1.0)
    return loglik - 0.5 * (len(parents) + 2) * math.log(n), coef[1:]


def exact_dag_search(
    z: np.ndarray, env: np.ndarray, targets: np.ndarray, *, penalty: float = 1.0,
    min_r2: float = 0.0,
) -> tuple[np.ndarray, float]:
    """The BIC-optimal DAG over ``z`` by exact dynamic programming.

    Args:
      z: [n, d] latents.
      env: [n] int environment index per sample.
      targets: [E, d] bool intervention targets (row of env 0 all False).
      penalty: multiplier of the BIC complexity term (1 = BIC).
      min_r2: an effect-size charge per parent of ``-(n_j / 2) log(1 - min_r2)``: a parent
        is worth adding only if it explains at least about ``min_r2`` of its child's
        remaining variance (its partial R²), whatever ``n_j``. BIC alone charges
        ``log(n_j) / 2``, which at ``n_j`` ~ 1e5 keeps parents with partial R² ~ 1e-4:
        every small leak between imperfectly recovered latents becomes an edge.

    Returns:
      ``(weights [d, d], score)``: OLS weights of the chosen parents (``W[i, j]`` for
      ``i -> j``, zero elsewhere) and the optimal total (penalized) score.
    """
    if not 0.0 <= min_r2 < 1.0:
        raise ValueError(f"min_r2 must be in [0, 1), got {min_r2}")
    z, env, targets = _check(z, env, targets)
    d = z.shape[1]
    grams, counts = _node_grams(z, env, targets)

    def local(j, parents):
        score, _ = _local_bic(grams[j], counts[j], j, parents)
        return _penalized(score, parents, counts[j], penalty, min_r2)

    score, parents = _best_dag(d, local)
    weights = np.zeros((d, d))
    for j, pa in enumerate(parents):
        weights[list(pa), j] = _local_bic(grams[j], counts[j], j, pa)[1]
    return weights, score


def pruned_dag_search(
    z: np.ndarray, env: np.ndarray, targets: np.ndarray, *, min_r2: float = 0.0,
    edge_threshold: float = 0.0,
) -> np.ndarray:
    """:func:`exact_dag_search`, then edges with ``|W[i, j]| sd(z_i) / sd(z_j)`` (standard
    deviations in environment 0) below ``edge_threshold`` set to zero: ``[d, d]`` weights."""
    w, _ = exact_dag_search(z, env, targets, min_r2=min_r2)
    sd = np.asarray(z, np.float64)[np.asarray(env) == 0].std(0) + 1e-12
    return np.where(np.abs(w * sd[:, None] / sd[None, :]) >= edge_threshold, w, 0.0)


def _check(z, env, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.asarray(z, np.float64)
    env = np.asarray(env)
    targets = np.asarray(targets, bool)
    d = z.shape[1]
    if d > 14:
        raise ValueError(f"exact DAG search is exponential in d; d={d} is too large (max 14)")
    if targets.ndim != 2 or targets.shape[1] != d or env.max() >= targets.shape[0]:
        raise ValueError(f"targets must be [E, d={d}] covering env indices, got {targets.shape}")
    if not np.isfinite(z).all():
        raise ValueError("z has non-finite values")
    return z, env, targets


def _best_dag(d: int, local: Callable[[int, tuple[int, ...]], float]
              ) -> tuple[float, list[tuple[int, ...]]]:
    """Exact maximum of ``sum_j local(j, pa_j)`` over DAGs on ``d`` nodes (Silander &
    Myllymäki's dynamic programme); ``(score, parents per node)``."""
    full = (1 << d) - 1
    # best[j][mask]: best (score, parents) for node j with parents within `mask` (j not in it).
    best = []
    for j in range(d):
        table: dict[int, tuple[float, tuple[int, ...]]] = {}
        others = [i for i in range(d) if i != j]
        for size in range(len(others) + 1):
            for subset in itertools.combinations(others, size):
                mask = sum(1 << i for i in subset)
                cand = (local(j, subset), subset)
                for i in subset:  # best within a strictly smaller candidate set
                    sub = table[mask & ~(1 << i)]
                    if sub[0] > cand[0]:
                        cand = sub
                table[mask] = cand
        best.append(table)

    # order DP: opt[U] = best score of a DAG on node set U where U's nodes come first.
    opt = {0: (0.0, ())}
    for mask in range(1, full + 1):
        choice = None
        for j in range(d):
            if mask >> j & 1:
                rest = mask & ~(1 << j)
                sc = opt[rest][0] + best[j][rest][0]
                if choice is None or sc > choice[0]:
                    choice = (sc, (*opt[rest][1], j))
        opt[mask] = choice
    score, order = opt[full]
    parents: list[tuple[int, ...]] = [()] * d
    placed = 0
    for j in order:
        parents[j] = best[j][placed][1]
        placed |= 1 << j
    return float(score), parents


def nonlinear_dag_search(
    z: np.ndarray, env: np.ndarray, targets: np.ndarray, *, key: jax.Array,
    n_features: int = 16, penalty: float = 1.0, noise: str = "heteroscedastic"
) -> tuple[np.ndarray, float]:
    """The BIC-optimal DAG over ``z`` for *nonlinear* mechanisms, by the same exact search.

    The local model of ``z_j`` given parents ``S`` is a regression on random features
    ``phi_S = [1, z_S, tanh(z_S A_S + b_S)]`` (``c`` columns, ``n_features`` tanh units per
    parent set, ``A_S ~ N(0, 1.5² / |S|)``, ``b_S ~ U(-2, 2)``, drawn from ``key``; ``z``
    standardized first), fitted by maximum likelihood on the samples where ``j`` is not
    intervened, with Gaussian noise:

    - ``noise="homoscedastic"``: ``z_j = phi_S beta + sigma eps`` (an additive-noise model),
      least squares from per-environment Gram matrices; ``c + 1`` parameters.
    - ``noise="heteroscedastic"`` (default): ``z_j = phi_S beta + exp(phi_S gamma / 2) eps``,
      the location-scale family, which contains the additive one: a parent may act through
      the child's spread as well as its mean. Fitted by alternating weighted least squares
      for ``beta`` and Fisher scoring for ``gamma`` (10 rounds, from the homoscedastic fit;
      the homoscedastic likelihood is a floor); ``2c`` parameters.

    BIC penalty ``penalty * (parameters)/2 log n_j``. A linear score misreads nonlinear
    mechanisms: on the true latents of the location-scale rows it needs a pruning threshold
    that also removes weak true edges (BENCHMARKS, "The flow-prior rows at the new default").

    Returns:
      ``(effects [d, d], score)``: ``effects[i, j]`` for a chosen edge ``i -> j`` is
      ``1 - exp(-2 (l(pa_j) - l(pa_j \\ {i})) / n_j)`` in ``[0, 1]`` with ``l`` the fitted
      log-likelihood: for the homoscedastic model exactly the partial R²
      ``1 - RSS(pa_j) / RSS(pa_j \\ {i})``, in general its likelihood analogue (Cox-Snell);
      zero off the chosen edges.
    """
    if noise not in ("homoscedastic", "heteroscedastic"):
        raise ValueError(f"noise must be 'homoscedastic' or 'heteroscedastic', got {noise!r}")
    z, env, targets = _check(z, env, targets)
    n, d = z.shape
    z = (z - z.mean(0)) / (z.std(0) + 1e-12)
    envs = np.unique(env)
    keep_env = ~targets[envs]  # [E', d]: env e informs node j's mechanism
    subsets = [s for k in range(d) for s in itertools.combinations(range(d), k)]
    draws = {}  # subset -> (A, b)
    for s, k in zip(subsets, jax.random.split(key, len(subsets)), strict=True):
        if s:
            ka, kb = jax.random.split(k)
            draws[s] = (
                np.asarray(jax.random.normal(ka, (len(s), n_features))) * 1.5 / math.sqrt(len(s)),
                np.asarray(jax.random.uniform(kb, (n_features,), minval=-2.0, maxval=2.0)))

    def features(rows, s):
        cols = [np.ones((int(rows.sum()), 1))]
        if s:
            a, b = draws[s]
            zs = z[rows][:, s]
            cols += [zs, np.tanh(zs @ a + b)]
        return np.concatenate(cols, axis=1)

    if noise == "homoscedastic":
        stats = {}  # subset -> per-env Gram of [features, z]: [E', c + d, c + d]
        for s in subsets:
            grams = []
            for e in envs:
                m = np.concatenate([features(env == e, s), z[env == e]], axis=1)
                grams.append(m.T @ m)
            stats[s] = np.stack(grams)
    counts = keep_env.T @ np.bincount(env)[envs]  # [d] samples informing node j
    cache: dict[tuple[int, tuple[int, ...]], tuple[float, float]] = {}

    def fit(j, parents):  # -> (penalized score, log-likelihood)
        if (j, parents) not in cache:
            nj = counts[j]
            if noise == "homoscedastic":
                g_all = np.tensordot(keep_env[:, j].astype(float), stats[parents], 1)
                c = g_all.shape[0] - d
                g, b, yy = g_all[:c, :c], g_all[:c, c + j], g_all[c + j, c + j]
                coef = np.linalg.solve(g + 1e-9 * np.trace(g) / c * np.eye(c), b)
                rss = max(yy - 2 * coef @ b + coef @ g @ coef, 1e-12 * yy)
                loglik, n_par = -0.5 * nj * (math.log(2 * math.pi * rss / nj) + 1.0), c + 1
            else:
                rows = ~targets[env, j]
                x = features(rows, parents)
                loglik, n_par = _location_scale_loglik(x, z[rows, j]), 2 * x.shape[1]
            cache[(j, parents)] = (loglik - penalty * 0.5 * n_par * math.log(nj), loglik)
        return cache[(j, parents)]

    score, parents = _best_dag(d, lambda j, pa: fit(j, pa)[0])
    effects = np.zeros((d, d))
    for j, pa in enumerate(parents):
        loglik = fit(j, pa)[1]
        for i in pa:
            gain = loglik - fit(j, tuple(p for p in pa if p != i))[1]
            effects[i, j] = -math.expm1(-2.0 * gain / counts[j])
    return np.clip(effects, 0.0, 1.0), score


def _location_scale_loglik(x: np.ndarray, y: np.ndarray, rounds: int = 10) -> float:
    """Maximized Gaussian log-likelihood of ``y ~ N(x beta, exp(x gamma))`` ([n, c] design
    ``x`` with an intercept column first, [n] ``y``): alternating weighted least squares for
    ``beta`` and Fisher scoring for ``gamma`` (its expected information is ``x^T x / 2``),
    started at the homoscedastic fit, whose likelihood is returned if that is higher."""
    n, c = x.shape
    gram = x.T @ x
    ridge = 1e-9 * np.trace(gram) / c * np.eye(c)
    beta = np.linalg.solve(gram + ridge, x.T @ y)
    r2 = (y - x @ beta) ** 2
    var0 = max(r2.mean(), 1e-12 * float(y @ y) / n + 1e-300)
    homo = -0.5 * n * (math.log(2 * math.pi * var0) + 1.0)
    gamma = np.zeros(c)
    gamma[0] = math.log(var0)
    scoring = np.linalg.inv(gram + 1e-6 * np.trace(gram) / c * np.eye(c))
    for _ in range(rounds):
        gamma = gamma + scoring @ (x.T @ (r2 * np.exp(-np.clip(x @ gamma, -30, 30)) - 1.0))
        w = np.exp(-np.clip(x @ gamma, -30, 30))
        beta = np.linalg.solve((x * w[:, None]).T @ x + ridge, (x * w[:, None]).T @ y)
        r2 = (y - x @ beta) ** 2
    log_var = np.clip(x @ gamma, -30, 30)
    hetero = -0.5 * float(np.sum(math.log(2 * math.pi) + log_var + r2 * np.exp(-log_var)))
    return max(hetero, homo) if np.isfinite(hetero) else homo


def _penalized(bic: float, parents: tuple[int, ...], n: int, penalty: float,
               min_r2: float = 0.0) -> float:
    """``bic`` with its complexity term scaled by ``penalty`` and, per parent, the
    effect-size charge ``-(n / 2) log(1 - min_r2)`` of :func:`exact_dag_search`."""
    if penalty == 1.0 and min_r2 == 0.0:
        return bic
    extra = (penalty - 1.0) * 0.5 * (len(parents) + 2) * math.log(n)
    return bic - extra + 0.5 * n * math.log1p(-min_r2) * len(parents)
