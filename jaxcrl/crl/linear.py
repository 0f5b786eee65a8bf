"""Reference linear unmixings: PCA whitening and FastICA, as pure JAX functions.

They are the baselines any CRL method must beat: PCA identifies nothing beyond a rotation,
and linear ICA (Hyvärinen & Oja 2000) identifies independent non-Gaussian sources after a
*linear* mixing only. On interventional, causally dependent latents pushed through a
nonlinear mixing both should fail, which is what the quickstart table shows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearUnmixing(NamedTuple):
    """``z_hat = (x - mean) @ unmixing.T``.

    Attributes:
      mean: [D] data mean.
      unmixing: [k, D] unmixing matrix.
    """

    mean: jax.Array
    unmixing: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x - self.mean) @ self.unmixing.T


def _check_x(x: jax.Array, n_components: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be [n, D], got shape {x.shape}")
    if not 1 <= n_components <= x.shape[1]:
        raise ValueError(f"n_components must be in [1, {x.shape[1]}], got {n_components}")


def pca(x: jax.Array, n_components: int) -> LinearUnmixing:
    """PCA whitening: the top ``n_components`` principal directions scaled to unit variance.

    Args:
      x: [n, D] observations.
      n_components: k <= D.

    Returns:
      A :class:`LinearUnmixing` whose outputs are uncorrelated with unit variance.
    """
    _check_x(x, n_components)
    mean = x.mean(0)
    cov = jnp.cov(x - mean, rowvar=False).reshape(x.shape[1], x.shape[1])
    evals, evecs = jnp.linalg.eigh(cov)
    idx = jnp.argsort(evals)[::-1][:n_components]
    w = evecs[:, idx].T / jnp.sqrt(jnp.maximum(evals[idx], 1e-12))[:, None]
    return LinearUnmixing(mean, w)


def _sym_decorrelate(w: jax.Array) -> jax.Array:
    """W <- (W W^T)^{-1/2} W."""
    s, u = jnp.linalg.eigh(w @ w.T)
    return (u / jnp.sqrt(jnp.maximum(s, 1e-12))) @ u.T @ w


def fast_ica(
    x: jax.Array, n_components: int, key: jax.Array, *, max_iter: int = 200, tol: float = 1e-5
) -> LinearUnmixing:
    """Symmetric FastICA with the log-cosh contrast (Hyvärinen 1999), jit-compatible.

    Args:
      x: [n, D] observations.
      n_components: number of sources k <= D.
      key: PRNG key for the initial rotation.
      max_iter: fixed-point iterations (a ``lax.while_loop`` stops early at ``tol``).
      tol: convergence threshold on ``max |1 - |diag(W_new W^T)||``.

    Returns:
      A :class:`LinearUnmixing` mapping x to unit-variance estimated sources.
    """
    _check_x(x, n_components)
    white = pca(x, n_components)
    xw = white(x)  # [n, k]
    w0 = _sym_decorrelate(jax.random.normal(key, (n_components, n_components)))

    def update(w):
        y = xw @ w.T  # [n, k]
        g = jnp.tanh(y)
        g_prime = 1.0 - g**2
        w_new = (g.T @ xw) / xw.shape[0] - g_prime.mean(0)[:, None] * w
        return _sym_decorrelate(w_new)

    def cond(carry):
        _, i, delta = carry
        return (i < max_iter) & (delta > tol)

    def body(carry):
        w, i, _ = carry
        w_new = update(w)
        delta = jnp.max(jnp.abs(jnp.abs(jnp.diag(w_new @ w.T)) - 1.0))
        return w_new, i + 1, delta

    w, _, _ = jax.lax.while_loop(cond, body, (w0, 0, jnp.inf))
    return LinearUnmixing(white.mean, w @ white.unmixing)
