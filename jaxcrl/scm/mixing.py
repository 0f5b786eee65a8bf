"""Invertible (and injective) random mixing functions ``x = f(z)``.

Every layer is ``u = h @ A_l`` optionally followed by an elementwise activation (no
biases). Each matrix is ``A = g * sqrt(n_out / n_in) * U diag(s) V^T / rms(s)`` with
``U, V`` Haar-random (semi-)orthogonal (Householder QR of a Gaussian with the sign
fix) and singular values ``s ~ LogUniform[1, max_cond]``, so ``cond(A) <= max_cond``
exactly. The normalisation makes isotropic unit-variance inputs give unit-variance
outputs per coordinate, and ``g`` is the activation's gain (``E[(g act(u))^2] = 1`` for
``u ~ N(0, 1)``, He-style; ``g = 1`` when no activation follows), so unit-scale latents
stay at unit scale through the layers instead of exploding or collapsing.

Kinds (``d`` latents, ``D`` observations):

* ``"mlp"`` — iVAE's generator (Khemakhem et al. 2020): ``n_layers`` square layers,
  activation (``leaky_relu`` or ``xtanh``) after every layer but the last. ``D = d``.
* ``"leaky_tanh"`` — CauCA's mixing (Liang et al. 2023): ``n_layers`` square layers,
  each followed by the leaky tanh ``tanh(u) + 0.1 u``. ``D = d``.
* ``"linear"`` — one matrix ``[d, D]`` (``D >= d``); ``n_layers`` is ignored.
* ``"injective"`` — first layer ``[d, D]`` with orthonormal columns (``D >= d``),
  then ``D x D`` layers, activation after all but the last, like ``"mlp"``.

``xtanh(u) = tanh(u) + 0.1 u`` (iVAE's name; identical to CauCA's leaky tanh) is
strictly increasing with slope in ``[0.1, 1.1]`` and is inverted elementwise by
bracketed Newton; leaky ReLU is inverted exactly. The first (possibly
rectangular) layer is inverted by its pseudo-inverse ``V diag(1/s) U^T``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import field

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.checkpoint import register_config
from jaxcrl.scm._util import check_choice, check_shape, normal, uniform

MIXING_KINDS = ("mlp", "linear", "leaky_tanh", "injective")
ACTIVATIONS = ("leaky_relu", "xtanh")
XTANH_SLOPE = 0.1
_NEWTON_STEPS = 30


@register_config
@dataclasses.dataclass(frozen=True)
class MixingConfig:
    """A random mixing-function family.

    Attributes:
        kind: ``"mlp"``, ``"linear"``, ``"leaky_tanh"`` or ``"injective"`` (module doc).
        n_layers: number of matrices (ignored by ``"linear"``).
        obs_dim: observation dimension ``D``; ``None`` means ``D = latent_dim``.
            ``D > latent_dim`` needs kind ``"linear"`` or ``"injective"``.
        activation: ``"leaky_relu"`` or ``"xtanh"`` (``"mlp"``/``"injective"``;
            ``"leaky_tanh"`` always uses xtanh).
        negative_slope: leaky-ReLU slope for negative inputs; 0 gives a ReLU network,
            which can be sampled but not inverted.
        max_cond: upper bound on the condition number of every layer matrix.
    """

    kind: str = "mlp"
    n_layers: int = 3
    obs_dim: int | None = None
    activation: str = "leaky_relu"
    negative_slope: float = 0.2
    max_cond: float = 5.0

    def __post_init__(self) -> None:
        check_choice("MixingConfig.kind", self.kind, MIXING_KINDS)
        check_choice("MixingConfig.activation", self.activation, ACTIVATIONS)
        if self.n_layers < 1:
            raise ValueError(f"MixingConfig.n_layers must be >= 1, got {self.n_layers}")
        if self.obs_dim is not None and self.obs_dim < 1:
            raise ValueError(f"MixingConfig.obs_dim must be >= 1 or None, got {self.obs_dim}")
        if not 0.0 <= self.negative_slope < 1.0:
            raise ValueError(
                f"MixingConfig.negative_slope must be in [0, 1), got {self.negative_slope}"
            )
        if not self.max_cond >= 1.0:
            raise ValueError(f"MixingConfig.max_cond must be >= 1, got {self.max_cond}")

    def resolve_obs_dim(self, latent_dim: int) -> int:
        """The observation dimension ``D`` for ``latent_dim`` latents (validated)."""
        obs_dim = latent_dim if self.obs_dim is None else self.obs_dim
        if obs_dim < latent_dim:
            raise ValueError(
                f"MixingConfig.obs_dim={obs_dim} < latent_dim={latent_dim}: "
                "the mixing would not be injective"
            )
        if obs_dim > latent_dim and self.kind in ("mlp", "leaky_tanh"):
            raise ValueError(
                f"MixingConfig.kind={self.kind!r} is square (obs_dim == latent_dim); "
                f"use kind='injective' or 'linear' for obs_dim={obs_dim} > {latent_dim}"
            )
        return obs_dim


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MixingParams:
    """A sampled mixing function (a pytree).

    Layer 0 is ``first``; layers ``1..L-1`` are stacked in ``layers``.

    Attributes:
        first: ``[d, D]`` first-layer matrix.
        first_inv: ``[D, d]`` its exact pseudo-inverse (from the SVD factors).
        layers: ``[L - 1, D, D]`` square layer matrices (``L - 1`` may be 0).
        layers_inv: ``[L - 1, D, D]`` their exact inverses.
        activation: static, ``None`` (linear), ``"leaky_relu"`` or ``"xtanh"``.
        activate_last: static, whether the last layer is followed by the activation.
        negative_slope: static leaky-ReLU slope.
    """

    first: jax.Array
    first_inv: jax.Array
    layers: jax.Array
    layers_inv: jax.Array
    activation: str | None = field(metadata=dict(static=True))
    activate_last: bool = field(metadata=dict(static=True))
    negative_slope: float = field(metadata=dict(static=True))

    @property
    def latent_dim(self) -> int:
        return self.first.shape[-2]

    @property
    def obs_dim(self) -> int:
        return self.first.shape[-1]

    @property
    def n_layers(self) -> int:
        return 1 + self.layers.shape[-3]

    @property
    def matrices(self) -> tuple[jax.Array, ...]:
        """All layer matrices of an unbatched mixing, ``[d, D]`` then ``[D, D]`` each."""
        return (self.first, *self.layers)

    @property
    def invertible(self) -> bool:
        """False only for ReLU networks (leaky ReLU with slope 0)."""
        return not (self.activation == "leaky_relu" and self.negative_slope == 0.0)

    def activated(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) is followed by the activation."""
        if self.activation is None:
            return False
        return self.activate_last or layer < self.n_layers - 1


