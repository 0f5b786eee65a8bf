"""Identifiability, graph-recovery and regression metrics (host-side numpy/scipy).

Latent recovery: :func:`mcc`, :func:`mcc_out_of_sample`, :func:`r2`, :func:`dci`,
:func:`amari_distance`, and :func:`score_latents` for the standard set used by the
experiment scripts. Graph recovery: :func:`shd`, :func:`edge_auroc`,
:func:`align_graph` and :func:`graph_metrics`. Regression helpers shared by every probe
(:mod:`jaxcrl.metrics.regression`, one penalty convention): :func:`fit_ridge`,
:func:`predict_linear`, :func:`r2_score`, :func:`hungarian_match`, kernel ridge with an
exact leave-one-out ridge choice.
"""

from jaxcrl.metrics.graph import align_graph, edge_auroc, graph_metrics, shd
from jaxcrl.metrics.identifiability import (
    DCIResult,
    MCCResult,
    R2Result,
    amari_distance,
    dci,
    dci_from_importance,
    mcc,
    mcc_out_of_sample,
    r2,
    score_latents,
)
from jaxcrl.metrics.regression import (
    LOO_ALPHAS,
    RidgeFit,
    fit_ridge,
    hungarian_match,
    kernel_ridge_loo_predict,
    kernel_ridge_loo_residuals,
    kernel_ridge_predict,
    median_heuristic_gamma,
    predict_linear,
    r2_score,
)

__all__ = [
    "LOO_ALPHAS",
    "DCIResult",
    "MCCResult",
    "R2Result",
    "RidgeFit",
    "align_graph",
    "amari_distance",
    "dci",
    "dci_from_importance",
    "edge_auroc",
    "fit_ridge",
    "graph_metrics",
    "hungarian_match",
    "kernel_ridge_loo_predict",
    "kernel_ridge_loo_residuals",
    "kernel_ridge_predict",
    "mcc",
    "mcc_out_of_sample",
    "median_heuristic_gamma",
    "predict_linear",
    "r2",
    "r2_score",
    "score_latents",
    "shd",
]
