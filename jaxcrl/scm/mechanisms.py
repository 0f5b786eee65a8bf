"""Structural causal models over latent variables: mechanisms, noise, interventions.

An SCM on ``d`` latents ``z`` over a DAG ``adj`` (``adj[i, j] = 1`` means ``i -> j``)
has one mechanism per node::

    z_j = loc_j(pa_j) + scale_j(pa_j) * eps_j,      eps_j standardized (mean 0, var 1)

* ``"linear"``:         ``loc_j = sum_i W[i, j] z_i``, ``scale_j = noise_scale_j``.
* ``"nonlinear"``:      ``loc_j = MLP_j(z * W[:, j])``, ``scale_j = noise_scale_j``
  (additive noise).
* ``"location_scale"``: ``loc_j`` as in nonlinear, ``scale_j = noise_scale_j * sigma_j(pa_j)``
  with ``log sigma_j = mid + half_width * tanh(MLP'_j)``, i.e. ``sigma_j`` in
  ``[sigma_low, sigma_high]``.

``W [d, d]`` is zero exactly where there is no edge, so it is also the edge-strength
matrix of the nonlinear models (it weights each parent's input to the node's MLP).
The per-node MLPs have one tanh hidden layer and are centred, ``MLP_j(0) = 0``, so
root nodes are pure (scaled) noise in every mechanism.

Interventions on a target set ``T`` (a ``[d] bool`` mask, so environments vmap):

* perfect: ``z_j = new_mean_j + new_scale_j * eps_j``  (edges into ``j`` cut).
* soft:    ``z_j = weight_factor_j * loc_j(pa_j) + new_mean_j + new_scale_j * eps_j``
  (parents kept, mechanism rescaled, shifted and given a new noise scale).

Sampling needs no topological order: the structural map ``z <- F(z, eps)`` is
iterated ``d`` times from ``z = 0``, which is exact for a DAG (after ``k`` steps all
nodes whose longest path from a root has ``< k`` edges are final). Linear SCMs
also have the closed form ``z = u (I - W')^{-1}`` with ``u = mean + scale * eps``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import field

import jax
import jax.numpy as jnp

from jaxcrl.checkpoint import register_config
from jaxcrl.scm._util import (
    check_choice,
    check_positive,
    check_range,
    check_shape,
    normal,
    uniform,
)
from jaxcrl.scm.graphs import GraphConfig, make_graph

MECHANISMS = ("linear", "nonlinear", "location_scale")
NOISE_FAMILIES = ("gaussian", "laplace", "uniform")
INTERVENTION_KINDS = ("perfect", "soft")
SOLVE_METHODS = ("auto", "closed_form", "fixed_point")


# --------------------------------------------------------------------------- configs


@register_config
@dataclasses.dataclass(frozen=True)
class SCMConfig:
    """A random SCM family.

    Attributes:
        latent_dim: number of latent variables ``d``.
        graph: DAG distribution.
        mechanism: ``"linear"``, ``"nonlinear"`` (additive-noise MLP) or ``"location_scale"``.
        noise: standardized noise family ``"gaussian"``, ``"laplace"`` or ``"uniform"``.
        noise_scale: standard deviation of every node's noise term.
        weight_low, weight_high: ``|W[i, j]| ~ U[weight_low, weight_high]`` with a random sign.
        hidden: hidden width of the per-node MLPs (nonlinear mechanisms).
        mlp_gain: output-weight scale of the MLPs, ``w2 ~ N(0, mlp_gain**2 / hidden)``;
            about ``3`` makes parent effects clearly visible against unit noise.
        sigma_low, sigma_high: range of the location-scale multiplier ``sigma_j(pa)``.
    """

    latent_dim: int = 5
    graph: GraphConfig = GraphConfig()
    mechanism: str = "linear"
    noise: str = "gaussian"
    noise_scale: float = 1.0
    weight_low: float = 0.5
    weight_high: float = 2.0
    hidden: int = 16
    mlp_gain: float = 3.0
    sigma_low: float = 0.5
    sigma_high: float = 2.0

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"SCMConfig.latent_dim must be >= 1, got {self.latent_dim}")
        check_choice("SCMConfig.mechanism", self.mechanism, MECHANISMS)
        check_choice("SCMConfig.noise", self.noise, NOISE_FAMILIES)
        check_positive("SCMConfig.noise_scale", self.noise_scale)
        check_range("SCMConfig.weight_low/weight_high", self.weight_low, self.weight_high)
        check_positive("SCMConfig.weight_low", self.weight_low, allow_zero=True)
        if self.hidden < 1:
            raise ValueError(f"SCMConfig.hidden must be >= 1, got {self.hidden}")
        check_positive("SCMConfig.mlp_gain", self.mlp_gain, allow_zero=True)
        check_range("SCMConfig.sigma_low/sigma_high", self.sigma_low, self.sigma_high, min_low=0)
        self.graph.validate_for(self.latent_dim)


@register_config
@dataclasses.dataclass(frozen=True)
class InterventionConfig:
    """How interventional environments are drawn.

    Attributes:
        kind: ``"perfect"`` (cut parents) or ``"soft"`` (keep parents, change mechanism).
        n_targets: number of intervened latents per environment.
        mean_low, mean_high: ``new_mean ~ U[mean_low, mean_high]``.
        scale_low, scale_high: ``new_scale ~ U[scale_low, scale_high]`` (noise std).
        soft_weight_low, soft_weight_high: ``|weight_factor| ~ U[low, high]``; the
            interval must exclude 0 and 1 so a soft intervention is a clearly
            different mechanism.
        soft_random_sign: give ``weight_factor`` a random sign (else positive).
    """

    kind: str = "perfect"
    n_targets: int = 1
    mean_low: float = -2.0
    mean_high: float = 2.0
    scale_low: float = 0.5
    scale_high: float = 1.5
    soft_weight_low: float = 0.3
    soft_weight_high: float = 0.7
    soft_random_sign: bool = True

    def __post_init__(self) -> None:
        check_choice("InterventionConfig.kind", self.kind, INTERVENTION_KINDS)
        if self.n_targets < 1:
            raise ValueError(f"InterventionConfig.n_targets must be >= 1, got {self.n_targets}")
        check_range("InterventionConfig.mean_low/mean_high", self.mean_low, self.mean_high)
        check_range(
            "InterventionConfig.scale_low/scale_high", self.scale_low, self.scale_high, min_low=0
        )
        check_range(
            "InterventionConfig.soft_weight_low/soft_weight_high",
            self.soft_weight_low,
            self.soft_weight_high,
            min_low=0,
        )
        if self.soft_weight_low <= 1.0 <= self.soft_weight_high:
            raise ValueError(
                "InterventionConfig: [soft_weight_low, soft_weight_high] must exclude 1, "
                f"got [{self.soft_weight_low}, {self.soft_weight_high}]"
            )


# --------------------------------------------------------------------------- pytrees


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NodeMLP:
    """One tanh-MLP per node, stacked over nodes (``j`` = node, ``i`` = input, ``k`` = hidden).

    Attributes:
        w1: ``[d, d, hidden]`` input weights ``w1[j, i, k]``.
        b1: ``[d, hidden]`` hidden biases.
        w2: ``[d, hidden]`` output weights.
    """

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SCMParams:
    """Parameters of one SCM (a pytree; vmapping ``init_scm`` over keys batches every leaf).

    Attributes:
        adj: ``[d, d] float32`` DAG, ``adj[i, j] = 1`` for ``i -> j``.
        weights: ``[d, d]`` edge weights ``W[i, j]`` of ``i -> j``, zero off the graph.
        noise_scale: ``[d]`` noise standard deviations.
        mean_net: location MLPs (``None`` for linear SCMs).
        scale_net: scale MLPs (``None`` unless location-scale).
        mechanism: static, one of ``MECHANISMS``.
        noise: static, one of ``NOISE_FAMILIES``.
        sigma_range: static ``(sigma_low, sigma_high)`` of location-scale SCMs.
    """

    adj: jax.Array
    weights: jax.Array
    noise_scale: jax.Array
    mean_net: NodeMLP | None
    scale_net: NodeMLP | None
    mechanism: str = field(metadata=dict(static=True))
    noise: str = field(metadata=dict(static=True))
    sigma_range: tuple[float, float] = field(default=(0.5, 2.0), metadata=dict(static=True))

    @property
    def latent_dim(self) -> int:
        return self.adj.shape[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Intervention:
    """Per-environment intervention; fields are meaningful only where ``targets`` is True.

    Attributes:
        targets: ``[d] bool`` intervened latents.
        new_mean: ``[d]`` new mean (perfect) or additive shift (soft).
        new_scale: ``[d]`` new noise standard deviation.
        weight_factor: ``[d]`` factor on the original mechanism (soft only).
    """

    targets: jax.Array
    new_mean: jax.Array
    new_scale: jax.Array
    weight_factor: jax.Array

    @classmethod
    def make(
        cls,
        targets: jax.Array,
        *,
        new_mean: float | jax.Array = 0.0,
        new_scale: float | jax.Array = 1.0,
        weight_factor: float | jax.Array = 1.0,
    ) -> Intervention:
        """Builds an intervention on the ``[d] bool`` mask ``targets``, broadcasting values."""
        targets = jnp.asarray(targets, dtype=bool)
        shape = targets.shape

        def full(v: float | jax.Array) -> jax.Array:
            return jnp.broadcast_to(jnp.asarray(v, jnp.float32), shape)

        return cls(targets, full(new_mean), full(new_scale), full(weight_factor))

    @classmethod
    def observational(cls, d: int) -> Intervention:
        """The empty intervention on ``d`` latents."""
        return cls.make(jnp.zeros(d, dtype=bool))


# --------------------------------------------------------------------------- init


def _init_node_mlp(key: jax.Array, adj: jax.Array, hidden: int, gain: float) -> NodeMLP:
    d = adj.shape[0]
    # One draw for all three weight blocks keeps the compiled program small.
    draws = normal(key, (d, d + 2, hidden))
    fan_in = jnp.maximum(adj.sum(axis=0), 1.0)  # number of parents of each node
    return NodeMLP(
        w1=draws[:, :d] / jnp.sqrt(fan_in)[:, None, None],
        b1=draws[:, d],
        w2=draws[:, d + 1] * (gain / math.sqrt(hidden)),
    )


@functools.partial(jax.jit, static_argnums=1)
def init_scm(key: jax.Array, cfg: SCMConfig) -> SCMParams:
    """Draws a random SCM: a DAG, edge weights and (for nonlinear SCMs) node MLPs.

    The same key gives the same graph and weights for every mechanism.

    Args:
        key: PRNG key.
        cfg: SCM family (static).

    Returns:
        SCMParams with ``adj, weights [d, d]`` and ``noise_scale [d]``.
    """
    d = cfg.latent_dim
    k_graph, k_weights, k_mean, k_scale = jax.random.split(key, 4)
    adj = make_graph(k_graph, cfg.graph, d)
    u_abs, u_sign = uniform(k_weights, (2, d, d))
    magnitude = cfg.weight_low + (cfg.weight_high - cfg.weight_low) * u_abs
    sign = jnp.where(u_sign < 0.5, -1.0, 1.0)
    nonlinear = cfg.mechanism != "linear"
    return SCMParams(
        adj=adj,
        weights=adj * magnitude * sign,
        noise_scale=jnp.full((d,), cfg.noise_scale, jnp.float32),
        mean_net=_init_node_mlp(k_mean, adj, cfg.hidden, cfg.mlp_gain) if nonlinear else None,
        scale_net=(
            _init_node_mlp(k_scale, adj, cfg.hidden, 1.0)
            if cfg.mechanism == "location_scale"
            else None
        ),
        mechanism=cfg.mechanism,
        noise=cfg.noise,
        sigma_range=(cfg.sigma_low, cfg.sigma_high),
    )


def random_targets(key: jax.Array, d: int, n_targets: int) -> jax.Array:
    """A uniformly random set of ``n_targets`` of ``d`` latents as a ``[d] bool`` mask."""
    if not 1 <= n_targets <= d:
        raise ValueError(f"n_targets must be in [1, d={d}], got {n_targets}")
    _, idx = jax.lax.top_k(jax.random.uniform(key, (d,)), n_targets)
    return jnp.zeros(d, dtype=bool).at[idx].set(True)


def sample_intervention(
    key: jax.Array, cfg: InterventionConfig, targets: jax.Array
) -> Intervention:
    """Draws intervention parameters for the ``[d] bool`` mask ``targets``.

    Entries off the targets are neutral (mean 0, scale 1, factor 1).
    """
    targets = jnp.asarray(targets, dtype=bool)
    d = targets.shape[-1]
    u_mean, u_scale, u_factor, u_sign = uniform(key, (4, d))
    mean = cfg.mean_low + (cfg.mean_high - cfg.mean_low) * u_mean
    scale = cfg.scale_low + (cfg.scale_high - cfg.scale_low) * u_scale
    factor = cfg.soft_weight_low + (cfg.soft_weight_high - cfg.soft_weight_low) * u_factor
    if cfg.soft_random_sign:
        factor = jnp.where(u_sign < 0.5, -factor, factor)
    return Intervention(
        targets=targets,
        new_mean=jnp.where(targets, mean, 0.0),
        new_scale=jnp.where(targets, scale, 1.0),
        weight_factor=jnp.where(targets, factor, 1.0),
    )


# --------------------------------------------------------------------------- noise


@functools.partial(jax.jit, static_argnums=(1, 2))
def sample_noise(key: jax.Array, shape: tuple[int, ...], family: str) -> jax.Array:
    """Standardized noise (mean 0, variance 1) of the given family.

    Laplace uses scale ``1/sqrt(2)``; uniform is ``U[-sqrt(3), sqrt(3)]``.

    Returns:
        ``float32`` array of ``shape``.
    """
    check_choice("noise family", family, NOISE_FAMILIES)
    flat = (math.prod(shape),)  # flat draws compile faster, see jaxcrl.scm._util
    if family == "gaussian":
        eps = jax.random.normal(key, flat)
    elif family == "laplace":
        eps = jax.random.laplace(key, flat) / math.sqrt(2.0)
    else:
        eps = jax.random.uniform(key, flat, minval=-math.sqrt(3.0), maxval=math.sqrt(3.0))
    return eps.reshape(shape)


# --------------------------------------------------------------------------- mechanisms


def _apply_node_mlp(net: NodeMLP, weights: jax.Array, z: jax.Array) -> jax.Array:
    """``out[n, j] = w2_j . (tanh(pre_j(z_n)) - tanh(b1_j))`` on W-weighted parents."""
    pre = jnp.einsum("ni,ij,jih->njh", z, weights, net.w1) + net.b1
    return jnp.einsum("njh,jh->nj", jnp.tanh(pre) - jnp.tanh(net.b1), net.w2)


def _mechanism(params: SCMParams, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Location and noise scale of every node given all current values ``z [n, d]``."""
    scale = jnp.broadcast_to(params.noise_scale, z.shape)
    if params.mechanism == "linear":
        return z @ params.weights, scale
    loc = _apply_node_mlp(params.mean_net, params.weights, z)
    if params.mechanism == "location_scale":
        low, high = params.sigma_range
        log_mid, log_half = 0.5 * math.log(low * high), 0.5 * math.log(high / low)
        g = _apply_node_mlp(params.scale_net, params.weights, z)
        scale = scale * jnp.exp(log_mid + log_half * jnp.tanh(g))
    return loc, scale


