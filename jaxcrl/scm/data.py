"""Multi-environment CRL datasets: one observational and K interventional environments.

``make_dataset(key, cfg)`` draws an SCM, a mixing function and K interventions, then
samples ``n_per_env`` latents per environment (vmapped over environments) and mixes
them. It is a pure function of ``(key, cfg)``: ``jax.jit(make_dataset,
static_argnums=1)`` and ``jax.vmap`` over keys (a batch of datasets, one per seed)
give the same numbers as eager per-seed calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.checkpoint import register_config
from jaxcrl.scm.mechanisms import (
    Intervention,
    InterventionConfig,
    SCMConfig,
    SCMParams,
    init_scm,
    random_targets,
    sample_intervention,
    sample_scm,
)
from jaxcrl.scm.mixing import MixingConfig, MixingParams, apply_mixing, init_mixing


@register_config
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A multi-environment dataset.

    Attributes:
        scm: latent SCM family.
        mixing: mixing-function family.
        intervention: how the interventional environments are drawn.
        n_per_env: samples per environment.
        n_envs: number K of *interventional* environments (environment 0, the
            observational one, comes on top); ``None`` means ``latent_dim``. With
            ``n_targets == 1`` environment ``k >= 1`` targets latent ``(k - 1) mod d``,
            so ``K = d`` covers every latent exactly once; otherwise each
            environment targets a random set of ``n_targets`` latents.
    """

    scm: SCMConfig = SCMConfig()
    mixing: MixingConfig = MixingConfig()
    intervention: InterventionConfig = InterventionConfig()
    n_per_env: int = 1000
    n_envs: int | None = None

    def __post_init__(self) -> None:
        if self.n_per_env < 1:
            raise ValueError(f"DatasetConfig.n_per_env must be >= 1, got {self.n_per_env}")
        if self.n_envs is not None and self.n_envs < 0:
            raise ValueError(f"DatasetConfig.n_envs must be >= 0 or None, got {self.n_envs}")
        d = self.scm.latent_dim
        if self.intervention.n_targets > d:
            raise ValueError(
                f"InterventionConfig.n_targets={self.intervention.n_targets} exceeds latent_dim={d}"
            )
        self.mixing.resolve_obs_dim(d)

    @property
    def n_interventional_envs(self) -> int:
        """K, the number of interventional environments."""
        return self.scm.latent_dim if self.n_envs is None else self.n_envs

    @property
    def n_total_envs(self) -> int:
        """K + 1 (environment 0 is observational)."""
        return self.n_interventional_envs + 1

    @property
    def obs_dim(self) -> int:
        return self.mixing.resolve_obs_dim(self.scm.latent_dim)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dataset:
    """Samples plus the full ground truth that generated them (a pytree).

    ``E = K + 1`` environments, ``N = E * n_per_env`` rows stored environment by
    environment. Under ``jax.vmap`` over seeds every array gains a leading seed axis.

    Attributes:
        x: ``[N, D] float32`` observations.
        z: ``[N, d] float32`` true latents.
        env: ``[N] int32`` environment of each row (0 = observational).
        targets: ``[E, d] bool`` intervened latents per environment (row 0 all False).
        interventions: stacked :class:`Intervention`, fields ``[E, d]``.
        scm: the latent SCM.
        mixing: the mixing function.
        intervention_kind: static, ``"perfect"`` or ``"soft"``.
    """

    x: jax.Array
    z: jax.Array
    env: jax.Array
    targets: jax.Array
    interventions: Intervention
    scm: SCMParams
    mixing: MixingParams
    intervention_kind: str = field(metadata=dict(static=True))

    @property
    def adj(self) -> jax.Array:
        """``[d, d]`` true DAG, ``adj[i, j] = 1`` for ``i -> j``."""
        return self.scm.adj

    @property
    def weights(self) -> jax.Array:
        """``[d, d]`` true edge weights (zero off the graph)."""
        return self.scm.weights

    @property
    def n_total_envs(self) -> int:
        """E = K + 1, the number of environments including the observational one."""
        return self.targets.shape[-2]


def env_targets(key: jax.Array, d: int, n_interventional: int, n_targets: int) -> jax.Array:
    """Target masks of all environments, ``[K + 1, d] bool`` with row 0 all False.

    Single-node targets cycle through the latents (``(k - 1) mod d``); larger target
    sets are drawn uniformly at random per environment.
    """
    if n_targets == 1:
        rows = jax.nn.one_hot(jnp.arange(n_interventional) % d, d, dtype=bool)
    else:
        keys = jax.random.split(key, n_interventional)
        rows = jax.vmap(lambda k: random_targets(k, d, n_targets))(keys)
    return jnp.concatenate([jnp.zeros((1, d), dtype=bool), rows.reshape(-1, d)], axis=0)


def _dataset_keys(key: jax.Array) -> jax.Array:
    """[5] keys of a data set: SCM, mixing, targets, intervention parameters, samples."""
    return jax.random.split(key, 5)


def dataset_scm(key: jax.Array, cfg: DatasetConfig) -> SCMParams:
    """The ground-truth SCM (graph, weights) that ``make_dataset(key, cfg)`` draws, without
    the mixing or any samples: e.g. the true graphs of a stored run, from its seeds."""
    return init_scm(_dataset_keys(key)[0], cfg.scm)


def make_dataset(key: jax.Array, cfg: DatasetConfig) -> Dataset:
    """Draws a ground-truth SCM and mixing and samples every environment.

    Args:
        key: PRNG key.
        cfg: dataset configuration (static; hashable).

    Returns:
        Dataset with ``N = (K + 1) * n_per_env`` rows.
    """
    d, n = cfg.scm.latent_dim, cfg.n_per_env
    n_envs = cfg.n_total_envs
    kind = cfg.intervention.kind
    k_scm, k_mix, k_targets, k_iv, k_sample = _dataset_keys(key)
    scm = init_scm(k_scm, cfg.scm)
    mixing = init_mixing(k_mix, cfg.mixing, d)
    targets = env_targets(k_targets, d, cfg.n_interventional_envs, cfg.intervention.n_targets)
    interventions = jax.vmap(lambda k, t: sample_intervention(k, cfg.intervention, t))(
        jax.random.split(k_iv, n_envs), targets
    )
    z = jax.vmap(lambda k, iv: sample_scm(scm, k, n, iv, kind=kind))(
        jax.random.split(k_sample, n_envs), interventions
    ).reshape(n_envs * n, d)
    return Dataset(
        x=apply_mixing(mixing, z),
        z=z,
        env=jnp.repeat(jnp.arange(n_envs, dtype=jnp.int32), n),
        targets=targets,
        interventions=interventions,
        scm=scm,
        mixing=mixing,
        intervention_kind=kind,
    )


def env_slice(ds: Dataset, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Host-side ``(x [n_e, D], z [n_e, d])`` numpy arrays of environment ``e``.

    For a single (not seed-batched) dataset.
    """
    if ds.env.ndim != 1:
        raise ValueError(f"env_slice needs an unbatched Dataset, got env of shape {ds.env.shape}")
    if not 0 <= e < ds.n_total_envs:
        raise ValueError(f"environment index e must be in [0, {ds.n_total_envs}), got {e}")
    mask = np.asarray(ds.env) == e
    return np.asarray(ds.x)[mask], np.asarray(ds.z)[mask]
