"""Identifiability and graph-recovery metrics (host-side numpy/scipy).

Latent recovery: :func:`mcc`, :func:`mcc_out_of_sample`, :func:`r2`, :func:`dci`,
:func:`amari_distance`, and :func:`score_latents` for the standard set used by the
experiment scripts. Graph recovery: :func:`shd`, :func:`edge_auroc`,
:func:`align_graph` and :func:`graph_metrics`.
"""

from jaxcrl.metrics.graph import align_graph, edge_auroc, graph_metrics, shd
from jaxcrl.metrics.identifiability import (
    DCIResult,
    MCCResult,
    R2Result,
    amari_distance,
    dci,
    dci_from_importance,
    kernel_ridge_loo_residuals,
    kernel_ridge_predict,
    mcc,
    mcc_out_of_sample,
    median_heuristic_gamma,
    r2,
    score_latents,
)

__all__ = [
    "DCIResult",
    "MCCResult",
    "R2Result",
    "align_graph",
    "amari_distance",
    "dci",
    "dci_from_importance",
    "edge_auroc",
    "graph_metrics",
    "kernel_ridge_loo_residuals",
    "kernel_ridge_predict",
    "mcc",
    "mcc_out_of_sample",
    "median_heuristic_gamma",
    "r2",
    "score_latents",
    "shd",
]
