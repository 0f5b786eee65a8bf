"""A full-batch linear polish of a fitted latent-SCM encoder, by the fit's own likelihood.

A stochastic fit of the flow encoder ends with its latents leaked into one another by a
small *linear* map (``z_fit ~ z (I + a G)``, ``a`` ~ 0.03-0.1 at d = 8), the error the
exact DAG search cannot tell from an edge (BENCHMARKS.md, "The graph step"). With one
perfect intervention per latent and known targets, a linear map of the latents is
identifiable (Squires et al. 2023, linear causal disentanglement), so the leak can be undone
without ground truth. :func:`linear_polish` fits the map ``A`` maximizing the
linear-Gaussian latent SCM likelihood of ``z' = z_std A^T`` (``z_std``: the latents
standardized) in full batch and to convergence: L-BFGS in float64 on per-environment second
moments (each evaluation ``O(E d^3)``, whatever the number of samples). The SCM is the
complete DAG in a causal order, every mechanism profiled out in closed form (node ``j`` by
least squares on the samples where it is not intervened; an intervened ``z_j`` by its own
mean and variance per environment), plus ``N log|det A|``; the order comes from the exact
search (no penalty, so the best complete DAG over all orders) on the current ``z'``, and
``A`` and the order alternate until the order repeats.

:func:`polish_fit` folds the map into the encoder's last (dense) linear layer and replaces
the linear prior by its closed-form maximum at the polished latents, so a polished
:class:`~jaxcrl.crl.svi.FitResult` is an ordinary fit (same checkpoint, same methods). The
encoder's last layer is linear and the prior is this SCM family, so the polish moves only
the last layer and the prior: the flow's other layers, and their log-determinant, stay. It
is not quite coordinate ascent on the fit's objective: the fit's ``W`` is pushed toward a
DAG by a penalty but usually ends with cycles (``h(W)`` 0.02-0.23 on the default row), which
``log|det(I - W)|`` normalizes into a richer Gaussian family, while the polish's SCM is a
DAG; so the polished likelihood can be slightly lower than the fit's. It corrects small
leaks; it is not a search (from a gross mixing, MCC ~0.8, the alternation can settle in a
wrong order).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from jaxcrl.crl.discovery import exact_dag_search
from jaxcrl.scm.graphs import topological_order

_LOG_2PI = math.log(2 * math.pi)


def env_moments(z: np.ndarray, env: np.ndarray, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per environment: the sum of ``[1, z][1, z]^T`` ([E, d+1, d+1]) and the count ([E])."""
    za = np.concatenate([np.ones((len(z), 1)), np.asarray(z, np.float64)], 1)
    sums = np.stack([za[env == e].T @ za[env == e] for e in range(n_envs)])
    return sums, np.bincount(env, minlength=n_envs).astype(np.float64)


def _nll(targets: np.ndarray, order: tuple[int, ...]):
    """``nll(a, sums, counts)`` of :func:`order_nll` for one (targets, order) structure."""
    d = targets.shape[1]
    position = {j: k for k, j in enumerate(order)}
    keeps = [np.flatnonzero(~targets[:, j]) for j in range(d)]

    def nll(a, sums, counts):
        total = counts.sum()
        t = jnp.zeros((d + 1, d + 1)).at[0, 0].set(1.0).at[1:, 1:].set(a)
        mz = jnp.einsum("ab,ebc,dc->ead", t, sums, t)
        ll = total * jnp.linalg.slogdet(a)[1]
        for j in range(d):
            cols = [0] + [1 + i for i in order[:position[j]]] + [1 + j]
            gram = mz[keeps[j]].sum(0)[np.ix_(cols, cols)]
            n_j = counts[keeps[j]].sum()
            rss = jnp.linalg.cholesky(gram)[-1, -1] ** 2  # z_j's residual on [1, predecessors]
            ll -= 0.5 * n_j * (jnp.log(rss / n_j) + 1 + _LOG_2PI)
            for e in np.flatnonzero(targets[:, j]):  # an intervened z_j: own mean and variance
                var = mz[e, 1 + j, 1 + j] / counts[e] - (mz[e, 0, 1 + j] / counts[e]) ** 2
                ll -= 0.5 * counts[e] * (jnp.log(var) + 1 + _LOG_2PI)
        return -ll / total

    return nll


