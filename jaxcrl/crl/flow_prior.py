"""A nonparametric latent SCM prior that is a normalized density for *any* ``W``.

Each node's conditional density is a conditional location-scale transform of a learned
1-D monotone noise flow, conditioned on its parents gated by ``W`` and restricted by a
causal order (a permutation, given as the position ``pos[j]`` of node ``j``)::

    eps_j = (z_j - loc_j(pa_j)) / scale_j(pa_j),        u_j = h_j(eps_j) ~ N(0, 1)
    log p(z_j | pa_j) = log N(h_j(eps_j); 0, 1) + log h_j'(eps_j) - log scale_j(pa_j)

* parents: ``W∘M`` with ``M[i, j] = [pos[i] < pos[j]]``; ``W∘M`` is strictly triangular in
  the order, so ``p(z) = prod_j p(z_j | pa_j)`` is an autoregressive flow in that order and
  integrates to 1 whatever ``W`` is (cycles in ``W`` are simply cut by the order: no
  acyclicity penalty is needed and the likelihood cannot cheat on cycles).
* ``loc_j = (z (W∘M))_j + MLP_j(z ∘ (W∘M)[:, j])`` (centred tanh MLP, as the ``nonlinear``
  prior of :mod:`jaxcrl.crl.prior`), ``log scale_j = log_scale_j + 3 tanh(MLP'_j(...) / 3)``
  (a second centred MLP, bounded: ``scale_j`` within ``e^{±3}`` of the root scale).
* ``h_j(e) = e + sum_k softplus(a_jk) (tanh(exp(f_jk) e + o_jk) - tanh(o_jk))``: a
  sum-of-tanh monotone flow (``h' >= 1 > 0``, Gaussian tails, the identity when every
  amplitude is 0). numpyro 0.22 ships no rational-quadratic spline transform, and this
  family is the 1-D layer of jaxcrl's flow encoder (:class:`jaxcrl.crl.nets.MonotoneElementwise`).
* perfect intervention on ``j`` in environment ``e``: the node is replaced by its own learned
  1-D density ``z_j = m_ej + exp(s_ej) h_ej^{-1}(u)`` (parents cut; a separate flow
  ``h_ej`` per environment and node).
* soft intervention: the mechanism is kept, shifted and rescaled:
  ``loc' = c_ej loc_j + m_ej``, ``log scale' = log scale_j + s_ej``, noise flow ``h_j``.

The order comes from :func:`implied_order` (the known single-node targets: an intervention
on ``j`` changes the distribution of ``j``'s descendants and of nothing upstream) or is the
latent index order; see :attr:`jaxcrl.crl.config.CRLConfig.scm_order`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxcrl.crl.prior import env_onehot, gated_pre_activations

_LOG_2PI = math.log(2 * math.pi)
_SCALE_BOUND = 3.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseFlow:
    """Parameters of a batch of 1-D monotone sum-of-tanh flows, ``[..., K]`` each.

    Attributes:
      amp: pre-softplus amplitudes (``-inf``: the term is off).
      log_freq: log frequencies.
      offset: offsets.
    """

    amp: jax.Array
    log_freq: jax.Array
    offset: jax.Array


def init_noise_flow(key: jax.Array, shape: tuple[int, ...], terms: int) -> NoiseFlow:
    """Near-identity flows of shape ``[*shape, terms]`` (amplitudes softplus(-4) ~ 0.02)."""
    k1, k2 = jax.random.split(key)
    full = (*shape, terms)
    return NoiseFlow(amp=jnp.full(full, -4.0), log_freq=0.3 * jax.random.normal(k1, full),
                     offset=jax.random.normal(k2, full))


def noise_flow(flow: NoiseFlow, e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(h(e), log h'(e))`` elementwise; ``e`` broadcasts against ``flow.amp[..., 0]``."""
    a = jax.nn.softplus(flow.amp)
    f = jnp.exp(flow.log_freq)
    t = jnp.tanh(e[..., None] * f + flow.offset)
    h = e + jnp.sum(a * (t - jnp.tanh(flow.offset)), -1)
    dh = 1.0 + jnp.sum(a * f * (1.0 - t**2), -1)
    return h, jnp.log(dh)


def noise_log_prob(flow: NoiseFlow, e: jax.Array) -> jax.Array:
    """``log p(e)`` of ``e = h^{-1}(u)``, ``u ~ N(0, 1)``."""
    h, logdet = noise_flow(flow, e)
    return -0.5 * (h**2 + _LOG_2PI) + logdet


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlowPriorParams:
    """Parameters of the flow prior (all unconstrained). ``d`` nodes, ``E`` environments,
    ``h`` hidden units per node MLP, ``K`` tanh terms per 1-D flow.

    Attributes:
      w: [d, d] edge weights (diagonal ignored; entries against the order unused).
      log_scale: [d] root log noise scale.
      loc_w1, loc_b1, loc_w2: [d, d, h], [d, h], [d, h] location MLPs.
      scale_w1, scale_b1, scale_w2: the same for the log-scale MLPs.
      noise: [d, K] noise flows ``h_j``.
      int_mean, int_log_scale, int_factor: [E, d] intervention shift / log scale / factor.
      int_noise: [E, d, K] flows of perfectly intervened nodes.
      target_logits: [E, d] (unused: the flow prior needs known targets; kept so generic
        helpers such as :func:`jaxcrl.crl.prior.estimated_targets` apply).
    """

    w: jax.Array
    log_scale: jax.Array
    loc_w1: jax.Array
    loc_b1: jax.Array
    loc_w2: jax.Array
    scale_w1: jax.Array
    scale_b1: jax.Array
    scale_w2: jax.Array
    noise: NoiseFlow
    int_mean: jax.Array
    int_log_scale: jax.Array
    int_factor: jax.Array
    int_noise: NoiseFlow
    target_logits: jax.Array


