"""Graph-recovery metrics: structural Hamming distance and edge AUROC.

Convention: an adjacency matrix ``A`` of shape ``[d, d]`` has ``A[i, j] != 0`` iff
there is an edge ``i -> j`` (weights allowed). The diagonal (self-loops) is ignored
everywhere.

A learned graph lives on the learned latents, so before comparing it with the true
graph it is aligned with the permutation found by MCC matching
(:func:`jaxcrl.metrics.mcc` returns ``perm`` with ``perm[i]`` = learned latent matched
to true latent ``i``, ``-1`` if none). All functions are host-side numpy.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike

__all__ = ["align_graph", "edge_auroc", "graph_metrics", "shd"]


def _as_square(g: ArrayLike, name: str) -> np.ndarray:
    """Converts ``g`` to a finite float64 ``[d, d]`` array or raises ``ValueError``."""
    try:
        arr = np.asarray(g, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real numeric array, got {type(g).__name__}") from err
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square 2-D adjacency [d, d], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} (shape {arr.shape}) contains NaN or inf values")
    return arr


def _as_perm(perm: ArrayLike, d_hat: int) -> np.ndarray:
    p = np.asarray(perm)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"perm must be a 1-D integer array [d_true], got {p.dtype} {p.shape}")
    if np.any((p < -1) | (p >= d_hat)):
        raise ValueError(f"perm entries must be -1 or in [0, {d_hat}) (d_hat of g_hat), got {p}")
    used = p[p >= 0]
    if len(np.unique(used)) != len(used):
        raise ValueError(f"perm must not match two true latents to one learned latent, got {p}")
    return p.astype(np.int64)


def _off_diagonal(d: int) -> np.ndarray:
    return ~np.eye(d, dtype=bool)


def _prepare(
    g_true: ArrayLike, g_hat: ArrayLike, perm: ArrayLike | None, hat_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Binary true adjacency (no diagonal) and the aligned float learned matrix."""
    truth = _as_square(g_true, "g_true")
    est = _as_square(g_hat, hat_name)
    if perm is not None:
        est = align_graph(est, perm)
    if est.shape != truth.shape:
        raise ValueError(
            f"{hat_name} (after alignment) must have the shape of g_true {truth.shape}, got "
            f"{est.shape}; pass perm to align a learned graph of another size"
        )
    return (truth != 0) & _off_diagonal(truth.shape[0]), est


def align_graph(g_hat: ArrayLike, perm: ArrayLike) -> np.ndarray:
    """Re-indexes a learned graph by the true-latent order.

    Args:
        g_hat: ``[d_hat, d_hat]`` learned adjacency (weights or scores).
        perm: ``[d_true]`` ints; ``perm[i]`` is the learned latent matched to true latent
            ``i`` or ``-1`` (as in :class:`jaxcrl.metrics.MCCResult`).

    Returns:
        ``[d_true, d_true]`` float array with ``out[i, j] = g_hat[perm[i], perm[j]]``;
        rows and columns of unmatched true latents (``perm == -1``) are 0.
    """
    g = _as_square(g_hat, "g_hat")
    p = _as_perm(perm, g.shape[0])
    out = np.zeros((len(p), len(p)))
    idx = np.flatnonzero(p >= 0)
    out[np.ix_(idx, idx)] = g[np.ix_(p[idx], p[idx])]
    return out


def _binarize(
    est: np.ndarray, *, threshold: float | None, n_keep: int | None
) -> np.ndarray:
    """Boolean off-diagonal predicted edges from weights."""
    d = est.shape[0]
    off = _off_diagonal(d)
    mag = np.abs(est)
    if n_keep is not None:
        pred = np.zeros((d, d), dtype=bool)
        rows, cols = np.nonzero(off)
        order = np.argsort(-mag[rows, cols], kind="stable")[:n_keep]
        keep = order[mag[rows[order], cols[order]] > 0]
        pred[rows[keep], cols[keep]] = True
        return pred
    if threshold is not None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        return (mag > threshold) & off
    return (mag != 0) & off


def _shd_binary(truth: np.ndarray, pred: np.ndarray) -> int:
    # Per unordered pair {i, j}: cost = max(#missing, #extra) among its two ordered
    # edges. Missing, extra and reversed (one missing + one extra in the same pair)
    # edges thus each cost 1, and a bidirected prediction of a single true edge costs 1.
    missing = (truth & ~pred).astype(np.int64)
    extra = (pred & ~truth).astype(np.int64)
    cost = np.maximum(missing + missing.T, extra + extra.T)
    return int(cost[np.triu_indices(truth.shape[0], k=1)].sum())


