"""Probes on raw activations and SAE latents, SAEBench-style sparse probing, identifiability.

- :func:`fit_ridge`, :func:`predict_linear`: the library's one ridge regression
  (:mod:`jaxcrl.metrics.regression`, re-exported here for probing SAE latents).
- :func:`fit_logistic`: binary logistic regression with an L2 penalty on standardised
  features, ``steps`` iterations of L-BFGS (optax) inside one ``lax.scan`` (jit-ed).
- :func:`logistic_probe`: fit on a training split, accuracy on a held-out split.
- :func:`sparse_probe`: SAEBench sparse probing: rank latents by
  ``|mean_pos − mean_neg|`` on the training split, keep the top ``k``, fit a logistic probe
  on those, report held-out accuracy for each ``k`` (and for all features).
- :func:`identifiability`: MCC (Hungarian) and R² of SAE latents against ground-truth
  latents through :mod:`jaxcrl.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.metrics import mcc, r2
from jaxcrl.metrics.regression import RidgeFit, fit_ridge, predict_linear

__all__ = ["LogisticProbe", "RidgeFit", "accuracy", "fit_logistic", "fit_ridge",
           "identifiability", "logistic_probe", "predict_linear", "predict_logistic",
           "rank_by_mean_difference", "sparse_probe"]


class LogisticProbe(NamedTuple):
    """``p(y=1|x) = σ(((x − mean)/scale) @ w + b)``."""

    w: jax.Array
    b: jax.Array
    mean: jax.Array
    scale: jax.Array


def _check_xy(x: Any, y: Any, name: str = "x") -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, d], got shape {x.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} has {x.shape[0]} rows but y has {y.shape[0]}")
    if not bool(jnp.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x, y


@partial(jax.jit, static_argnames=("steps",))
def _logistic(x, y, l2, steps):
    mean = x.mean(0)
    scale = jnp.where(x.std(0) > 1e-8, x.std(0), 1.0)
    xs = (x - mean) / scale

    def objective(p):
        logits = xs @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(logits, y).mean() + 0.5 * l2 * jnp.sum(
            p["w"] ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)
    p0 = {"w": jnp.zeros(x.shape[1], jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def body(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return (optax.apply_updates(p, updates), state), value

    (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), None, length=steps)
    return LogisticProbe(p["w"], p["b"], mean, scale)


def fit_logistic(x: Any, y: Any, *, l2: float = 1e-3, steps: int = 200) -> LogisticProbe:
    """Binary logistic regression with L2 penalty ``l2/2 ‖w‖²`` on standardised features.

    Args:
      x: ``[n, d]`` features.
      y: ``[n]`` labels in {0, 1}.
      l2: penalty on the weights (not the bias), per example-averaged loss.
      steps: L-BFGS iterations (with zoom line search), run in one ``lax.scan``.
    """
    x, y = _check_xy(x, y)
    if y.ndim != 1:
        raise ValueError(f"y must be [n] binary labels, got shape {y.shape}")
    return _logistic(x, y.astype(jnp.float32), jnp.float32(l2), steps)


def predict_logistic(probe: LogisticProbe, x: Any) -> jax.Array:
    """``p(y=1|x)`` ``[n]``."""
    xs = (jnp.asarray(x, jnp.float32) - probe.mean) / probe.scale
    return jax.nn.sigmoid(xs @ probe.w + probe.b)


def accuracy(probe: LogisticProbe, x: Any, y: Any) -> float:
    """Fraction of ``y`` predicted correctly at threshold 1/2."""
    return float(((predict_logistic(probe, x) > 0.5) == (jnp.asarray(y) > 0.5)).mean())


def logistic_probe(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                   l2: float = 1e-3, steps: int = 200) -> dict[str, float]:
    """Fits on the training split; ``{"train_accuracy", "test_accuracy"}``."""
    p = fit_logistic(x_train, y_train, l2=l2, steps=steps)
    return {"train_accuracy": accuracy(p, x_train, y_train),
            "test_accuracy": accuracy(p, x_test, y_test)}


def rank_by_mean_difference(x: Any, y: Any) -> np.ndarray:
    """Feature indices ``[d]`` sorted by ``|mean(x | y=1) − mean(x | y=0)|``, largest first."""
    x, y = _check_xy(x, y)
    pos = y > 0.5
    if not bool(pos.any()) or bool(pos.all()):
        raise ValueError("y must contain both classes")
    diff = jnp.abs(x[pos].mean(0) - x[~pos].mean(0))
    return np.argsort(-np.asarray(diff), kind="stable")


def sparse_probe(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                 ks: Sequence[int] = (1, 2, 5), l2: float = 1e-3, steps: int = 200,
                 full: bool = True) -> dict[str, Any]:
    """SAEBench sparse probing on features ``x`` (SAE latents or raw channels).

    Ranks features by the class-mean difference on the training split, keeps the top
    ``k``, and fits an L2 logistic probe on them.

    Returns:
      ``{"k": {k: test_accuracy}, "features": {k: indices}, "full": test_accuracy}``
      (``full`` uses every feature; omitted when ``full=False``).
    """
    order = rank_by_mean_difference(x_train, y_train)
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    out: dict[str, Any] = {"k": {}, "features": {}}
    for k in ks:
        idx = order[:k]
        out["k"][int(k)] = logistic_probe(x_train[:, idx], y_train, x_test[:, idx], y_test,
                                          l2=l2, steps=steps)["test_accuracy"]
        out["features"][int(k)] = idx.tolist()
    if full:
        out["full"] = logistic_probe(x_train, y_train, x_test, y_test, l2=l2,
                                     steps=steps)["test_accuracy"]
    return out


def identifiability(z_sae: Any, z_true: Any, *, method: str = "pearson",
                    r2_regressor: str = "linear", alive_only: bool = True) -> dict[str, Any]:
    """How well SAE latents identify ground-truth latents.

    Args:
      z_sae: ``[n, d_sae]`` SAE latents.
      z_true: ``[n, d_true]`` ground-truth latents.
      method: MCC correlation, ``pearson`` or ``spearman``.
      r2_regressor: ``linear`` or ``kernel`` (see :func:`jaxcrl.metrics.r2`).
      alive_only: drop latents that never fire (constant columns) first.

    Returns:
      ``{"mcc", "mcc_matched" [d_true], "perm" [d_true] (indices into z_sae), "r2",
      "r2_per_latent" [d_true]}``.
    """
    z = np.asarray(z_sae, np.float64)
    zt = np.asarray(z_true, np.float64)
    cols = np.flatnonzero(z.std(0) > 0) if alive_only else np.arange(z.shape[1])
    if cols.size == 0:
        raise ValueError("every SAE latent is constant on these samples")
    m = mcc(zt, z[:, cols], method=method)
    r = r2(zt, z[:, cols], regressor=r2_regressor)
    perm = np.where(m.perm >= 0, cols[np.maximum(m.perm, 0)], -1)
    return {"mcc": m.value, "mcc_matched": m.matched, "perm": perm, "r2": r.mean,
            "r2_per_latent": r.per_latent}
