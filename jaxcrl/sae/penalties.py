"""Loss terms shared by every dictionary (SAEs, transcoders, cross-layer transcoders).

- :func:`ortho_penalty`: the decoder-orthogonality penalty, the mean squared off-diagonal
  entry of the Gram matrix of the unit decoder rows, ``mean_{i≠j} cos²(w_i, w_j)``
  (Miller, Draye and Schölkopf 2026 penalise ``Σ_{i<j} (W_dec W_decᵀ)²_ij`` of unit-norm
  TopK decoders; the mean over pairs makes the coefficient independent of the width).
  Computed as ``(‖ŴᵀŴ‖_F² − n) / (n (n − 1))`` through the ``[d, d]`` Gram matrix when the
  dictionary is wider than the space (``n > d``): ``n d²`` FLOPs instead of ``n² d``.
- :func:`nested_mse`: the Matryoshka loss (Bussmann et al. 2025; SAELens'
  ``matryoshka_batchtopk``): every prefix ``z[:, :w]`` of the latents must reconstruct the
  target by itself, ``Σ_w mean_b ‖y − (z[:, :w] W_dec[:w] + b_dec)‖²`` over the inner
  widths ``w`` (the full dictionary's reconstruction is the ordinary MSE term).
- :func:`decoder_overlap`: host-side summaries of decoder overlap (mean and max |cos|).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _unit(w: jax.Array) -> jax.Array:
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def ortho_penalty(w_dec: jax.Array) -> jax.Array:
    """``mean_{i≠j} cos²(w_i, w_j)`` over the rows of ``w_dec`` ``[n, d]`` (0 when n < 2).

    Zero iff the rows are pairwise orthogonal; for ``n > d`` unit rows it is at least the
    Welch bound ``(n − d) / (d (n − 1))``.
    """
    n, d = w_dec.shape
    if n < 2:
        return jnp.zeros((), w_dec.dtype)
    u = _unit(w_dec)
    if n > d:
        g = u.T @ u  # [d, d]
        total = jnp.sum(g * g)
        # Σ_i cos²(w_i, w_i) = Σ_i ‖u_i‖⁴ (1 up to rounding; exact 0 for a zero row)
        diag = jnp.sum(jnp.sum(u * u, -1) ** 2)
        off = total - diag
    else:
        g = u @ u.T  # [n, n]
        off = jnp.sum(g * g) - jnp.sum(jnp.diagonal(g) ** 2)
    return off / (n * (n - 1))


def nested_mse(z: jax.Array, w_dec: jax.Array, b_dec: jax.Array, target: jax.Array,
               widths: Sequence[int]) -> jax.Array:
    """``Σ_w mean_b ‖target − (z[:, :w] W_dec[:w] + b_dec)‖²`` over the ``widths``.

    Args:
      z: ``[batch, n]`` latents.
      w_dec: ``[n, d]`` decoder rows.
      b_dec: ``[d]`` decoder bias.
      target: ``[batch, d]`` what the dictionary reconstructs.
      widths: strictly increasing prefix widths in ``[1, n)`` (static).

    The prefix reconstructions are running sums of the chunk decodes between consecutive
    widths, so all of them together cost one decode of ``z[:, :widths[-1]]``.
    """
    widths = tuple(int(w) for w in widths)
    if not widths:
        return jnp.zeros((), z.dtype)
    total = jnp.zeros((), z.dtype)
    recon = jnp.broadcast_to(b_dec, target.shape)
    lo = 0
    for w in widths:
        recon = recon + z[:, lo:w] @ w_dec[lo:w]
        total = total + jnp.mean(jnp.sum((target - recon) ** 2, -1))
        lo = w
    return total


def decoder_overlap(w_dec) -> dict[str, float]:
    """``{"mean_abs_cos", "max_abs_cos", "mean_sq_cos"}`` over pairs of rows of ``w_dec``
    ``[n, d]`` (host numpy, float64; rows of zero norm are skipped)."""
    w = np.asarray(w_dec, np.float64)
    norms = np.linalg.norm(w, axis=1)
    w = w[norms > 0] / norms[norms > 0, None]
    n = len(w)
    if n < 2:
        return {"mean_abs_cos": 0.0, "max_abs_cos": 0.0, "mean_sq_cos": 0.0}
    g = np.abs(w @ w.T)
    off = g[~np.eye(n, dtype=bool)]
    return {"mean_abs_cos": float(off.mean()), "max_abs_cos": float(off.max()),
            "mean_sq_cos": float((off ** 2).mean())}
