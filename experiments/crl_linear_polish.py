"""Does a linear correction of saved fits' latents, fitted by the same likelihood, help?

Command::

    python experiments/crl_generalization.py --out out/d8_s0 --seeds 5 --set seed=0 \
        --save --rows 'd=8'
    python experiments/crl_linear_polish.py --out out/d8_s0 --seeds 5 --set seed=0 --rows 'd=8'

The graph step's sensitivity study (BENCHMARKS.md) found that a small *linear* leak of
latents into one another (``z (I + a G)``) is what the exact DAG search cannot tell from an
edge. With perfect single-node interventions on every latent a linear map of the latents is
identifiable (Squires et al. 2023, linear causal disentanglement), so such a leak can in
principle be undone without ground truth: this script fits, per data set, the map ``A``
maximizing the linear-Gaussian latent SCM likelihood of ``z' = z_std A^T`` (``z_std``: the
fitted latents standardized), with the known targets, in full batch and to convergence
(L-BFGS in float64 on per-environment second moments, so each evaluation is ``O(E d^3)``).
The SCM is the complete DAG in a causal order, with every mechanism's weights, intercept and
noise variance profiled out in closed form: node ``j``'s mechanism by least squares on the
samples where it is not intervened, each intervened environment's ``z_j`` by its own mean
and variance, plus ``log|det A|``. The order comes from the exact search (no penalty) on the
current ``z'``; ``A`` and the order alternate until the order repeats.

The fitted encoder's last layer is linear and the fit's prior is this SCM family with a
sparse ``W``, so the map is coordinate ascent on the fit's own objective (the flow's
log-determinant does not depend on ``A``). The row's data are rebuilt from the row's
arguments (same keys) and the fits loaded from ``OUT/<row>/ckpt_latent_scm``; MCC and SHD
(exact search, prune 0.3: the row's graph step) are scored before and after, per data set,
into ``OUT/<row>/linear_polish<tag>.json``. Nothing read from the files chooses code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from crl_generalization import ALIASES, BASE, row_slug

from jaxcrl.config import apply_overrides, parse_config
from jaxcrl.crl.discovery import exact_dag_search, pruned_dag_search
from jaxcrl.crl.svi import load_fit
from jaxcrl.crl.synthetic import GENERALIZATION_ROWS, simulate, variant
from jaxcrl.metrics import mcc, shd
from jaxcrl.metrics.identifiability import score_latents
from jaxcrl.scm.graphs import topological_order

_LOG_2PI = float(np.log(2 * np.pi))


def env_moments(z: np.ndarray, env: np.ndarray, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per environment: the sum of ``[1, z][1, z]^T`` ([E, d+1, d+1]) and the count ([E])."""
    za = np.concatenate([np.ones((len(z), 1)), z], 1)
    sums = np.stack([za[env == e].T @ za[env == e] for e in range(n_envs)])
    return sums, np.bincount(env, minlength=n_envs).astype(np.float64)


def order_nll(sums: np.ndarray, counts: np.ndarray, targets: np.ndarray, order):
    """Negative log-likelihood per sample of ``z A^T`` as a function of ``A [d, d]``, under
    the complete DAG in ``order`` with perfect interventions at ``targets [E, d]``, every
    mechanism profiled out (must be called under ``jax.enable_x64``)."""
    n_envs, d1, _ = sums.shape
    d = d1 - 1
    position = {j: k for k, j in enumerate(order)}
    total = counts.sum()

    def nll(a):
        t = jnp.zeros((d1, d1)).at[0, 0].set(1.0).at[1:, 1:].set(a)
        mz = jnp.einsum("ab,ebc,dc->ead", t, jnp.asarray(sums), t)
        ll = total * jnp.linalg.slogdet(a)[1]
        for j in range(d):
            keep = np.flatnonzero(~targets[:, j])
            cols = [0] + [1 + i for i in order[:position[j]]] + [1 + j]
            gram = mz[keep].sum(0)[np.ix_(cols, cols)]
            n_j = counts[keep].sum()
            rss = jnp.linalg.cholesky(gram)[-1, -1] ** 2  # residual of z_j on [1, predecessors]
            ll -= 0.5 * n_j * (jnp.log(rss / n_j) + 1 + _LOG_2PI)
            for e in np.flatnonzero(targets[:, j]):  # an intervened z_j: its own mean, variance
                var = mz[e, 1 + j, 1 + j] / counts[e] - (mz[e, 0, 1 + j] / counts[e]) ** 2
                ll -= 0.5 * counts[e] * (jnp.log(var) + 1 + _LOG_2PI)
        return -ll / total

    return nll