@functools.lru_cache(maxsize=64)
def _value_grad(order: tuple[int, ...], targets_bytes: bytes, shape: tuple[int, int]):
    """The jitted value and gradient in ``a`` of :func:`_nll`, compiled once per (order,
    targets) and shared by every run and round with that structure (the moments are
    arguments, not constants)."""
    targets = np.frombuffer(targets_bytes, bool).reshape(shape)
    return jax.jit(jax.value_and_grad(_nll(targets, order)))


def order_nll(sums: np.ndarray, counts: np.ndarray, targets: np.ndarray, order):
    """Negative log-likelihood per sample of ``z A^T`` as a function of ``A [d, d]``, under
    the complete DAG in ``order`` with perfect interventions at ``targets [E, d]`` and every
    mechanism profiled out. ``sums, counts``: :func:`env_moments` of ``z``. Call it under
    ``jax.enable_x64(True)``."""
    f = _nll(np.asarray(targets, bool), tuple(int(i) for i in order))
    return lambda a: f(a, jnp.asarray(sums), jnp.asarray(counts))


@dataclasses.dataclass(frozen=True)
class LinearPolish:
    """``z' = (z - mean) / std @ a.T``, fitted by :func:`linear_polish`.

    Attributes:
      mean, std: [d] the standardization of the fitted latents.
      a: [d, d] the map.
      order: [d] the causal order of the last round (roots first).
      history: per round ``{"order", "nll_start", "nll", "iterations"}`` (nll per sample).
    """

    mean: np.ndarray
    std: np.ndarray
    a: np.ndarray
    order: list[int]
    history: list[dict]

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.mean) / self.std @ self.a.T


