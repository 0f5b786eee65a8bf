"""How much an intervention changes the latent distribution: per-target KL divergences.

An intervention on the target set ``T`` replaces the conditionals ``p(z_j | pa_j)`` of the
targets and leaves every other factor of the SCM's density unchanged, so by the chain rule

    KL(p_e || p_0) = sum_{j in T} E_{z ~ p_e} KL( p_e(z_j | pa_j) || p_0(z_j | pa_j) ),

and likewise ``KL(p_0 || p_e)`` with the expectation under ``p_0``. With Gaussian noise
both conditionals are Gaussian (``loc_j(pa_j) + scale_j(pa_j) eps``), so the inner KL is
exact per sample and only the expectation over the parents is Monte Carlo.

This is how far environment ``e`` is from the observational one: the mean log-density
ratio an environment classifier (the contrastive route) or the interventional likelihood
(the flow route) has to tell them apart. The
generator draws ``new_mean ~ U[-2, 2]`` and ``new_scale ~ U[0.5, 1.5]``
(:class:`~jaxcrl.scm.InterventionConfig`), so on a root (``z_j = noise_scale_j eps``) an
intervention can be nearly null; the per-latent MCC of the fits follows this measure
(BENCHMARKS, "Where the remaining MCC is lost: weak interventions").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxcrl.scm.data import Dataset
from jaxcrl.scm.mechanisms import (
    Intervention,
    SCMParams,
    _check_intervention,
    _mechanism,
    sample_scm,
)


def _gauss_kl(m1: jax.Array, s1: jax.Array, m0: jax.Array, s0: jax.Array) -> jax.Array:
    """``KL(N(m1, s1^2) || N(m0, s0^2))`` elementwise."""
    return jnp.log(s0 / s1) + (s1**2 + (m1 - m0) ** 2) / (2.0 * s0**2) - 0.5


def _conditionals(params: SCMParams, z: jax.Array, iv: Intervention, kind: str):
    """Observational and intervened ``(loc, scale)`` of every node given ``z [n, d]``."""
    loc0, scale0 = _mechanism(params, z)
    loc_e = iv.new_mean + (iv.weight_factor * loc0 if kind == "soft" else 0.0)
    scale_e = jnp.broadcast_to(iv.new_scale, z.shape)
    return (loc0, scale0), (loc_e, scale_e)


def intervention_kl(params: SCMParams, intervention: Intervention, key: jax.Array,
                    n: int = 100_000, *, kind: str = "perfect") -> tuple[jax.Array, jax.Array]:
    """Per-target contributions to ``KL(p_e || p_0)`` and ``KL(p_0 || p_e)``.

    Args:
      params: an SCM with Gaussian noise (``params.noise == "gaussian"``).
      intervention: the environment's :class:`Intervention` (fields ``[d]``).
      key: Monte-Carlo key (one half for samples of ``p_e``, one for ``p_0``).
      n: samples per expectation (static).
      kind: ``"perfect"`` or ``"soft"``.

    Returns:
      ``(forward [d], reverse [d])`` in nats: entry ``j`` is node ``j``'s term of
      ``KL(p_e || p_0)`` (resp. ``KL(p_0 || p_e)``), zero off the targets; each sums to
      the full KL between the two latent distributions.

    Raises:
      ValueError: noise other than Gaussian (the conditionals then have no closed-form
        KL here), an unknown ``kind``, or intervention fields not of shape ``[d]``.
    """
    if params.noise != "gaussian":
        raise ValueError(f"intervention_kl needs Gaussian noise, got noise={params.noise!r}")
    iv = _check_intervention(params, intervention, kind)  # also checks kind
    return _intervention_kl(params, iv, key, n, kind)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _intervention_kl(params, iv, key, n, kind):
    k_e, k_0 = jax.random.split(key)
    on = iv.targets.astype(jnp.float32)
    z_e = sample_scm(params, k_e, n, iv, kind=kind)
    (m0, s0), (me, se) = _conditionals(params, z_e, iv, kind)
    forward = jnp.mean(_gauss_kl(me, se, m0, s0), 0) * on
    z_0 = sample_scm(params, k_0, n, None, kind=kind)
    (m0, s0), (me, se) = _conditionals(params, z_0, iv, kind)
    reverse = jnp.mean(_gauss_kl(m0, s0, me, se), 0) * on
    return forward, reverse


def dataset_intervention_kl(ds: Dataset, key: jax.Array, n: int = 100_000
                            ) -> tuple[jax.Array, jax.Array]:
    """:func:`intervention_kl` of every environment of one data set.

    Args:
      ds: one (unbatched) :class:`~jaxcrl.scm.Dataset`.
      key: Monte-Carlo key (folded with the environment index).
      n: samples per expectation.

    Returns:
      ``(forward [E, d], reverse [E, d])``; row 0 (observational) is zero. The strength of
      node ``j``'s interventions is, for example, the column sum of ``forward + reverse``
      (the symmetric KL summed over the environments that target ``j``).
    """
    if ds.targets.ndim != 2:
        raise ValueError(f"dataset_intervention_kl takes one data set, got targets of shape "
                         f"{ds.targets.shape} (index the seed axis first)")
    if ds.scm.noise != "gaussian":
        raise ValueError(f"intervention_kl needs Gaussian noise, got noise={ds.scm.noise!r}")
    keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(jnp.arange(ds.targets.shape[0]))
    iv = dataclasses.replace(ds.interventions, targets=ds.interventions.targets.astype(bool))
    return jax.vmap(lambda i, k: _intervention_kl(ds.scm, i, k, n, ds.intervention_kind))(
        iv, keys)  # every environment in one program