def linear_polish(z: np.ndarray, env: np.ndarray, targets: np.ndarray, *, rounds: int = 4
                  ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``(z' [n, d], A [d, d], history)``: the standardized ``z`` mapped by the fitted ``A``.

    Args:
      z: [n, d] latents; env: [n] environment indices; targets: [E, d] bool known targets.
      rounds: at most this many (order, ``A``) alternations.
    """
    z = np.asarray(z, np.float64)
    env = np.asarray(env)
    targets = np.asarray(targets, bool)
    if z.ndim != 2 or not np.isfinite(z).all():
        raise ValueError(f"z must be a finite [n, d] array, got shape {z.shape}")
    d = z.shape[1]
    zs = (z - z.mean(0)) / z.std(0)
    sums, counts = env_moments(zs, env, targets.shape[0])
    a = np.eye(d)
    history: list[dict] = []
    for _ in range(rounds):
        w, _ = exact_dag_search(zs @ a.T, env, targets, penalty=0.0)
        order = [int(i) for i in np.asarray(topological_order(w != 0))]
        if history and order == history[-1]["order"]:
            break
        with jax.enable_x64(True):
            value_grad = jax.jit(jax.value_and_grad(
                lambda v, f=order_nll(sums, counts, targets, order): f(v.reshape(d, d))))

            def fun(v, value_grad=value_grad):
                val, grad = value_grad(jnp.asarray(v))
                return float(val), np.asarray(grad, np.float64)

            start = float(fun(a.ravel())[0])
            res = scipy.optimize.minimize(fun, a.ravel(), jac=True, method="L-BFGS-B",
                                          options={"maxiter": 2000})
        a = res.x.reshape(d, d)
        history.append({"order": order, "nll_start": start, "nll": float(res.fun),
                        "iterations": int(res.nit)})
    return zs @ a.T, a, history


def score(z_true, z, env, targets, adj, seed: int) -> dict:
    """MCC (out of sample) and the row's graph step's SHD of latents ``z``."""
    matched = mcc(z_true, z)
    w = pruned_dag_search(z, env, targets, edge_threshold=0.3)
    return {"mcc_pearson_oos": score_latents(z_true, z, seed=seed)["mcc_pearson_oos"],
            "shd": float(shd(adj, w, perm=matched.perm)),
            "mcc_per_latent": [float(c) for c in matched.matched]}


def polish_row(cfg, fit_dir: Path) -> dict:
    data = simulate(cfg)
    fit = load_fit(fit_dir / "ckpt_latent_scm")
    if fit.cfg.targets != "known" or fit.cfg.intervention != "perfect":
        raise ValueError("the polish needs known perfect interventions")
    z_hat = np.asarray(fit.encode(data.x))
    per_seed = []
    for r in range(cfg.seeds):
        z_true, env = np.asarray(data.z[r]), np.asarray(data.env[r])
        targets, adj = np.asarray(data.targets[r], bool), np.asarray(data.adj[r]) != 0
        t0 = time.perf_counter()
        z_pol, a, hist = linear_polish(z_hat[r], env, targets)
        wall = time.perf_counter() - t0
        before = score(z_true, z_hat[r], env, targets, adj, r)
        after = score(z_true, z_pol, env, targets, adj, r)
        rel = a / np.diag(a)[:, None]  # the map with unit diagonal: its off-diagonal is the leak
        off = rel[~np.eye(len(a), dtype=bool)]
        per_seed.append({"before": before, "after": after, "history": hist, "wall_s": wall,
                         "map_offdiag_rms": float(np.sqrt(np.mean(off ** 2)))})
        print(f"seed {r}: MCC {before['mcc_pearson_oos']:.3f} -> {after['mcc_pearson_oos']:.3f}, "
              f"SHD {before['shd']:.0f} -> {after['shd']:.0f} ({wall:.0f} s)", flush=True)
    mean = {f"{k}_{when}": float(np.mean([s[when][k] for s in per_seed]))
            for when in ("before", "after") for k in ("mcc_pearson_oos", "shd")}
    return {"per_seed": per_seed, **mean}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the fits' --out of crl_generalization.py")
    p.add_argument("--tag", default="")
    p.add_argument("--rows", required=True, help="'|'-separated row names")
    p.add_argument("--row-set", action="append", default=[], metavar="PATH=VALUE")
    args, base = parse_config(p, BASE, argv, aliases=ALIASES)
    names = [r for r in args.rows.split("|") if r]
    unknown = set(names) - set(GENERALIZATION_ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {list(GENERALIZATION_ROWS)}")
    for name in names:
        cfg = apply_overrides(variant(base, name), args.row_set)
        fit_dir = Path(args.out, row_slug(name))
        res = polish_row(cfg, fit_dir)
        path = fit_dir / f"linear_polish{args.tag}.json"
        path.write_text(json.dumps({"row": name, "seed": cfg.seed, **res}, indent=2))
        print(f"{name}: MCC {res['mcc_pearson_oos_before']:.3f} -> "
              f"{res['mcc_pearson_oos_after']:.3f}, SHD {res['shd_before']:.1f} -> "
              f"{res['shd_after']:.1f}: {path}", flush=True)


if __name__ == "__main__":
    main()
