"""What the linear prior's soft-intervention likelihood cannot tell apart (issue 13).

The soft family of :mod:`jaxcrl.crl.prior` (and of the simulator, :mod:`jaxcrl.scm`) keeps an
intervened node's mechanism up to one factor and a shift: ``loc'_ej = a_ej loc_j(z) + m_ej``
with any ``a_ej``. A *shear* of the latents, ``z'_j = z_j + c z_k`` (all other latents
unchanged, ``|det| = 1``), maps every environment's density onto another member of the same
family, exactly, in two cases:

* ``j`` is a root and ``k`` is not a descendant of ``j``: the model gains the edge
  ``k -> j`` (weight ``c``), and ``j``'s interventions become factor 1 (a new mean and noise
  scale, the parents' effect kept);
* ``j``'s only parent is ``k``: its weight becomes ``w_kj + c`` and each intervention's factor
  ``(a_ej w_kj + c) / (w_kj + c)``.

The children of ``j`` are re-expressed (``w'_ki = w_ki - c w_ji``), a reparametrization that
every intervention family keeps. A node with two or more parents is pinned (one factor
cannot rescale two coefficients unless ``c = 0``), and perfect interventions pin every
node (the sheared node would depend on ``z_k`` in its own environment). So with soft
interventions of this family the latents are identified only up to these shears: more
environments of the same kind (two per node) do not remove them, and MCC against the truth
depends on which member of the class the optimizer reaches. :func:`shear_sets` lists, for
every node, the latents a shear may add; :func:`class_r2` asks whether a fit is inside the
class (its error is then not an optimization failure); :func:`shear_prior` builds the
equivalent parameters (the tests check the densities agree to float precision).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcrl.crl.prior import PriorParams, masked_weights
from jaxcrl.metrics.regression import constant_columns, fit_ridge, predict_linear, r2_score
from jaxcrl.scm.graphs import descendants


def shear_sets(adj) -> list[tuple[int, ...]]:
    """For each node ``j`` of the DAG ``adj [d, d]`` (``adj[i, j]``: edge ``i -> j``), the
    nodes ``k`` with a likelihood-preserving shear ``z_j + c z_k`` under soft interventions:
    all non-descendants of a root, the parent of a single-parent node, none otherwise."""
    a = np.asarray(adj) != 0
    d = a.shape[0]
    if a.shape != (d, d):
        raise ValueError(f"shear_sets: adj must be square [d, d], got shape {a.shape}")
    out = []
    for j in range(d):
        pa = np.flatnonzero(a[:, j])
        if len(pa) == 0:
            desc = np.asarray(descendants(a.astype(np.float32), j))
            out.append(tuple(int(k) for k in range(d) if k != j and not desc[k]))
        elif len(pa) == 1:
            out.append((int(pa[0]),))
        else:
            out.append(())
    return out


def shear_prior(params: PriorParams, j: int, k: int, c: float) -> PriorParams:
    """Linear-prior parameters whose soft-intervention densities of ``z'`` (``z'_j = z_j +
    c z_k``) equal those of ``params`` at ``z``, for every environment and known targets.

    Requires a linear prior (``mlp_w1`` with 0 hidden units) whose weighted graph is a DAG
    with ``k`` in :func:`shear_sets` ``[j]``; raises ``ValueError`` otherwise.
    """
    if params.mlp_w1.shape[-1] != 0:
        raise ValueError("shear_prior: only the linear prior (hidden=0) has this symmetry")
    w = np.asarray(masked_weights(params), dtype=np.float64)
    d = w.shape[0]
    if not (0 <= j < d and 0 <= k < d and j != k):
        raise ValueError(f"shear_prior: need distinct nodes in [0, {d}), got j={j}, k={k}")
    if k not in shear_sets(w)[j]:
        raise ValueError(
            f"shear_prior: z_{j} + c z_{k} changes the likelihood (node {j} has parents "
            f"{np.flatnonzero(w[:, j]).tolist()}; a shear needs a root and a non-descendant, "
            f"or the single parent)")
    if w[k, j] != 0 and abs(w[k, j] + c) <= 1e-6 * abs(w[k, j]):
        raise ValueError(f"shear_prior: c = -w[{k}, {j}] removes the edge; no soft factor "
                         f"maps the interventions onto that model")
    w_new = w.copy()
    w_new[k] -= c * w[j]          # children i of j: z_j = z'_j - c z_k
    w_new[k, j] = w[k, j] + c     # j itself
    f = np.asarray(params.int_factor, dtype=np.float64)
    f_new = f.copy()
    f_new[:, j] = (f[:, j] * w[k, j] + c) / (w[k, j] + c)
    dtype = params.w.dtype
    return dataclasses.replace(params, w=np.asarray(w_new, dtype),
                               int_factor=np.asarray(f_new, dtype))


def class_r2(z_true, z_hat, perm, adj) -> list[float]:
    """Per true latent ``j``: R² of the least-squares fit of the matched learned latent
    ``z_hat[:, perm[j]]`` on ``[1, z_j, z_k for k in shear_sets(adj)[j]]`` (in-sample).

    1 for a fit inside the soft-intervention equivalence class (a linear-Gaussian SCM: the
    class members are these linear combinations); the plain ``R² = MCC²`` regresses on
    ``z_j`` alone. ``z_true`` [n, d], ``z_hat`` [n, d'], ``perm`` [d] (``perm[j] = -1``:
    unmatched, and a constant learned latent, are reported as nan).
    """
    z_true, z_hat = np.asarray(z_true, np.float64), np.asarray(z_hat, np.float64)
    sets = shear_sets(adj)
    if z_true.ndim != 2 or len(sets) != z_true.shape[1] or len(perm) != len(sets):
        raise ValueError(f"class_r2: z_true {z_true.shape}, perm {len(perm)} and adj "
                         f"{np.shape(adj)} disagree on the number of latents")
    out = []
    for j, allowed in enumerate(sets):
        if perm[j] < 0:
            out.append(float("nan"))
            continue
        y = z_hat[:, perm[j]]
        if constant_columns(y[:, None], y.std(keepdims=True))[0]:  # dead: R² is undefined
            out.append(float("nan"))
            continue
        x = z_true[:, [j, *allowed]]
        pred = predict_linear(fit_ridge(x, y, alpha=0.0), x)
        out.append(float(r2_score(y, pred)[0]))
    return out