# --------------------------------------------------------------------------- activations


def xtanh(u: jax.Array) -> jax.Array:
    """``tanh(u) + 0.1 u`` (iVAE's xtanh = CauCA's leaky tanh)."""
    return jnp.tanh(u) + XTANH_SLOPE * u


def xtanh_inverse(y: jax.Array) -> jax.Array:
    """Elementwise inverse of :func:`xtanh` by bracketed (safeguarded) Newton.

    ``a |u| <= |xtanh(u)| <= (1 + a) |u|`` brackets the root in
    ``[y / (1 + a), y / a]``; each step takes the Newton step if it stays inside the
    bracket and bisects otherwise, then shrinks the bracket.
    """
    a = XTANH_SLOPE
    lo = jnp.minimum(y / (1.0 + a), y / a)
    hi = jnp.maximum(y / (1.0 + a), y / a)

    def step(_: int, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple:
        u, lo, hi = carry
        t = jnp.tanh(u)
        residual = t + a * u - y
        lo = jnp.where(residual < 0, u, lo)
        hi = jnp.where(residual > 0, u, hi)
        newton = u - residual / (1.0 - t * t + a)
        inside = (newton >= lo) & (newton <= hi)
        return jnp.where(inside, newton, 0.5 * (lo + hi)), lo, hi

    u, _, _ = jax.lax.fori_loop(0, _NEWTON_STEPS, step, (y / (1.0 + a), lo, hi))
    return u


def _activate(params: MixingParams, u: jax.Array) -> jax.Array:
    if params.activation == "leaky_relu":
        return jnp.where(u >= 0, u, params.negative_slope * u)
    return xtanh(u)


def _deactivate(params: MixingParams, y: jax.Array) -> jax.Array:
    if params.activation == "leaky_relu":
        return jnp.where(y >= 0, y, y / params.negative_slope)
    return xtanh_inverse(y)


def _activation_gain(activation: str, negative_slope: float) -> float:
    """``1 / sqrt(E[act(u)^2])`` for ``u ~ N(0, 1)`` (He-style variance preservation)."""
    if activation == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + negative_slope**2))
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    second_moment = np.sum(weights * (np.tanh(nodes) + XTANH_SLOPE * nodes) ** 2)
    return float(np.sqrt(np.sqrt(2.0 * np.pi) / second_moment))


