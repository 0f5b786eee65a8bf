"""Unknown intervention targets chosen by likelihood over assignments.

A fitted latent-SCM model (flow, VAE or contrastive) gives, for every interventional
environment ``e`` and node ``j``, the log-likelihood of ``e``'s encoded samples if ``e``
intervened on ``j`` alone (:func:`jaxcrl.crl.prior.target_scores`, ``S [E, d]``). The total
log-likelihood of a hard assignment ``e -> j_e`` is ``sum_e S[e, j_e]`` plus a term that
does not depend on it, so:

* ``distinct=True`` (every node intervened at most once, the single-node setting of CauCA
  and contrastive CRL): the exact maximum over all ``d!/(d-K)!`` injective assignments is
  a linear assignment problem, solved by the Hungarian algorithm in ``O(d^3)`` — exact for
  any ``d``, no relaxation needed (:func:`brute_force_assignment` enumerates them to check).
* ``distinct=False``: each environment's own argmax.

Training with unknown distinct targets needs no assignment at all
(``CRLConfig.targets="unknown_distinct"``): the latents are unlabeled, so relabeling them
turns any injective assignment into the canonical one, :func:`canonical_targets`
(environment ``e`` on latent ``e - 1``), at the same likelihood — for the linear and
nonlinear priors exactly (:func:`relabel_prior`, a test), for the encoder as far as its
family is closed under permuting its outputs (an MLP's last layer is; the flow's LU
layers compose to any orientation-preserving map, and a sign flip is absorbed by the
prior).
"""

from __future__ import annotations

import itertools

import numpy as np

from jaxcrl.metrics.regression import hungarian_match


def canonical_targets(n_envs: int, d: int) -> np.ndarray:
    """``[E, d]`` bool: environment ``e >= 1`` intervenes on latent ``e - 1`` alone, row 0
    observational (the assignment ``unknown_distinct`` trains with)."""
    if n_envs - 1 > d:
        raise ValueError(f"one environment per node needs n_envs - 1 <= d, got n_envs={n_envs}, "
                         f"d={d}")
    out = np.zeros((n_envs, d), bool)
    out[1 + np.arange(n_envs - 1), np.arange(n_envs - 1)] = True
    return out


def relabel_prior(params, perm):
    """The linear/nonlinear :class:`~jaxcrl.crl.prior.PriorParams` with latent ``perm[j]``
    renamed ``j``: ``log_prob(relabel_prior(p, perm), z[:, perm], targets=t[:, perm])``
    equals ``log_prob(p, z, targets=t)``."""
    perm = np.asarray(perm)
    return type(params)(
        w=params.w[perm][:, perm], log_scale=params.log_scale[perm],
        int_mean=params.int_mean[:, perm], int_log_scale=params.int_log_scale[:, perm],
        int_factor=params.int_factor[:, perm], target_logits=params.target_logits[:, perm],
        mlp_w1=params.mlp_w1[perm][:, perm], mlp_b1=params.mlp_b1[perm],
        mlp_w2=params.mlp_w2[perm])


def assign_targets(scores, *, distinct: bool = True) -> np.ndarray:
    """Maximum-likelihood single-node targets from ``scores [E, d]`` (row 0 observational).

    Args:
      scores: ``S[e, j]`` log-likelihood of environment ``e`` intervening on node ``j``.
      distinct: at most one environment per node (needs ``E - 1 <= d``).

    Returns:
      ``[E, d]`` bool targets, row 0 all False.
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[0] < 1:
        raise ValueError(f"scores must be [E, d], got shape {s.shape}")
    n_envs, d = s.shape
    out = np.zeros((n_envs, d), bool)
    if n_envs == 1:
        return out
    if distinct:
        if n_envs - 1 > d:
            raise ValueError(f"distinct=True needs at most d={d} interventional environments, "
                             f"got {n_envs - 1}")
        _, cols, _ = hungarian_match(s[1:])
        out[1 + np.arange(n_envs - 1), cols] = True
    else:
        out[1 + np.arange(n_envs - 1), s[1:].argmax(1)] = True
    return out


def brute_force_assignment(scores) -> np.ndarray:
    """The best injective assignment by enumerating all of them (tests; small d only)."""
    s = np.asarray(scores, np.float64)
    n_envs, d = s.shape
    best, arg = -np.inf, None
    for perm in itertools.permutations(range(d), n_envs - 1):
        v = s[1 + np.arange(n_envs - 1), list(perm)].sum()
        if v > best:
            best, arg = v, perm
    out = np.zeros((n_envs, d), bool)
    out[1 + np.arange(n_envs - 1), list(arg)] = True
    return out