def _structural_step(
    params: SCMParams, z: jax.Array, eps: jax.Array, iv: Intervention, kind: str
) -> jax.Array:
    """One application of the (intervened) structural map ``z <- F(z, eps)``."""
    loc, scale = _mechanism(params, z)
    new_loc = iv.new_mean + (iv.weight_factor * loc if kind == "soft" else 0.0)
    return jnp.where(iv.targets, new_loc + iv.new_scale * eps, loc + scale * eps)


def _linear_effective(
    params: SCMParams, iv: Intervention, kind: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Intervened linear SCM ``z = z W' + mean + scale * eps``: returns ``W', mean, scale``."""
    if params.mechanism != "linear":
        raise ValueError(f"closed forms need a linear SCM, got mechanism={params.mechanism!r}")
    cut = iv.weight_factor if kind == "soft" else 0.0
    column_factor = jnp.where(iv.targets, cut, 1.0)
    weights = params.weights * column_factor[None, :]
    mean = jnp.where(iv.targets, iv.new_mean, 0.0)
    scale = jnp.where(iv.targets, iv.new_scale, params.noise_scale)
    return weights, mean, scale


def _check_intervention(
    params: SCMParams, intervention: Intervention | None, kind: str
) -> Intervention:
    check_choice("intervention kind", kind, INTERVENTION_KINDS)
    d = params.latent_dim
    if intervention is None:
        return Intervention.observational(d)
    for name in ("targets", "new_mean", "new_scale", "weight_factor"):
        check_shape(f"intervention.{name}", getattr(intervention, name), (d,))
    return dataclasses.replace(intervention, targets=jnp.asarray(intervention.targets, bool))


@functools.partial(jax.jit, static_argnames=("kind", "method"))
def solve_scm(
    params: SCMParams,
    eps: jax.Array,
    intervention: Intervention | None = None,
    *,
    kind: str = "perfect",
    method: str = "auto",
) -> jax.Array:
    """Latents produced by the (intervened) SCM from given standardized noise.

    Deterministic in ``eps``, so sharing ``eps`` across interventions gives
    counterfactuals.

    Args:
        params: the SCM.
        eps: ``[n, d]`` standardized exogenous noise.
        intervention: ``None`` for the observational SCM.
        kind: ``"perfect"`` or ``"soft"`` (static).
        method: ``"closed_form"`` (linear only: ``z = u (I - W')^{-1}``),
            ``"fixed_point"`` (``d`` iterations of the structural map) or ``"auto"``
            (closed form for linear SCMs).

    Returns:
        z: ``[n, d]`` latents.
    """
    check_choice("method", method, SOLVE_METHODS)
    iv = _check_intervention(params, intervention, kind)
    d = params.latent_dim
    check_shape("eps", eps, (None, d))
    if method == "auto":
        method = "closed_form" if params.mechanism == "linear" else "fixed_point"
    if method == "closed_form":
        weights, mean, scale = _linear_effective(params, iv, kind)
        return (mean + scale * eps) @ _linear_transfer(weights)

    def step(_: int, z: jax.Array) -> jax.Array:
        return _structural_step(params, z, eps, iv, kind)

    return jax.lax.fori_loop(0, d, step, jnp.zeros_like(eps))


def sample_scm(
    params: SCMParams,
    key: jax.Array,
    n: int,
    intervention: Intervention | None = None,
    *,
    kind: str = "perfect",
) -> jax.Array:
    """Draws ``n`` samples from the observational or an interventional distribution.

    Args:
        params: the SCM.
        key: PRNG key.
        n: number of samples (static).
        intervention: ``None`` for observational; its ``targets`` mask is an array,
            so this function vmaps over environments.
        kind: ``"perfect"`` or ``"soft"`` (static).

    Returns:
        z: ``[n, d]`` float32.
    """
    eps = sample_noise(key, (n, params.latent_dim), params.noise)
    return solve_scm(params, eps, intervention, kind=kind)


def _linear_transfer(weights: jax.Array) -> jax.Array:
    """``B = (I - W')^{-1}``, so that ``z = u B``, for a DAG's (nilpotent) ``W'``.

    ``W'^d = 0``, so ``B = I + W' + ... + W'^(d-1) = prod_i (I + W'^(2^i))``: ``log2 d``
    matrix products and no LAPACK call (batched LAPACK kernels can deadlock XLA's CPU
    thread pool when several run concurrently).
    """
    eye = jnp.eye(weights.shape[-1], dtype=weights.dtype)
    transfer, power = eye + weights, weights
    for _ in range((weights.shape[-1] - 1).bit_length() - 1):  # covers powers < 2 ** steps
        power = power @ power
        transfer = transfer @ (eye + power)
    return transfer


def analytic_mean(
    params: SCMParams, intervention: Intervention | None = None, *, kind: str = "perfect"
) -> jax.Array:
    """Exact mean ``[d]`` of a linear SCM: ``mean' B`` with ``B = (I - W')^{-1}``."""
    iv = _check_intervention(params, intervention, kind)
    weights, mean, _ = _linear_effective(params, iv, kind)
    return mean @ _linear_transfer(weights)


def analytic_covariance(
    params: SCMParams, intervention: Intervention | None = None, *, kind: str = "perfect"
) -> jax.Array:
    """Exact covariance ``[d, d]`` of a linear SCM (any standardized noise family).

    ``Sigma = B^T D B`` with ``B = (I - W')^{-1}``, ``D = diag(scale**2)``, where ``W'``
    has the intervened columns cut (perfect) or multiplied by ``weight_factor``
    (soft) and ``scale`` holds the (new) noise standard deviations.
    """
    iv = _check_intervention(params, intervention, kind)
    weights, _, scale = _linear_effective(params, iv, kind)
    transfer = _linear_transfer(weights)
    return transfer.T @ (scale[:, None] ** 2 * transfer)
