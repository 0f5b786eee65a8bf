"""Score fitted CRL runs against the ground truth a simulated data set carries.

Latents: MCC (Pearson, Spearman; in-sample and out-of-sample), R² (linear, kernel).
Graph (methods that learn one): the learned ``W`` is first *standardized* on the
observational environment, ``W_std[i, j] = W[i, j] sd(z_i) / sd(z_j)``, so the threshold
does not depend on the arbitrary scale of each learned latent; then aligned to the true
latents with the MCC permutation and compared by SHD (``shd_svi`` at ``cfg.edge_threshold``,
``shd_matched`` with the true edge count), and edge AUROC of ``|W_std|``. The headline
``shd`` scores the exact interventional-BIC DAG over the learned latents
(:meth:`FitResult.discover_graph`), the discrete maximum-likelihood refinement of ``W``.
"""

from __future__ import annotations

import numpy as np

from jaxcrl.crl.equivalence import class_r2
from jaxcrl.crl.prior import acyclicity_f64
from jaxcrl.crl.svi import FitResult
from jaxcrl.metrics import graph_metrics, mcc, score_latents, shd
from jaxcrl.scm import topological_order


def standardized_graph(w: np.ndarray, z_obs: np.ndarray) -> np.ndarray:
    """``W[i, j] sd(z_i) / sd(z_j)`` for learned weights ``w [d, d]`` and latents ``z_obs``
    [n, d] of the observational environment."""
    sd = np.asarray(z_obs).std(0) + 1e-12
    return np.asarray(w) * sd[:, None] / sd[None, :]


def score_run(z_true, z_hat, env, *, adj_true=None, w_hat=None, w_dag=None,
              edge_threshold=0.3, targets_true=None, targets_hat=None, seed: int = 0,
              soft: bool = False, labelled: bool = False, w_can_cycle: bool = True) -> dict:
    """All metrics of one run as floats.

    Args:
      z_true: [N, d] true latents; z_hat: [N, d'] learned.
      env: [N] environments (environment 0 standardizes the learned graph).
      adj_true: [d, d] true DAG; w_hat: [d', d'] learned continuous weights (``shd_svi``
        at the threshold, ``shd_matched``, ``edge_auroc``; and, with or without
        ``adj_true``, ``acyclicity``: :func:`jaxcrl.crl.prior.acyclicity` of ``w_hat``, in
        float64, 0 iff the fitted SCM is a DAG; it sums closed walks, so it does not depend on
        the latents' scales, and it needs no ground truth; only with ``w_can_cycle``);
        w_dag: [d', d'] a discrete DAG (``shd``; if None, ``shd`` is ``shd_svi``).
      edge_threshold: threshold on |standardized weight|.
      targets_true, targets_hat: [E, d] / [E, d'] masks, row 0 observational (if both:
        ``target_accuracy``, the fraction of all E environments whose learned target set is
        the true one, and ``targets_right``, the same over the E - 1 interventional ones:
        the observational row is right by construction, so only the latter measures the
        assignment).
      seed: split seed of the out-of-sample metrics.
      soft: the data's interventions are soft: with ``adj_true``, also ``class_r2_per_latent``
        and its mean ``class_r2`` (:func:`jaxcrl.crl.equivalence.class_r2`: is each
        latent inside the shear class the soft likelihood cannot resolve?), and
        ``mcc_labelled_per_latent`` (|Pearson| of each latent with its own true latent).
      labelled: learned latent ``j`` *is* true latent ``j`` (known targets fix the labels):
        ``class_r2`` and ``mcc_labelled_per_latent`` pair latents by index, not by the MCC
        matching (which a shear ``z_j + c z_k`` with large ``c`` can pair with ``z_k``).
      w_can_cycle: the model's density uses every entry of ``w_hat``, so its cycles are part
        of the fit (the linear and nonlinear priors); False where an order cuts them (the
        ``flow`` prior ignores entries against its causal order): no ``acyclicity`` then.

    Returns:
      Scalars, plus ``mcc_per_latent`` (a list of d in-sample |Pearson| correlations of the
      matched pairs, by true-latent index) and, with ``adj_true``, ``mcc_per_latent_topo``
      (the same list in a topological order of the true DAG, roots first).
    """
    z_true, z_hat, env = np.asarray(z_true), np.asarray(z_hat), np.asarray(env)
    out = score_latents(z_true, z_hat, seed=seed)
    out["r2"] = out["r2_kernel"]
    matched = mcc(z_true, z_hat)
    perm = matched.perm
    # Per-latent |Pearson| after matching, so partial identifiability is visible rather than
    # averaged away: by true-latent index, and in a causal order of the true DAG (roots
    # first; the index carries no order, the position does, so only the latter averages
    # meaningfully over seeds with different graphs).
    out["mcc_per_latent"] = [float(c) for c in matched.matched]
    if adj_true is not None and len(matched.matched) == z_true.shape[-1]:
        order = np.asarray(topological_order(np.asarray(adj_true)))
        out["mcc_per_latent_topo"] = [float(matched.matched[i]) for i in order]
        if soft:
            pair = np.arange(z_true.shape[-1]) if labelled else perm
            per = class_r2(z_true, z_hat, pair, adj_true)
            out["class_r2_per_latent"] = per
            out["class_r2"] = float(np.mean(per))
            out["mcc_labelled_per_latent"] = [
                float(abs(np.corrcoef(z_true[:, j], z_hat[:, k])[0, 1])) if k >= 0
                else float("nan") for j, k in enumerate(pair)]
    if w_hat is not None and w_can_cycle:
        out["acyclicity"] = float(acyclicity_f64(w_hat))
    if adj_true is not None and w_hat is not None:
        w_std = standardized_graph(w_hat, z_hat[env == 0])
        g = graph_metrics(np.asarray(adj_true), w_std, perm=perm, threshold=edge_threshold)
        out.update(shd_svi=float(g["shd"]), shd_matched=float(g["shd_matched"]),
                   edge_auroc=float(g["edge_auroc"]))
        out["shd"] = (out["shd_svi"] if w_dag is None
                      else float(shd(np.asarray(adj_true), np.asarray(w_dag), perm=perm)))
    if targets_true is not None and targets_hat is not None:
        t_hat = np.asarray(targets_hat)[:, perm]  # learned latent perm[i] <-> true latent i
        right = np.all(t_hat == np.asarray(targets_true), 1)
        out["target_accuracy"] = float(np.mean(right))  # every environment, env 0 included
        if len(right) > 1:  # the interventional environments only (the bars' "targets right")
            out["targets_right"] = float(np.mean(right[1:]))
    return out