# --------------------------------------------------------------------------- init


def _orthonormalize(gaussian: jax.Array) -> jax.Array:
    """Q of the QR of ``gaussian [n, k]`` normalised so that ``diag(R) > 0`` (Haar for Gaussians).

    Householder QR written with XLA ops rather than ``jnp.linalg.qr``: jaxlib's batched
    LAPACK QR (what ``vmap`` produces) can deadlock XLA's CPU thread pool when two run
    concurrently, which a vmapped dataset generator triggers for ``D`` around 100.
    """
    n, k = gaussian.shape
    rows = jnp.arange(n)

    def reflect(j: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        a, reflectors = carry
        x = jnp.where(rows >= j, a[:, j], 0.0)
        alpha = -jnp.where(x[j] >= 0, 1.0, -1.0) * jnp.linalg.norm(x)  # R[j, j]
        v = x.at[j].add(-alpha)
        v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(v.dtype).tiny)
        return a - 2.0 * jnp.outer(v, v @ a), reflectors.at[j].set(v)

    r, reflectors = jax.lax.fori_loop(0, k, reflect, (gaussian, jnp.zeros((k, n), gaussian.dtype)))

    def apply(i: int, q: jax.Array) -> jax.Array:  # Q = H_0 ... H_{k-1} I[:, :k]
        v = reflectors[k - 1 - i]
        return q - 2.0 * jnp.outer(v, v @ q)

    q = jax.lax.fori_loop(0, k, apply, jnp.eye(n, k, dtype=gaussian.dtype))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def haar_orthogonal(key: jax.Array, n: int, k: int) -> jax.Array:
    """``[n, k]`` matrix with orthonormal columns, Haar-distributed (``k <= n``).

    QR of a Gaussian matrix with the signs of ``diag(R)`` folded into ``Q``
    (Mezzadri 2007), which makes the distribution exactly uniform.
    """
    return _orthonormalize(normal(key, (n, k)))