def shd(
    g_true: ArrayLike,
    g_hat: ArrayLike,
    *,
    threshold: float | None = None,
    perm: ArrayLike | None = None,
    match_edge_count: bool = False,
) -> int:
    """Structural Hamming distance: missing + extra + reversed edges.

    The learned graph is first aligned (if ``perm`` is given, see :func:`align_graph`),
    then binarized: with ``match_edge_count`` the ``k = nnz(g_true)`` off-diagonal
    entries of largest ``|weight|`` are kept (zeros never count as edges; ``threshold``
    is then ignored); otherwise ``|g_hat| > threshold`` if ``threshold`` is given, else
    ``g_hat != 0``. ``g_true`` is binarized as ``g_true != 0``.

    Counting (Tsamardinos et al., 2006; as in e.g. ``cdt.metrics.SHD`` with
    ``double_for_anticausal=False``): a reversed edge (true ``i -> j``, predicted only
    ``j -> i``) counts once, not twice; predicting both ``i -> j`` and ``j -> i`` for a
    true ``i -> j`` counts once (the extra edge). Formally, each unordered pair costs
    ``max(#missing, #extra)`` over its two ordered edges.

    Args:
        g_true: ``[d, d]`` true adjacency.
        g_hat: ``[d_hat, d_hat]`` learned adjacency (``d_hat == d`` unless ``perm``).
        threshold: Magnitude threshold for predicted edges.
        perm: Optional ``[d]`` matching from :func:`jaxcrl.metrics.mcc`.
        match_edge_count: Keep as many predicted edges as true ones.

    Returns:
        The SHD as an int.
    """
    truth, est = _prepare(g_true, g_hat, perm, "g_hat")
    n_keep = int(truth.sum()) if match_edge_count else None
    return _shd_binary(truth, _binarize(est, threshold=threshold, n_keep=n_keep))


def edge_auroc(
    g_true: ArrayLike, g_hat_scores: ArrayLike, *, perm: ArrayLike | None = None
) -> float:
    """Area under the ROC curve of edge scores against the true edges.

    Scores are ``|g_hat_scores|`` over the ``d (d - 1)`` off-diagonal ordered pairs
    (after alignment with ``perm``); labels are ``g_true != 0``. Computed via the
    Mann-Whitney U statistic, ``AUROC = (sum of positive ranks - P (P + 1) / 2) / (P N)``
    with average ranks, so ties between a positive and a negative count 1/2.

    Args:
        g_true: ``[d, d]`` true adjacency.
        g_hat_scores: ``[d_hat, d_hat]`` edge scores or weights.
        perm: Optional ``[d]`` matching from :func:`jaxcrl.metrics.mcc`.

    Returns:
        The AUROC in ``[0, 1]``, or ``float("nan")`` when it is undefined because the
        true graph has no edges or is complete (one class only).
    """
    truth, est = _prepare(g_true, g_hat_scores, perm, "g_hat_scores")
    off = _off_diagonal(truth.shape[0])
    labels, scores = truth[off], np.abs(est[off])
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(scores)
    u_stat = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def graph_metrics(
    g_true: ArrayLike,
    g_hat: ArrayLike,
    *,
    perm: ArrayLike | None = None,
    threshold: float = 0.1,
) -> dict[str, float | int]:
    """The standard graph-recovery scores used by the experiment scripts.

    Args:
        g_true: ``[d, d]`` true adjacency.
        g_hat: ``[d_hat, d_hat]`` learned weighted adjacency.
        perm: Optional ``[d]`` matching from :func:`jaxcrl.metrics.mcc`.
        threshold: Magnitude threshold for ``shd`` and ``n_edges_pred``.

    Returns:
        ``{"shd": SHD at |w| > threshold, "shd_matched": SHD with the edge count matched,
        "edge_auroc": AUROC of |w| (nan if undefined), "n_edges_true": int,
        "n_edges_pred": int at the threshold}``.
    """
    truth, est = _prepare(g_true, g_hat, perm, "g_hat")
    pred = _binarize(est, threshold=threshold, n_keep=None)
    matched = _binarize(est, threshold=None, n_keep=int(truth.sum()))
    return {
        "shd": _shd_binary(truth, pred),
        "shd_matched": _shd_binary(truth, matched),
        "edge_auroc": edge_auroc(truth, est),
        "n_edges_true": int(truth.sum()),
        "n_edges_pred": int(pred.sum()),
    }