def score_fit(result: FitResult, x, z_true, env, *, adj_true=None, targets_true=None) -> list:
    """Per-run metric dicts for a :class:`FitResult` on data ``x [S, N, D]`` (or [N, D])
    with ground truth ``z_true``, ``env``, ``adj_true [S, d, d]``, ``targets_true [S, E, d]``.

    Models with a latent SCM also get ``strength_per_latent``: the fit's own estimate of each
    learned latent's intervention strength in nats (:meth:`FitResult.intervention_strength`,
    no ground truth; by learned slot), which flags latents the data barely intervene on."""
    z_hat = np.asarray(result.encode(x))
    w = result.graph()
    w_dag = result.discover_graph(x, env, targets_true) if result.cfg.learns_graph else None
    t_hat = None
    if result.cfg.learns_graph and result.cfg.targets == "unknown":
        t_hat = result.assign_targets(x, env)  # maximum likelihood over assignments
    elif result.cfg.learns_graph and result.cfg.targets == "unknown_distinct":
        t_hat = np.asarray(result.targets())  # environment e on learned latent e - 1
    strength = None  # the fitted model's own per-slot intervention strength (no truth)
    if result.cfg.learns_graph and (result.cfg.targets != "known" or targets_true is not None):
        strength = result.intervention_strength(x, env, targets_true)[1]
    scores = []
    for r in range(result.n_runs):
        scores.append(score_run(
            _take(z_true, r, 3), z_hat[r], _take(env, r, 2), adj_true=_take(adj_true, r, 3),
            w_hat=None if w is None else np.asarray(w[r]),
            w_dag=None if w_dag is None else w_dag[r],
            edge_threshold=result.cfg.edge_threshold, targets_true=_take(targets_true, r, 3),
            targets_hat=None if t_hat is None else np.asarray(t_hat[r]), seed=r,
            soft=result.cfg.intervention == "soft",
            labelled=result.cfg.targets == "known" and z_hat.shape[-1] == np.shape(z_true)[-1],
            w_can_cycle=result.cfg.scm != "flow"))
        if strength is not None:
            scores[-1]["strength_per_latent"] = [float(v) for v in strength[r]]
    return scores


def _take(a, r: int, batched_ndim: int):
    """Run ``r``'s slice of ``a`` if it has a run axis (``ndim == batched_ndim``)."""
    if a is None:
        return None
    a = np.asarray(a)
    return a[r] if a.ndim == batched_ndim else a
