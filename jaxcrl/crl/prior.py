"""Learnable latent SCM densities ``log p_e(z)`` for every environment ``e``.

One parameter pytree :class:`PriorParams` describes a latent SCM over ``d`` latents with a
weighted adjacency ``W [d, d]`` (``W[i, j]`` is the edge ``i -> j``), Gaussian noise scales,
and per-environment intervention parameters. The density factorizes over nodes::

    log p_e(z) = sum_j [ (1 - t_ej) log N(z_j; loc_j(z), s_j) + t_ej log N(z_j; loc'_ej(z), s'_ej) ]
                 + log |det(I - W_e)|                                      (linear only)

* ``loc_j(z) = (z W)_j`` (linear) or ``MLP_j(z * W[:, j])`` (nonlinear: ``W`` gates each
  parent's input, so ``|W|`` is the learned graph in both cases).
* perfect intervention on ``j`` in ``e``: ``loc'_ej = m_ej`` (parents cut);
  soft: ``loc'_ej = a_ej loc_j(z) + m_ej`` (parents kept, mechanism rescaled and shifted,
  the same family as :mod:`jaxcrl.scm`).
* ``t_ej`` are the targets: known (a ``[E, d]`` mask from the data) or unknown, in which case
  each sample of an interventional environment is a mixture over single-node targets with
  learned weights ``softmax(target_logits[e])`` (a per-sample relaxation of the
  per-environment choice; the argmax is the estimated target).
* ``log|det(I - W_e)|`` (``W_e``: ``W`` with intervened columns cut or scaled) makes the
  linear density normalized for *any* ``W``, cyclic included, so the acyclicity penalty
  only has to pick the DAG, not repair the likelihood. It is 0 for every DAG.

Acyclicity: :func:`acyclicity` is DAG-GNN's ``h(W) = tr((I + W∘W/d)^d) - d``, zero iff ``W``
is a DAG.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

_LOG_2PI = math.log(2 * math.pi)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PriorParams:
    """Parameters of a learnable latent SCM (all unconstrained).

    Attributes:
      w: [d, d] edge weights (diagonal ignored).
      log_scale: [d] log noise std of each node's observational mechanism.
      int_mean: [E, d] intervention means / shifts.
      int_log_scale: [E, d] log noise std of intervened mechanisms.
      int_factor: [E, d] soft-intervention factor on the original mechanism.
      target_logits: [E, d] logits of each environment's target (unknown-target mode).
      mlp_w1: [d, d, h] per-node MLP input weights (nonlinear; [d, d, 0] when linear).
      mlp_b1: [d, h] hidden biases.
      mlp_w2: [d, h] output weights.
    """

    w: jax.Array
    log_scale: jax.Array
    int_mean: jax.Array
    int_log_scale: jax.Array
    int_factor: jax.Array
    target_logits: jax.Array
    mlp_w1: jax.Array
    mlp_b1: jax.Array
    mlp_w2: jax.Array


def init_prior(key: jax.Array, d: int, n_envs: int, *, hidden: int = 0) -> PriorParams:
    """Initial prior parameters: no edges (small random weights), unit noise.

    Args:
      key: PRNG key.
      d: latent dimension.
      n_envs: number of environments E (environment 0 is observational).
      hidden: hidden width of the per-node MLPs; 0 for a linear SCM.
    """
    k_w, k1, k2, k3 = jax.random.split(key, 4)
    return PriorParams(
        w=0.01 * jax.random.normal(k_w, (d, d)),
        log_scale=jnp.zeros(d),
        int_mean=jnp.zeros((n_envs, d)),
        int_log_scale=jnp.zeros((n_envs, d)),
        int_factor=jnp.ones((n_envs, d)),
        target_logits=jnp.zeros((n_envs, d)),
        mlp_w1=jax.random.normal(k1, (d, d, hidden)),
        mlp_b1=jax.random.normal(k2, (d, hidden)),
        mlp_w2=jax.random.normal(k3, (d, hidden)) / math.sqrt(max(hidden, 1)),
    )


def masked_weights(params: PriorParams) -> jax.Array:
    """``W`` with its diagonal zeroed: the learned weighted graph [d, d]."""
    d = params.w.shape[-1]
    return params.w * (1.0 - jnp.eye(d, dtype=params.w.dtype))


def gated_pre_activations(z: jax.Array, w: jax.Array, w1: jax.Array) -> jax.Array:
    """First-layer pre-activations of per-node MLPs that see their parents gated by ``W``.

    ``pre[n, j, k] = sum_i (z[n, i] w[i, j]) w1[j, i, k]``, computed as one matmul of ``z``
    with the folded weights ``w[i, j] w1[j, i, k]`` rather than by materializing the gated
    inputs ``[n, d, d]`` (a batched contraction of size ``d``: ~3x slower on CPU, forward
    and backward, under vmap).

    Args:
      z: [n, d] latents; w: [d, d] edge weights (``w[i, j]``: ``i -> j``);
      w1: [d, d, h] node ``j``'s weights from input ``i`` to hidden unit ``k``.

    Returns:
      [n, d, h].
    """
    d, _, h = w1.shape
    folded = w[:, :, None] * jnp.swapaxes(w1, 0, 1)  # [i, j, k]
    return (z @ folded.reshape(d, d * h)).reshape(*z.shape[:-1], d, h)


def node_loc(params: PriorParams, z: jax.Array) -> jax.Array:
    """Observational mechanism means ``loc_j(z)`` for every node. z: [n, d] -> [n, d]."""
    w = masked_weights(params)
    if params.mlp_w1.shape[-1] == 0:
        return z @ w
    # Nonlinear: node j's MLP sees its parents gated by W[:, j]; MLP_j(0) = 0 by centring.
    pre = gated_pre_activations(z, w, params.mlp_w1)
    hidden = jnp.tanh(pre + params.mlp_b1) - jnp.tanh(params.mlp_b1)
    return jnp.einsum("njk,jk->nj", hidden, params.mlp_w2) + z @ w


def _normal_logpdf(x: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
    return -0.5 * (((x - loc) * jnp.exp(-log_scale)) ** 2 + _LOG_2PI) - log_scale


def node_log_probs(
    params: PriorParams, z: jax.Array, env: jax.Array, *, soft: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-node log densities under the observational and the intervened mechanisms.

    Args:
      params: prior parameters.
      z: [n, d] latents.
      env: [n] environment index of each sample.
      soft: soft (mechanism kept, rescaled) rather than perfect interventions.

    Returns:
      ``(lp_obs [n, d], lp_int [n, d], loc [n, d])``.
    """
    loc = node_loc(params, z)
    lp_obs = _normal_logpdf(z, loc, params.log_scale)
    onehot = env_onehot(env, params.int_mean.shape[0], z.dtype)
    mean = onehot @ params.int_mean
    int_loc = (onehot @ params.int_factor) * loc + mean if soft else mean
    lp_int = _normal_logpdf(z, int_loc, onehot @ params.int_log_scale)
    return lp_obs, lp_int, loc