def init_flow_prior(key: jax.Array, d: int, n_envs: int, *, hidden: int = 16,
                    terms: int = 4) -> FlowPriorParams:
    """No edges (small random weights), unit scales, near-identity noise flows."""
    ks = jax.random.split(key, 9)
    return FlowPriorParams(
        w=0.01 * jax.random.normal(ks[0], (d, d)),
        log_scale=jnp.zeros(d),
        loc_w1=jax.random.normal(ks[1], (d, d, hidden)),
        loc_b1=jax.random.normal(ks[2], (d, hidden)),
        loc_w2=jax.random.normal(ks[3], (d, hidden)) / math.sqrt(hidden),
        scale_w1=jax.random.normal(ks[4], (d, d, hidden)),
        scale_b1=jax.random.normal(ks[5], (d, hidden)),
        scale_w2=0.1 * jax.random.normal(ks[6], (d, hidden)) / math.sqrt(hidden),
        noise=init_noise_flow(ks[7], (d,), terms),
        int_mean=jnp.zeros((n_envs, d)),
        int_log_scale=jnp.zeros((n_envs, d)),
        int_factor=jnp.ones((n_envs, d)),
        int_noise=init_noise_flow(ks[8], (n_envs, d), terms),
        target_logits=jnp.zeros((n_envs, d)),
    )


def order_mask(pos: jax.Array) -> jax.Array:
    """``M[i, j] = 1`` iff ``pos[i] < pos[j]`` (``i`` may be a parent of ``j``): [d, d]."""
    return (pos[:, None] < pos[None, :]).astype(jnp.float32)


def ordered_weights(params: FlowPriorParams, pos: jax.Array) -> jax.Array:
    """``W∘M``: the weights the density uses, strictly triangular in the order ``pos``."""
    return params.w * order_mask(pos).astype(params.w.dtype)


def _centred_mlp(z, w, w1, b1, w2):
    pre = gated_pre_activations(z, w, w1)  # [n, j, k]: node j's MLP on its gated parents
    return jnp.einsum("njk,jk->nj", jnp.tanh(pre + b1) - jnp.tanh(b1), w2)