def _check(z, env, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.asarray(z, np.float64)
    env = np.asarray(env)
    targets = np.asarray(targets, bool)
    if z.ndim != 2 or not np.isfinite(z).all():
        raise ValueError(f"z must be a finite [n, d] array, got shape {z.shape}"
                         + ("" if z.ndim != 2 else " with non-finite values"))
    d = z.shape[1]
    if env.shape != (len(z),) or targets.ndim != 2 or targets.shape[1] != d or (
            env.min() < 0 or env.max() >= targets.shape[0]):
        raise ValueError(f"env must be [n={len(z)}] indices into targets [E, d={d}]; got env "
                         f"{env.shape}, targets {targets.shape}")
    missing = [j for j in range(d) if not targets[:, j].any()]
    if missing or targets[0].any():
        raise ValueError("the polish needs environment 0 observational and every latent "
                         f"intervened somewhere; latents never intervened: {missing}")
    return z, env, targets


def linear_polish(z, env, targets, *, rounds: int = 4) -> LinearPolish:
    """Fits the map of one run's latents (see the module docstring).

    Args:
      z: [n, d] fitted latents; env: [n] environment indices; targets: [E, d] bool known
        perfect targets (row 0 observational).
      rounds: at most this many (order, ``A``) alternations.
    """
    z, env, targets = _check(z, env, targets)
    d = z.shape[1]
    mean, std = z.mean(0), z.std(0)
    zs = (z - mean) / std
    sums, counts = env_moments(zs, env, targets.shape[0])
    a = np.eye(d)
    history: list[dict] = []
    for _ in range(rounds):
        w, _ = exact_dag_search(zs @ a.T, env, targets, penalty=0.0)
        order = [int(i) for i in np.asarray(topological_order(w != 0))]
        if history and order == history[-1]["order"]:
            break
        value_grad = _value_grad(tuple(order), targets.tobytes(), targets.shape)
        with jax.enable_x64(True):
            moments = jnp.asarray(sums), jnp.asarray(counts)

            def fun(v, value_grad=value_grad, moments=moments):
                val, grad = value_grad(jnp.asarray(v).reshape(d, d), *moments)
                return float(val), np.asarray(grad, np.float64).ravel()

            start = fun(a.ravel())[0]
            res = scipy.optimize.minimize(fun, a.ravel(), jac=True, method="L-BFGS-B",
                                          options={"maxiter": 2000})
        a = res.x.reshape(d, d)
        history.append({"order": order, "nll_start": float(start), "nll": float(res.fun),
                        "iterations": int(res.nit)})
    return LinearPolish(mean, std, a, history[-1]["order"], history)


def scm_mle(z: np.ndarray, env: np.ndarray, targets: np.ndarray, order) -> dict:
    """Closed-form maximum of the linear-Gaussian SCM without intercepts over a shift.

    The complete DAG in ``order``: each mechanism's least-squares weights and intercept on
    the samples where it is not intervened, then the shift ``m = (I - W^T)^{-1} b`` that
    moves every intercept into the latents (``u = z - m`` has ``u_j = (u W)_j + noise``).

    Returns:
      ``{"shift": m [d], "w": [d, d], "log_scale": [d], "int_mean": [E, d],
      "int_log_scale": [E, d]}`` (intervention entries of untargeted pairs are 0).
    """
    z, env, targets = _check(z, env, targets)
    n_envs, d = targets.shape
    w = np.zeros((d, d))
    intercept, log_scale = np.zeros(d), np.zeros(d)
    for k, j in enumerate(order):
        keep = ~targets[env, j]
        xs = np.concatenate([np.ones((keep.sum(), 1)), z[keep][:, order[:k]]], 1)
        coef = np.linalg.lstsq(xs, z[keep, j], rcond=None)[0]
        intercept[j] = coef[0]
        w[order[:k], j] = coef[1:]
        log_scale[j] = 0.5 * math.log(np.mean((z[keep, j] - xs @ coef) ** 2))
    shift = np.linalg.solve(np.eye(d) - w.T, intercept)
    int_mean, int_log_scale = np.zeros((n_envs, d)), np.zeros((n_envs, d))
    for e, j in zip(*np.nonzero(targets), strict=True):
        v = z[env == e, j]
        int_mean[e, j] = v.mean() - shift[j]
        int_log_scale[e, j] = math.log(v.std())
    return {"shift": shift, "w": w, "log_scale": log_scale, "int_mean": int_mean,
            "int_log_scale": int_log_scale}


def loglik(result, x, env, targets) -> np.ndarray:
    """[S] mean exact log-likelihood per sample of a linear-prior flow fit: the prior's
    ``log p_e(z)`` (``log|det(I - W_e)|`` included) plus the flow's log-determinant, on the
    preprocessed ``x`` (the preprocessing's own constant left out). ``x [S, N, D]``,
    ``env [S, N]``, ``targets [S, E, d]``."""
    from jaxcrl.crl import prior as prior_lib
    from jaxcrl.crl.models import flow_encoder

    net = flow_encoder(result.cfg)

    def one(p, pre, xx, ee, tt):
        z, logdet = net.apply({"params": p["encoder$params"]}, pre(xx))
        lp = prior_lib.log_prob(p["prior"], z, ee, targets=tt.astype(z.dtype))
        return jnp.mean(lp + logdet)

    return np.asarray(jax.jit(jax.vmap(one))(result.params, result.preprocess,
                                             jnp.asarray(x, jnp.float32), jnp.asarray(env),
                                             jnp.asarray(targets)), np.float64)


def polish_fit(result, x, env, targets, *, keep: str = "likelihood"):
    """A :class:`~jaxcrl.crl.svi.FitResult` with its runs polished: the map folded into
    the flow encoder's last dense linear layer, the linear prior replaced by its closed-form
    maximum at the polished latents (:func:`scm_mle`).

    The polished model is a DAG, the fit's prior need not be (see the module docstring), so
    the polish can lower the fit's own likelihood. ``keep="likelihood"`` (the default) keeps
    a run's polish only if its exact log-likelihood of ``x`` (:func:`loglik`) is at least the
    fit's, so the polish never lowers the objective the fit maximized; ``"always"`` keeps
    every polish. Adds to ``history``: ``"polish"`` (per run the rounds of
    :func:`linear_polish`), ``"polish_loglik"`` ([S, 2]: the fit's and the polished log-
    likelihood per sample) and ``"polish_kept"`` ([S] bool).

    Args:
      result: a ``latent_scm`` fit with the linear prior, known perfect targets and
        ``flow_linear="dense"``.
      x: [N, D] or [S, N, D] the data it was fitted on; env: [N] or [S, N];
      targets: [E, d] or [S, E, d] bool.
      keep: ``"likelihood"`` or ``"always"``.
    """
    from jaxcrl.crl.svi import FitResult

    if keep not in ("likelihood", "always"):
        raise ValueError(f"keep must be 'likelihood' or 'always', got {keep!r}")

    cfg = result.cfg
    if not cfg.can_polish:
        raise ValueError(
            "polish_fit needs a latent_scm fit with the linear prior, known perfect targets "
            f"and flow_linear='dense'; got method={cfg.method!r}, scm={cfg.scm!r}, "
            f"targets={cfg.targets!r}, intervention={cfg.intervention!r}, "
            f"flow_linear={cfg.flow_linear!r}")
    z = np.asarray(result.encode(x), np.float64)
    n_runs = result.n_runs
    env = np.broadcast_to(np.asarray(env), z.shape[:2])
    targets = np.broadcast_to(np.asarray(targets, bool),
                              (n_runs, *np.shape(targets)[-2:]))
    enc = dict(result.params["encoder$params"])
    last = f"DenseLinear_{cfg.flow_layers}"
    if last not in enc or set(enc[last]) != {"w", "bias"}:
        raise ValueError(f"the flow encoder has no last dense layer {last!r}")
    layer_w = np.array(enc[last]["w"], np.float64)
    layer_b = np.array(enc[last]["bias"], np.float64)
    prior = jax.tree_util.tree_map(lambda v: np.array(v, np.float64), result.params["prior"])
    fields = {k: getattr(prior, k) for k in ("w", "log_scale", "int_mean", "int_log_scale")}
    rounds = []
    for r in range(n_runs):
        pol = linear_polish(z[r], env[r], targets[r])
        mle = scm_mle(pol(z[r]), env[r], targets[r], pol.order)
        # z'' = (z - mean) / std @ A^T - shift = z @ M + c
        m = (pol.a / pol.std[None, :]).T
        c = -pol.mean @ m - mle["shift"]
        full = np.eye(len(m)) + layer_w[r]
        layer_w[r] = full @ m - np.eye(len(m))
        layer_b[r] = layer_b[r] @ m + c
        for k in fields:
            fields[k][r] = np.where(targets[r], mle[k], fields[k][r]) if k.startswith(
                "int_") else mle[k]
        rounds.append(pol.history)
    enc = {**enc, last: {"w": jnp.asarray(layer_w, jnp.float32),
                         "bias": jnp.asarray(layer_b, jnp.float32)}}
    new_prior = dataclasses.replace(
        result.params["prior"], **{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})
    params = {**result.params, "encoder$params": enc, "prior": new_prior}
    polished = FitResult(cfg=cfg, params=params, preprocess=result.preprocess,
                         history=dict(result.history), wall_s=result.wall_s)
    xs = np.broadcast_to(np.asarray(x, np.float32), (n_runs, *np.shape(x)[-2:]))
    ll = np.stack([loglik(result, xs, env, targets), loglik(polished, xs, env, targets)], 1)
    kept = ll[:, 1] >= ll[:, 0] if keep == "likelihood" else np.ones(n_runs, bool)
    polished.params = jax.tree.map(
        lambda new, old: jnp.where(kept.reshape(-1, *[1] * (new.ndim - 1)), new, old),
        params, result.params)
    polished.history.update(polish=rounds, polish_loglik=ll, polish_kept=kept)
    return polished