def env_onehot(env: jax.Array, n_envs: int, dtype=jnp.float32) -> jax.Array:
    """[n] indices -> [n, E] one-hot. Per-environment parameters are read as ``onehot @ p``
    rather than ``p[env]``: a gather's gradient is a scatter-add, several times slower on
    CPU under vmap than the matmul."""
    return jax.nn.one_hot(env, n_envs, dtype=dtype)


def _logdet_linear(params: PriorParams, targets: jax.Array, soft: bool) -> jax.Array:
    """``log|det(I - W_e)|`` per environment for ``[E, d]`` (soft) target weights."""
    w = masked_weights(params)
    d = w.shape[-1]
    keep = 1.0 - targets  # [E, d] column multipliers for perfect interventions
    if soft:
        keep = keep + targets * params.int_factor
    w_env = w[None] * keep[:, None, :]
    return jnp.linalg.slogdet(jnp.eye(d) - w_env)[1]


def log_prob(
    params: PriorParams,
    z: jax.Array,
    env: jax.Array,
    *,
    targets: jax.Array | None,
    soft: bool = False,
) -> jax.Array:
    """``log p_{env_n}(z_n)`` for each sample.

    Args:
      params: prior parameters.
      z: [n, d] latents.
      env: [n] int environment indices.
      targets: [E, d] known target mask (row 0 all False), or None for unknown targets
        (a mixture over single-node targets with weights ``softmax(target_logits[e])``;
        environment 0 stays observational).
      soft: soft interventions (else perfect).

    Returns:
      [n] log densities.
    """
    lp_obs, lp_int, _ = node_log_probs(params, z, env, soft=soft)
    linear = params.mlp_w1.shape[-1] == 0
    base = lp_obs.sum(-1)
    if targets is not None:
        onehot = env_onehot(env, targets.shape[0], z.dtype)
        t = onehot @ targets.astype(z.dtype)
        out = base + jnp.sum(t * (lp_int - lp_obs), -1)
        if linear:
            out = out + onehot @ _logdet_linear(params, targets.astype(z.dtype), soft)
        return out
    # Unknown single-node targets: each sample is a mixture over which node was intervened.
    onehot = env_onehot(env, params.target_logits.shape[0], z.dtype)
    log_pi = onehot @ jax.nn.log_softmax(params.target_logits, -1)  # [n, d]
    per_target = base[:, None] + (lp_int - lp_obs)  # [n, d]
    obs = base
    if linear:
        per_target = per_target + onehot @ _logdet_single_targets(params, soft)
        obs = obs + jnp.linalg.slogdet(jnp.eye(z.shape[-1]) - masked_weights(params))[1]
    return jnp.where(env == 0, obs, jax.nn.logsumexp(log_pi + per_target, -1))


