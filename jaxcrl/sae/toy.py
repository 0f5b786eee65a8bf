"""Toy superposition data with known features (Sharkey et al. 2022) and recovery scores.

``n_features`` unit random directions in ``dim < n_features`` dimensions. Each sample
activates a sparse, correlated set of features: feature ``i`` fires when a standard normal
``g_i`` exceeds ``Φ⁻¹(1 − p_i)``, where ``g = √(1−ρ) ε + √ρ A c`` (``ε ~ N(0, I_n)``,
``c ~ N(0, I_r)``, ``A`` random unit rows: a low-rank Gaussian copula, so marginal firing
rates are exactly ``p_i`` and features are positively/negatively correlated through ``A``).
Rates decay geometrically with the feature index from ``p_0`` to ``freq_ratio · p_0``,
scaled so ``Σ p_i = avg_active``. Active features get magnitudes ``U(0, 1)``;
``x = Σ_i f_i d_i``.

Recovery of the directions by an SAE decoder ``W_dec`` ``[d_sae, dim]``:
:func:`mmcs` (mean over true features of the best |cos| to any decoder row) and
:func:`direction_mcc` (Hungarian matching on |cos|, as SAELens' synthetic evals).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from jaxcrl.checkpoint import register_config
from jaxcrl.metrics.regression import hungarian_match
from jaxcrl.sae.metrics import evaluate


@register_config
@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Toy superposition setup.

    Attributes:
      n_features: number of ground-truth features n.
      dim: ambient dimension m (< n for superposition).
      avg_active: expected number of active features per sample.
      freq_ratio: firing rate of the rarest feature relative to the most frequent one.
      correlation: ρ, the share of the firing propensity driven by shared factors.
      corr_rank: number of shared factors r.
    """

    n_features: int = 512
    dim: int = 256
    avg_active: float = 5.0
    freq_ratio: float = 0.25
    correlation: float = 0.3
    corr_rank: int = 16

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.dim < 1:
            raise ValueError(f"ToyConfig: n_features and dim must be >= 1, got "
                             f"{self.n_features}, {self.dim}")
        if not 0 < self.avg_active < self.n_features:
            raise ValueError(f"ToyConfig.avg_active must be in (0, n_features), "
                             f"got {self.avg_active}")
        if not 0 < self.freq_ratio <= 1 or not 0 <= self.correlation < 1:
            raise ValueError("ToyConfig: freq_ratio must be in (0, 1], correlation in [0, 1)")


class Toy(NamedTuple):
    """A sampled toy model.

    Attributes:
      directions: ``[n_features, dim]`` unit feature directions.
      probs: ``[n_features]`` marginal firing rates.
      factors: ``[n_features, corr_rank]`` unit loadings of the shared factors.
      correlation: ρ.
    """

    directions: jax.Array
    probs: jax.Array
    factors: jax.Array
    correlation: jax.Array


def make_toy(key: jax.Array, cfg: ToyConfig) -> Toy:
    """Random feature directions, firing rates and correlation factors."""
    kd, kf = jax.random.split(key)
    d = jax.random.normal(kd, (cfg.n_features, cfg.dim))
    d = d / jnp.linalg.norm(d, axis=1, keepdims=True)
    decay = cfg.freq_ratio ** (jnp.arange(cfg.n_features) / max(cfg.n_features - 1, 1))
    probs = jnp.clip(decay * cfg.avg_active / decay.sum(), 0.0, 1.0)
    a = jax.random.normal(kf, (cfg.n_features, cfg.corr_rank))
    a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
    return Toy(d, probs, a, jnp.float32(cfg.correlation))


def sample_features(toy: Toy, key: jax.Array, batch: int) -> jax.Array:
    """Feature activations ``[batch, n_features]`` (sparse, magnitudes ``U(0, 1)``).

    One uniform draw per feature gives both the firing propensity ``Φ⁻¹(u)`` and, for an
    active feature, its magnitude ``(Φ(g) − (1 − p)) / p``, which is ``U(0, 1)`` given that
    the feature fires (RNG dominates the cost on CPU, so the draw is reused).
    """
    ku, kc = jax.random.split(key)
    n, r = toy.factors.shape
    u = jax.random.uniform(ku, (batch, n), minval=1e-7, maxval=1.0 - 1e-7)
    c = jax.random.normal(kc, (batch, r))
    g = jnp.sqrt(1 - toy.correlation) * ndtri(u) + jnp.sqrt(toy.correlation) * (
        c @ toy.factors.T)
    p = toy.probs
    mag = jnp.clip((ndtr(g) - (1 - p)) / p, 0.0, 1.0)
    return jnp.where(g > ndtri(1 - p), mag, 0.0)


def sample(toy: Toy, key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    """``(x [batch, dim], features [batch, n_features])``."""
    f = sample_features(toy, key, batch)
    return f @ toy.directions, f


def generator(toy: Toy, batch: int):
    """``gen(key) -> x [batch, dim]`` for :func:`jaxcrl.sae.source.generator_source`."""
    return lambda key: sample(toy, key, batch)[0]


def _cos(w_dec: jax.Array, directions: jax.Array) -> np.ndarray:
    """``[n_features, d_sae]`` |cos| between true directions and decoder rows."""
    w = np.asarray(w_dec, np.float64)
    d = np.asarray(directions, np.float64)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.abs(d @ w.T)


def mmcs(w_dec: jax.Array, directions: jax.Array) -> float:
    """Mean max cosine similarity: for each true direction its best |cos| to a decoder row.

    Args:
      w_dec: ``[d_sae, dim]`` decoder rows.
      directions: ``[n_features, dim]`` true feature directions.
    """
    return float(_cos(w_dec, directions).max(1).mean())


def direction_mcc(w_dec: jax.Array, directions: jax.Array) -> float:
    """Mean |cos| over a one-to-one (Hungarian) matching of true directions to decoder rows."""
    c = _cos(w_dec, directions)
    rows, cols, _ = hungarian_match(c)
    return float(c[rows, cols].mean())


def max_cos(w_dec: jax.Array, directions: jax.Array) -> np.ndarray:
    """``[n_features]`` best |cos| of each true direction (for histograms)."""
    return _cos(w_dec, directions).max(1)


def evaluate_recovery(params: dict, cfg, toy: Toy, key: jax.Array, *, rows: int = 16384
                      ) -> dict:
    """Recovery and SAE metrics of params on raw toy activations (``rows`` fresh samples).

    Returns ``{"mmcs", "mcc", "l0", "mse", "fvu", "dead_fraction", "dense_fraction",
    "max_cos" [n_features], "density" [d_sae]}``; ``mcc`` is :func:`direction_mcc`.
    """

    x, _ = sample(toy, key, rows)
    m = evaluate(params, x, cfg)
    return {"mmcs": mmcs(params["W_dec"], toy.directions),
            "mcc": direction_mcc(params["W_dec"], toy.directions),
            "l0": m["l0"], "mse": m["mse"], "fvu": m["fvu"],
            "dead_fraction": m["dead_fraction"], "dense_fraction": m["dense_fraction"],
            "max_cos": max_cos(params["W_dec"], toy.directions), "density": m["density"]}