def node_loc_scale(params: FlowPriorParams, z: jax.Array, pos: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """Observational ``(loc [n, d], log scale [n, d])`` of every node given ``z [n, d]``."""
    w = ordered_weights(params, pos)
    loc = z @ w + _centred_mlp(z, w, params.loc_w1, params.loc_b1, params.loc_w2)
    g = _centred_mlp(z, w, params.scale_w1, params.scale_b1, params.scale_w2)
    return loc, params.log_scale + _SCALE_BOUND * jnp.tanh(g / _SCALE_BOUND)


def node_log_probs(params: FlowPriorParams, z: jax.Array, pos: jax.Array, *, soft: bool
                   ) -> tuple[jax.Array, jax.Array]:
    """Per-node log densities, observational and under each environment's intervention.

    Args:
      params: prior parameters.
      z: [n, d] latents.
      pos: [d] int position of each node in the causal order.
      soft: soft (mechanism kept, shifted and rescaled) rather than perfect interventions.

    Returns:
      ``(lp_obs [n, d], lp_int [n, E, d])``: ``lp_int[n, e, j]`` is ``log p(z_nj | pa)``
      when environment ``e`` intervenes on ``j``.
    """
    loc, log_sc = node_loc_scale(params, z, pos)
    lp_obs = noise_log_prob(params.noise, (z - loc) * jnp.exp(-log_sc)) - log_sc
    if soft:
        loc_i = params.int_factor[None] * loc[:, None] + params.int_mean[None]  # [n, E, d]
        log_sc_i = log_sc[:, None] + params.int_log_scale[None]
        flow = params.noise  # the node's own noise flow: the mechanism is kept
        eps = (z[:, None] - loc_i) * jnp.exp(-log_sc_i)
        lp_int = noise_log_prob(flow, eps) - log_sc_i
    else:
        log_sc_i = params.int_log_scale[None]
        eps = (z[:, None] - params.int_mean[None]) * jnp.exp(-log_sc_i)
        lp_int = noise_log_prob(params.int_noise, eps) - log_sc_i
    return lp_obs, lp_int


def env_log_probs(params: FlowPriorParams, z: jax.Array, pos: jax.Array, *,
                  targets: jax.Array, soft: bool = False) -> jax.Array:
    """``log p_e(z_n)`` of every sample under every environment: [n, E].

    Args:
      params: prior parameters.
      z: [n, d] latents.
      pos: [d] causal-order positions.
      targets: [E, d] known target masks (row 0 observational).
      soft: soft interventions (else perfect).
    """
    lp_obs, lp_int = node_log_probs(params, z, pos, soft=soft)
    t = targets.astype(z.dtype)
    return lp_obs.sum(-1)[:, None] + jnp.einsum("ned,ed->ne", lp_int - lp_obs[:, None], t)


def log_prob(params: FlowPriorParams, z: jax.Array, env: jax.Array, pos: jax.Array, *,
             targets: jax.Array, soft: bool = False) -> jax.Array:
    """``log p_{env_n}(z_n)`` for each sample: [n] (z [n, d], env [n], pos [d],
    targets [E, d]).

    Equal to :func:`env_log_probs` at each sample's own environment, but evaluates the
    intervened densities only there (the training loss's cost is ``[n, d]`` terms, not
    ``[n, E, d]``): each environment's parameters are selected by a one-hot matmul, whose
    gradient is a matmul too.
    """
    onehot = env_onehot(env, targets.shape[0], z.dtype)  # [n, E]

    def own(a):  # [E, ...] -> [n, ...]: each sample's environment's entry
        return (onehot @ a.reshape(a.shape[0], -1)).reshape(z.shape[0], *a.shape[1:])

    loc, log_sc = node_loc_scale(params, z, pos)
    lp_obs = noise_log_prob(params.noise, (z - loc) * jnp.exp(-log_sc)) - log_sc
    if soft:
        log_sc_i = log_sc + own(params.int_log_scale)
        eps = (z - own(params.int_factor) * loc - own(params.int_mean)) * jnp.exp(-log_sc_i)
        lp_int = noise_log_prob(params.noise, eps) - log_sc_i
    else:
        log_sc_i = own(params.int_log_scale)
        eps = (z - own(params.int_mean)) * jnp.exp(-log_sc_i)
        lp_int = noise_log_prob(jax.tree.map(own, params.int_noise), eps) - log_sc_i
    t = own(targets.astype(z.dtype))  # [n, d]: the sample's own targets
    return jnp.sum(lp_obs + t * (lp_int - lp_obs), -1)


def intervention_effects(z: jax.Array, env: jax.Array, targets: jax.Array) -> jax.Array:
    """``A[j, i]``: how much intervening on ``j`` changes latent ``i``'s distribution: [d, d].

    Per environment ``e``, the change of latent ``i`` against the observational environment
    is ``|mean_e - mean_0| / sd_0 + |log sd_e - log sd_0|``; ``A[j, i]`` averages it over
    the environments whose target set contains ``j``, divided by the target-set size.
    The diagonal is 0.

    Args:
      z: [n, d] latents; env: [n] environments; targets: [E, d] known target masks.
    """
    n_envs, d = targets.shape
    onehot = env_onehot(env, n_envs, z.dtype)
    cnt = onehot.sum(0)[:, None] + 1e-6
    mean = onehot.T @ z / cnt
    var = jnp.maximum(onehot.T @ z**2 / cnt - mean**2, 1e-8)
    eff = jnp.abs(mean - mean[:1]) / jnp.sqrt(var[:1]) + 0.5 * jnp.abs(jnp.log(var / var[:1]))
    t = targets.astype(z.dtype)
    t = t / jnp.maximum(t.sum(1, keepdims=True), 1.0)
    a = t.T @ eff / jnp.maximum(t.sum(0), 1e-6)[:, None]
    return a * (1.0 - jnp.eye(d, dtype=z.dtype))


def implied_order(z: jax.Array, env: jax.Array, targets: jax.Array, *,
                  threshold: float = 0.2) -> jax.Array:
    """The causal order implied by the known interventions: ``pos [d]`` int.

    An intervention on ``j`` changes the distribution of ``j``'s descendants and leaves its
    non-descendants alone, so ``D = A > threshold`` (:func:`intervention_effects`) estimates
    the descendant relation. In its transitive closure every node has strictly more
    descendants than each of its descendants (when ``D`` is acyclic), so sorting nodes by
    descendant count (ties broken by the total effect ``sum_i A[j, i]``) gives a
    topological order. Not differentiable (``stop_gradient``).

    Args:
      z: [n, d] latents; env: [n]; targets: [E, d] known targets.
      threshold: effect size above which ``i`` counts as a descendant of ``j``.
    """
    z = jax.lax.stop_gradient(z)
    a = intervention_effects(z, env, targets)
    d = a.shape[-1]
    reach = (a > threshold).astype(jnp.float32)
    for _ in range(max(d.bit_length(), 1)):  # closure by repeated squaring
        reach = jnp.minimum(reach + reach @ reach, 1.0)
    score = reach.sum(1) * (1.0 + a.sum()) + a.sum(1)
    return jnp.argsort(jnp.argsort(-score))