def env_log_probs(
    params: PriorParams,
    z: jax.Array,
    *,
    targets: jax.Array | None,
    soft: bool = False,
) -> jax.Array:
    """``log p_e(z_n)`` of every sample under every environment: ``[n, E]``.

    Column ``e`` equals :func:`log_prob` with ``env = e`` for all samples, computed once
    for all environments (the observational mechanism is shared). Differences of columns
    are exact log-density ratios ``log p_e(z) / p_0(z)``: the logits of the contrastive
    route (:func:`jaxcrl.crl.models.contrastive_model`), where ``softmax_e`` of this row is
    the Bayes posterior of the environment given ``z`` under equal environment sizes.

    Args:
      params: prior parameters.
      z: [n, d] latents.
      targets: [E, d] known target mask, or None for unknown single-node targets (each
        interventional environment a mixture over nodes, weights ``softmax(target_logits)``).
      soft: soft interventions (else perfect).
    """
    n_envs, d = params.int_mean.shape
    loc = node_loc(params, z)
    lp_obs = _normal_logpdf(z, loc, params.log_scale)  # [n, d]
    int_loc = params.int_mean[None] + (params.int_factor[None] * loc[:, None] if soft else 0.0)
    lp_int = _normal_logpdf(z[:, None, :], int_loc, params.int_log_scale[None])  # [n, E, d]
    diff = lp_int - lp_obs[:, None, :]
    base = lp_obs.sum(-1)[:, None]
    linear = params.mlp_w1.shape[-1] == 0
    if targets is not None:
        t = targets.astype(z.dtype)
        out = base + jnp.einsum("ned,ed->ne", diff, t)
        if linear:
            out = out + _logdet_linear(params, t, soft)[None]
        return out
    per_target = diff + (_logdet_single_targets(params, soft)[None] if linear else 0.0)
    log_pi = jax.nn.log_softmax(params.target_logits, -1)
    mix = base + jax.nn.logsumexp(log_pi[None] + per_target, -1)  # [n, E]
    obs = base[:, 0]
    if linear:
        obs = obs + jnp.linalg.slogdet(jnp.eye(d, dtype=z.dtype) - masked_weights(params))[1]
    return mix.at[:, 0].set(obs)