def _compose(
    u: jax.Array, v: jax.Array, unit_uniform: jax.Array, max_cond: float, gain: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``A = gain * sqrt(n_out / n_in) * U diag(s) V^T / rms(s)`` and its pseudo-inverse.

    Args:
        u: ``[n_in, n_in]`` orthogonal.
        v: ``[n_out, n_in]`` orthonormal columns.
        unit_uniform: ``[n_in]`` uniform on ``[0, 1)``; ``s = max_cond ** unit_uniform``.
        max_cond: condition-number bound.
        gain: overall scale.
    """
    n_in, n_out = v.shape[-1], v.shape[-2]
    s = jnp.exp(unit_uniform * math.log(max_cond))
    # Unit-variance isotropic inputs give unit-variance outputs per coordinate (times gain).
    s = gain * math.sqrt(n_out / n_in) * s / jnp.sqrt(jnp.mean(s**2))
    return (u * s) @ v.T, (v / s) @ u.T


def conditioned_matrix(
    key: jax.Array, n_in: int, n_out: int, max_cond: float, gain: float | jax.Array = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Random ``[n_in, n_out]`` matrix (``n_in <= n_out``) of condition number ``<= max_cond``.

    ``A = gain * sqrt(n_out / n_in) * U diag(s) V^T / rms(s)`` with Haar ``U [n_in, n_in]``,
    ``V [n_out, n_in]`` and ``s ~ LogUniform[1, max_cond]``, so isotropic unit-variance
    inputs give outputs of variance ``gain**2`` per coordinate.

    Returns:
        ``(A [n_in, n_out], A_pinv [n_out, n_in])`` where ``A @ A_pinv = I``.
    """
    k_u, k_v, k_s = jax.random.split(key, 3)
    u = haar_orthogonal(k_u, n_in, n_in)
    v = haar_orthogonal(k_v, n_out, n_in)
    return _compose(u, v, uniform(k_s, (n_in,)), max_cond, gain)


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_mixing(key: jax.Array, cfg: MixingConfig, latent_dim: int) -> MixingParams:
    """Draws a random mixing function from ``latent_dim`` latents to ``D`` observations.

    Every layer's matrix is distributed as :func:`conditioned_matrix`; all orthogonal
    factors come from one batched orthonormalisation (one compiled loop).

    Args:
        key: PRNG key.
        cfg: mixing family (static).
        latent_dim: ``d`` (static).

    Returns:
        MixingParams; ``apply_mixing`` maps ``[n, d] -> [n, D]``.
    """
    d, obs_dim = latent_dim, cfg.resolve_obs_dim(latent_dim)
    n_layers = 1 if cfg.kind == "linear" else cfg.n_layers
    activation = {"linear": None, "leaky_tanh": "xtanh"}.get(cfg.kind, cfg.activation)
    activate_last = cfg.kind == "leaky_tanh"
    act_gain = 1.0 if activation is None else _activation_gain(activation, cfg.negative_slope)
    gains = jnp.asarray(
        [
            act_gain if activation is not None and (activate_last or layer < n_layers - 1) else 1.0
            for layer in range(n_layers)
        ],
        jnp.float32,
    )
    k_gaussian, k_uniform = jax.random.split(key)
    gaussian = normal(k_gaussian, (n_layers, 2, obs_dim, obs_dim))  # (U, V) per layer
    # Layer 0's U is d x d: orthonormalising blockdiag(G, I) gives blockdiag(Haar_d, I).
    first_u = jnp.eye(obs_dim).at[:d, :d].set(gaussian[0, 0, :d, :d])
    gaussian = gaussian.at[0, 0].set(first_u)
    q = jax.vmap(jax.vmap(_orthonormalize))(gaussian)
    unit_uniform = uniform(k_uniform, (n_layers, obs_dim))
    # Layer 0's V: the first d columns of a Haar D x D matrix (Haar on the Stiefel manifold).
    first, first_inv = _compose(
        q[0, 0, :d, :d], q[0, 1, :, :d], unit_uniform[0, :d], cfg.max_cond, gains[0]
    )
    layers, layers_inv = jax.vmap(_compose, in_axes=(0, 0, 0, None, 0))(
        q[1:, 0], q[1:, 1], unit_uniform[1:], cfg.max_cond, gains[1:]
    )
    return MixingParams(
        first=first,
        first_inv=first_inv,
        layers=layers,
        layers_inv=layers_inv,
        activation=activation,
        activate_last=activate_last,
        negative_slope=cfg.negative_slope,
    )


# --------------------------------------------------------------------------- apply


@jax.jit
def apply_mixing(params: MixingParams, z: jax.Array) -> jax.Array:
    """Mixes latents into observations.

    Args:
        params: the mixing function.
        z: ``[n, d]`` latents.

    Returns:
        x: ``[n, D]`` observations.
    """
    check_shape("z", z, (None, params.latent_dim))
    h = z
    for layer in range(params.n_layers):
        h = h @ (params.first if layer == 0 else params.layers[layer - 1])
        if params.activated(layer):
            h = _activate(params, h)
    return h


@jax.jit
def invert_mixing(params: MixingParams, x: jax.Array) -> jax.Array:
    """Recovers latents from observations, ``invert_mixing(p, apply_mixing(p, z)) == z``.

    For ``D > d`` the first layer is inverted by its pseudo-inverse, i.e. ``x`` is
    projected onto the image of the mixing.

    Args:
        params: an invertible mixing function.
        x: ``[n, D]`` observations.

    Returns:
        z: ``[n, d]`` latents.

    Raises:
        ValueError: for a ReLU (``negative_slope=0``) network, which is not invertible.
    """
    if not params.invertible:
        raise ValueError(
            "this mixing is not invertible: leaky_relu with negative_slope=0 (ReLU) "
            "loses the sign of negative pre-activations"
        )
    check_shape("x", x, (None, params.obs_dim))
    h = x
    for layer in reversed(range(params.n_layers)):
        if params.activated(layer):
            h = _deactivate(params, h)
        h = h @ (params.first_inv if layer == 0 else params.layers_inv[layer - 1])
    return h