def target_scores(
    params: PriorParams, z: jax.Array, env: jax.Array, *, soft: bool = False
) -> jax.Array:
    """``S[e, j] = sum_{n in e} log p(z_n | env e intervenes on node j alone)``, up to a
    constant per environment: ``[E, d]`` (row 0, the observational environment, is 0).

    The log-likelihood of a hard single-node target assignment ``e -> j_e`` is
    ``sum_e S[e, j_e]`` plus a term that does not depend on it, so the maximum-likelihood
    assignment is a linear assignment problem (:func:`jaxcrl.crl.targets.assign_targets`).

    Args:
      params: prior parameters (of the fitted model).
      z: [n, d] encoded latents.
      env: [n] environment of each sample.
      soft: soft interventions (else perfect).
    """
    n_envs, d = params.int_mean.shape
    loc = node_loc(params, z)
    lp_obs = _normal_logpdf(z, loc, params.log_scale)
    onehot = env_onehot(env, n_envs, z.dtype)  # [n, E]
    int_loc = onehot @ params.int_mean + ((onehot @ params.int_factor) * loc if soft else 0.0)
    lp_int = _normal_logpdf(z, int_loc, onehot @ params.int_log_scale)  # [n, d]
    s = onehot.T @ (lp_int - lp_obs)  # [E, d]
    if params.mlp_w1.shape[-1] == 0:
        s = s + onehot.sum(0)[:, None] * _logdet_single_targets(params, soft)
    return s.at[0].set(0.0)


def _logdet_single_targets(params: PriorParams, soft: bool) -> jax.Array:
    """``log|det(I - W_ej)|`` for every environment e and single target j: [E, d]."""
    w = masked_weights(params)
    n_envs, d = params.target_logits.shape
    eye = jnp.eye(d, dtype=w.dtype)

    def one(e, j):
        factor = params.int_factor[e, j] if soft else 0.0
        keep = 1.0 - eye[j] * (1.0 - factor)
        return jnp.linalg.slogdet(eye - w * keep[None, :])[1]

    return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(jnp.arange(n_envs), jnp.arange(d))


def acyclicity(w: jax.Array) -> jax.Array:
    """Polynomial acyclicity ``tr((I + W∘W / d)^d) - d`` (Yu et al. 2019, DAG-GNN).

    Like NOTEARS' ``tr(exp(W∘W)) - d`` it is >= 0 and zero iff ``W`` is a DAG (every term
    ``tr((W∘W)^k)``, k <= d, sums weights of closed walks), but it is a fixed number of
    matmuls: ``expm``'s data-dependent scaling-and-squaring turns into all-branches
    ``select``s under ``vmap`` and was the slowest part of a vmapped multi-seed step.
    """
    d = w.shape[-1]
    a = (w * w) * (1.0 - jnp.eye(d, dtype=w.dtype)) / d
    m = jnp.eye(d, dtype=w.dtype) + a
    return jnp.trace(jnp.linalg.matrix_power(m, d)) - d


def acyclicity_f64(w) -> np.ndarray:
    """:func:`acyclicity` of ``w [..., d, d]`` evaluated in float64 on the host (under
    ``jax.enable_x64``), for reporting and choosing rather than training: in float32,
    ``tr(.) - d`` cancels to a few ulp of ``d``, which blurs values under ~1e-6."""
    w = np.asarray(w, np.float64)
    with jax.enable_x64(True):
        flat = jax.vmap(acyclicity)(jnp.asarray(w.reshape(-1, *w.shape[-2:])))
        return np.asarray(flat, np.float64).reshape(w.shape[:-2])


def estimated_targets(params: PriorParams, known: jax.Array | None = None) -> jax.Array:
    """[E, d] bool target estimate: ``known`` if given, else argmax of the target logits
    (environment 0 observational)."""
    if known is not None:
        return known.astype(bool)
    d = params.target_logits.shape[-1]
    hard = jax.nn.one_hot(jnp.argmax(params.target_logits, -1), d, dtype=bool)
    return hard.at[0].set(False)
