"""Fit CRL models by numpyro SVI: one jit-ed step, ``lax.scan`` chunks, S runs in one program.

``fit(cfg, x, env, targets=..., key=...)`` trains ``S`` independent runs (seeds) by
``jax.vmap`` over a leading run axis of everything that differs between runs: parameters,
optimizer states, PRNG keys and, when ``x`` is ``[S, N, D]``, the data set itself. There is no
Python loop over seeds: the S runs are one compiled XLA program.

Example::

    result = fit(CRLConfig(latent_dim=5, n_envs=6), ds.x, ds.env, targets=ds.targets,
                 key=jax.random.key(0), seeds=4)
    z_hat = result.encode(ds.x)          # [S, N, d]
    w_hat = result.graph()               # [S, d, d] learned weighted adjacency

Training runs through the one driver (:func:`jaxcrl.train.drive`): a non-finite guard on the
loss, MCC evaluation when the true latents are given, and, with ``workdir``, checkpoints
(kind ``"crl_train"``) every ``save_every`` steps from which ``fit`` resumes bit-identically.
The module is ``jaxcrl.crl.svi``; ``from jaxcrl.crl import fit`` gives the function.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import optax_to_numpyro

from jaxcrl import checkpoint as ckpt
from jaxcrl.crl import prior as prior_lib
from jaxcrl.crl.config import CRLConfig
from jaxcrl.crl.models import MODELS, contrastive_encoder, flow_encoder
from jaxcrl.crl.nets import GaussianEncoder
from jaxcrl.crl.targets import canonical_targets
from jaxcrl.scm import haar_orthogonal
from jaxcrl.train import driver
from jaxcrl.train.mesh import constrain_batch, place_state, resolve_mesh
from jaxcrl.train.optim import build_optimizer

# --------------------------------------------------------------------------- preprocessing


class Preprocess(NamedTuple):
    """``x -> (x - mean) @ proj``: standardization, or a whitened projection to d dims for a
    flow encoder when D > d (:func:`make_preprocess`). mean: [D], proj: [D, D'] (D' = d for
    flows, else D)."""

    mean: jax.Array
    proj: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x - self.mean) @ self.proj


# Shrinkage of the pooled within-environment covariance towards a multiple of the identity
# (``reduce="envs"``): keeps its inverse square root finite for rank-deficient activations.
ENV_SHRINK = 1e-3


def env_subspace(x: jax.Array, env: jax.Array, n_envs: int, latent_dim: int,
                 shrink: float = ENV_SHRINK) -> jax.Array:
    """[D, d] basis of the subspace that best separates the environment means (multi-class
    LDA on the environment labels).

    With ``m_e`` the mean of environment ``e``, ``S_w`` the pooled within-environment
    covariance (shrunk: ``(1 - shrink) S_w + shrink tr(S_w)/D I``) and
    ``S_b = sum_e p_e (m_e - m)(m_e - m)^T`` the between-environment scatter, the columns are
    the top-``d`` generalized eigenvectors of ``S_b v = lambda S_w v`` (``V^T S_w V = I``).
    If ``x = A z + n`` with the interventions moving only ``z`` and the nuisance ``n``
    independent of the environment, ``S_b`` has rank ``<= min(d, E - 1)`` and its span is
    ``A``'s column space mapped by ``S_w^{-1}``: these columns read ``z`` out (up to an
    invertible linear map) however large the nuisance variance is.

    Args:
      x: [N, D] observations; env: [N] int environment indices in ``[0, n_envs)``.
      n_envs: number of environments E (static); latent_dim: d (static), ``<= E - 1`` for a
        meaningful basis.
      shrink: covariance shrinkage in [0, 1).

    Returns:
      [D, d] basis V (projections ``x @ V``, largest between/within ratio first).
    """
    x = jnp.asarray(x, jnp.float32)
    n, dim = x.shape
    onehot = jax.nn.one_hot(env, n_envs, dtype=x.dtype)  # [N, E]
    counts = onehot.sum(0)
    means = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]  # [E, D]
    within = x - means[env]
    sw = within.T @ within / n
    sw = (1.0 - shrink) * sw + shrink * jnp.trace(sw) / dim * jnp.eye(dim, dtype=x.dtype)
    dev = means - x.mean(0)
    sb = (dev * (counts / n)[:, None]).T @ dev
    ew, uw = jnp.linalg.eigh(sw)
    w_isqrt = (uw / jnp.sqrt(jnp.maximum(ew, 1e-12 * ew.max()))) @ uw.T  # S_w^{-1/2}
    eb, ub = jnp.linalg.eigh(w_isqrt @ sb @ w_isqrt)
    top = jnp.argsort(eb)[::-1][:latent_dim]
    return w_isqrt @ ub[:, top]


def _whitened_pca(xc: jax.Array, k: int) -> jax.Array:
    """[D, k] projection of centred ``xc [N, D]`` onto its top-``k`` principal directions,
    scaled to unit variance."""
    evals, evecs = jnp.linalg.eigh(jnp.cov(xc, rowvar=False))
    top = jnp.argsort(evals)[::-1][:k]
    return evecs[:, top] / jnp.sqrt(jnp.maximum(evals[top], 1e-12))


def make_preprocess(x: jax.Array, latent_dim: int, flow: bool, env: jax.Array | None = None,
                    *, reduce: str = "pca", n_envs: int | None = None,
                    pca_dim: int = 0) -> Preprocess:
    """Preprocessing fitted on ``x [N, D]`` (a flow needs D' = d inputs).

    Without a flow, or when ``D <= d``: per-dimension standardization. For a flow with
    ``D > d``: a projection onto ``d`` directions whitened to identity covariance,
    ``reduce="pca"`` the top-``d`` variance directions, ``reduce="envs"`` the
    environment-separating subspace of :func:`env_subspace` (needs ``env [N]`` and
    ``n_envs``; see ``CRLConfig.reduce``). Without a flow and ``pca_dim > 0``: the top
    ``pca_dim`` principal components, whitened (``CRLConfig.pca_dim``).
    """
    mean = x.mean(0)
    if not flow and pca_dim > 0:
        return Preprocess(mean, _whitened_pca(x - mean, pca_dim))
    if flow and x.shape[-1] > latent_dim:
        if reduce == "envs":
            if env is None or n_envs is None:
                raise ValueError("reduce='envs' needs the environment labels env and n_envs")
            basis = env_subspace(x, env, n_envs, latent_dim)
            c = jnp.cov((x - mean) @ basis, rowvar=False)
            ec, uc = jnp.linalg.eigh(c)
            return Preprocess(mean, basis @ uc / jnp.sqrt(jnp.maximum(ec, 1e-12)))
        if reduce != "pca":
            raise ValueError(f"reduce must be 'pca' or 'envs', got {reduce!r}")
        return Preprocess(mean, _whitened_pca(x - mean, latent_dim))
    return Preprocess(mean, jnp.diag(1.0 / (x.std(0) + 1e-8)))


def _permute_restarts(pre: Preprocess, keys: jax.Array, n_seeds: int, n_rep: int
                      ) -> Preprocess:
    """Restart ``r >= 1`` of every seed sees its preprocessed inputs in a random order
    (restart 0 unchanged). The encoders start near the identity, so latent ``i`` starts as
    input direction ``pi(i)`` and the environment intervening on latent ``i`` starts paired
    with that direction: restarts then begin in different basins of the pairing, which
    small random initializations around the same pairing do not (measured on d = 3: the
    six pairings of one data set end at MCC 0.87-0.99, and the three with every target
    right have the three lowest losses). ``keys``: [S R] run keys, seed-major."""
    d = pre.proj.shape[-1]
    restart = jnp.tile(jnp.arange(n_rep), n_seeds)
    perms = jax.vmap(lambda k, r: jnp.where(
        r == 0, jnp.arange(d), jax.random.permutation(jax.random.fold_in(k, 0x9E37), d)))(
        keys, restart)
    return Preprocess(pre.mean, jnp.take_along_axis(pre.proj, perms[:, None, :], axis=-1))


def _per_run(z_true, n_runs: int, n_rep: int) -> np.ndarray:
    """``[S R, N, d]`` true latents per run from ``[N, d]`` (shared) or ``[S, N, d]``."""
    z = np.asarray(z_true)
    return np.broadcast_to(z, (n_runs, *z.shape)) if z.ndim == 2 else np.repeat(z, n_rep, 0)


# --------------------------------------------------------------------------- validation


def _check_inputs(cfg: CRLConfig, x, env, targets, z_true):
    x = np.asarray(x)
    env = np.asarray(env)
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be [N, D] or [S, N, D] (one data set per run), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x contains {int((~np.isfinite(x)).sum())} NaN/inf values")
    if env.shape != x.shape[:-1]:
        raise ValueError(f"env must have shape {x.shape[:-1]} (one index per sample), "
                         f"got {env.shape}")
    if not np.issubdtype(env.dtype, np.integer):
        raise ValueError(f"env must be integer environment indices, got dtype {env.dtype}")
    if env.min() < 0 or env.max() >= cfg.n_envs:
        raise ValueError(f"env indices must be in [0, n_envs={cfg.n_envs}), got range "
                         f"[{env.min()}, {env.max()}]")
    if cfg.method == "latent_scm" and x.shape[-1] < cfg.latent_dim:
        raise ValueError(f"obs dim D={x.shape[-1]} < latent_dim={cfg.latent_dim}")
    if cfg.method == "contrastive":
        for run_env in env.reshape(-1, env.shape[-1]):
            counts = np.bincount(run_env, minlength=cfg.n_envs)
            if counts.min() == 0 or counts.max() > 1.1 * counts.min():
                raise ValueError(
                    "method='contrastive' classifies environments with logits log p_e(z) "
                    "and no class prior, so it needs (nearly, within 10%) equal samples "
                    f"per environment; got counts {counts.tolist()}")
    if cfg.targets == "known" and cfg.learns_graph:
        if targets is None:
            raise ValueError("targets='known' needs the [n_envs, d] target mask `targets`")
        t = np.asarray(targets)
        want = (cfg.n_envs, cfg.latent_dim)
        if t.shape[-2:] != want or t.ndim != x.ndim:
            raise ValueError(f"targets must be {want} (or [S, *{want}] with [S, N, D] data), "
                             f"got {t.shape}")
    if z_true is not None:
        zt = np.asarray(z_true)
        if zt.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"z_true must be [..., N, d] matching x {x.shape}, got {zt.shape}")
    if cfg.batch_size > x.shape[-2]:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the number of samples "
                         f"{x.shape[-2]}")


# --------------------------------------------------------------------------- SVI pieces


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FitState:
    """One run's training state (vmapped: every leaf gets a leading run axis).

    ``tail_loss`` sums the loss over the last ``max(steps // 20, 1)`` steps: the criterion
    that picks the best restart, kept in the state so a resumed run picks the same one.
    """

    svi_state: Any
    x: jax.Array
    env: jax.Array
    targets: jax.Array
    step: jax.Array
    tail_loss: jax.Array


def _svi(cfg: CRLConfig, n_total: int) -> SVI:
    model, guide = MODELS[cfg.method]
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, min(cfg.warmup, cfg.steps - 1), cfg.steps, end_value=0.05 * cfg.lr
    )
    optimizer = build_optimizer(
        learning_rate=schedule, clip=cfg.clip, weight_decay=cfg.weight_decay,
        decay_mask=_network_mask if cfg.weight_decay else None)
    if cfg.encoder_freeze:
        optimizer = optax.chain(optimizer, freeze_encoder(cfg.encoder_freeze))
    optim = optax_to_numpyro(optimizer)
    kw = dict(cfg=cfg, n_total=n_total)
    return SVI(lambda *a: model(*a, **kw), lambda *a: guide(*a, **kw), optim, Trace_ELBO())


def freeze_encoder(steps: int) -> optax.GradientTransformation:
    """Zero the updates of the ``encoder$params`` site for the first ``steps`` updates
    (``CRLConfig.encoder_freeze``); every other site is untouched."""

    def update(updates, count, params=None):
        on = (count >= steps).astype(jnp.float32)
        updates = {k: jax.tree.map(lambda u: u * on, v) if k == "encoder$params" else v
                   for k, v in updates.items()}
        return updates, count + 1

    return optax.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)


def _network_mask(params: dict) -> dict:
    """Weight decay on the Flax networks' parameters only (sites ``<name>$params``)."""
    return {k: jax.tree.map(lambda _, net=k.endswith("$params"): net, v)
            for k, v in params.items()}


def penalty_schedule(cfg: CRLConfig, step: jax.Array) -> jax.Array:
    """Acyclicity weight: geometric ramp ``penalty_min -> penalty_max``, then constant."""
    frac = jnp.clip(step / max(cfg.penalty_ramp * cfg.steps, 1.0), 0.0, 1.0)
    return cfg.penalty_min * (cfg.penalty_max / cfg.penalty_min) ** frac


def _encode_fn(cfg: CRLConfig):
    if cfg.method == "latent_scm":
        net = flow_encoder(cfg)
        return lambda params, x: net.apply({"params": params["encoder$params"]}, x)[0]
    if cfg.method == "contrastive":
        mlp = contrastive_encoder(cfg)
        return lambda params, x: mlp.apply({"params": params["encoder$params"]}, x)
    net = GaussianEncoder(cfg.latent_dim, cfg.hidden)
    return lambda params, x: net.apply({"params": params["encoder$params"]}, x)[0]


# --------------------------------------------------------------------------- result


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def strength_per_env(cfg: CRLConfig, prior_params, z: jax.Array, env: jax.Array,
                     targets: jax.Array, *, chunk: int) -> jax.Array:
    """``[S, E]`` symmetric KL of each environment from the observational one under the
    fitted prior, on encoded latents ``z [S, N, d]`` with ``env [S, N]`` and target masks
    ``[S, E, d]`` (see :meth:`FitResult.intervention_strength`). A scan over chunks of
    ``chunk`` samples: the densities are held as ``[S, chunk, E, d]``, never
    ``[S, N, E, d]``; padded samples get environment -1 and count nowhere."""
    from jaxcrl.crl import flow_prior
    from jaxcrl.crl.models import flow_order

    soft = cfg.intervention == "soft"
    n_envs = cfg.n_envs
    n = z.shape[1]
    pad = -n % chunk

    def one(p, zz, ee, tt):
        pos = (flow_order(cfg, zz, ee, tt) if cfg.scm == "flow"
               else None)  # the flow prior's order comes from all the data, not a chunk
        zc = jnp.pad(zz, ((0, pad), (0, 0))).reshape(-1, chunk, zz.shape[-1])
        ec = jnp.pad(ee, (0, pad), constant_values=-1).reshape(-1, chunk)

        def add(acc, chunk_data):
            zb, eb = chunk_data
            if pos is not None:
                lp = flow_prior.env_log_probs(p, zb, pos, targets=tt, soft=soft)
            else:
                known = None if cfg.targets == "unknown" else tt
                lp = prior_lib.env_log_probs(p, zb, targets=known, soft=soft)
            onehot = prior_lib.env_onehot(eb, n_envs)  # [c, E]
            ratio = jnp.where(eb[:, None] >= 0, lp - lp[:, :1], 0.0)  # log p_e - log p_0
            s_in, count, s_obs = acc
            return (s_in + (onehot * ratio).sum(0), count + onehot.sum(0),
                    s_obs + (onehot[:, :1] * ratio).sum(0)), None

        zero = jnp.zeros((n_envs,), jnp.float32)
        (s_in, count, s_obs), _ = jax.lax.scan(add, (zero, zero, zero), (zc, ec))
        return s_in / jnp.maximum(count, 1.0) - s_obs / jnp.maximum(count[0], 1.0)

    return jax.vmap(one)(prior_params, z, env, targets)


@dataclasses.dataclass
class FitResult:
    """Trained runs. Every array in ``params``/``preprocess`` has a leading run axis [S].

    Attributes:
      cfg: the config.
      params: numpyro params by site name (``"encoder$params"``, ``"prior"``, ...).
      preprocess: per-run input preprocessing.
      history: per-step ``loss`` [steps, S] (negative ELBO per sample), and per-chunk
        ``mcc`` [chunks, S] when ground truth was given, with ``eval_step``;
        ``final_loss`` [S] (the mean loss over the last 5% of the steps, the restart
        criterion without ``holdout``; ``final_loss_restarts`` [S, R] for every restart).
      wall_s: training wall time (compilation included).
    """

    cfg: CRLConfig
    params: dict
    preprocess: Preprocess
    history: dict
    wall_s: float = 0.0

    @property
    def n_runs(self) -> int:
        return int(self.preprocess.mean.shape[0])

    def encode(self, x: jax.Array) -> jax.Array:
        """Latents of ``x``: ``[N, D]`` (every run) or ``[S, N, D]`` -> ``[S, N, d]``
        (flow output, or the posterior mean for VAEs)."""
        x = jnp.asarray(x, jnp.float32)
        in_axes = (0, 0, 0) if x.ndim == 3 else (0, 0, None)
        return _encode_batched(self.cfg)(self.params, self.preprocess, x, in_axes=in_axes)

    def graph(self) -> jax.Array | None:
        """Learned weighted adjacency [S, d, d] (``W[i, j]``: z_i -> z_j), or None."""
        if not self.cfg.learns_graph:
            return None
        return jax.vmap(prior_lib.masked_weights)(self.params["prior"])

    def targets(self, known: jax.Array | None = None) -> jax.Array | None:
        """[S, E, d] intervention targets: the known ones, the canonical assignment of
        ``unknown_distinct`` (environment ``e`` on learned latent ``e - 1``), or the argmax
        of the learned mixture weights (``unknown``)."""
        if not self.cfg.learns_graph:
            return None
        if self.cfg.targets == "unknown_distinct":
            return jnp.broadcast_to(canonical_targets(self.cfg.n_envs, self.cfg.latent_dim),
                                    (self.n_runs, self.cfg.n_envs, self.cfg.latent_dim))
        if self.cfg.targets == "known" and known is not None:
            return jnp.broadcast_to(jnp.asarray(known, bool), (self.n_runs, *known.shape[-2:]))
        return jax.vmap(prior_lib.estimated_targets)(self.params["prior"])

    def assign_targets(self, x: jax.Array, env: jax.Array, *,
                       distinct: bool = True) -> np.ndarray | None:
        """[S, E, d] maximum-likelihood single-node targets of every run: the fitted model's
        per-(environment, node) log-likelihoods of the encoded ``x`` (``[N, D]`` or
        ``[S, N, D]``; ``env`` [N] or [S, N]), then the exact best assignment
        (:func:`jaxcrl.crl.targets.assign_targets`; ``distinct``: one environment per node)."""
        if not self.cfg.learns_graph:
            return None
        if self.cfg.scm == "flow":
            raise ValueError("assign_targets needs a prior that scores unknown targets; "
                             "scm='flow' fits known targets only")
        from jaxcrl.crl.targets import assign_targets

        z = self.encode(x)
        env = jnp.asarray(env)
        soft = self.cfg.intervention == "soft"
        scores = jax.vmap(lambda p, zz, e: prior_lib.target_scores(p, zz, e, soft=soft),
                          in_axes=(0, 0, 0 if env.ndim == 2 else None))(
            self.params["prior"], z, env)
        return np.stack([assign_targets(s, distinct=distinct) for s in np.asarray(scores)])

    def intervention_strength(self, x: jax.Array, env: jax.Array,
                              targets: jax.Array | None = None, *, chunk: int = 8192
                              ) -> tuple[np.ndarray, np.ndarray] | None:
        """How strongly the *fitted* model sees each environment, and so each learned
        latent, intervened on: a check of which latents to trust, without ground truth.

        For environment ``e``, the symmetric KL of the fitted latent distributions,
        estimated on the encoded data: ``mean_{n in e} [log p_e(z_n) - log p_0(z_n)] +
        mean_{n in 0} [log p_0(z_n) - log p_e(z_n)]`` (the prior's ``env_log_probs``).
        A latent's strength is the sum over the environments that target it (known
        ``targets``, the canonical ones of ``unknown_distinct``, or the fitted mixture's
        argmax). The true counterpart is :func:`jaxcrl.scm.strength.intervention_kl`; a
        latent whose interventions carry well under a nat is typically recovered poorly
        (BENCHMARKS, "Where the remaining MCC is lost: weak interventions").

        Args:
          x: ``[N, D]`` or ``[S, N, D]`` observations; env: ``[N]`` or ``[S, N]``.
          targets: ``[E, d]`` known targets (needed for ``targets="known"``).
          chunk: samples per step of the scan over the data: the densities of every run
            under every environment are held for ``chunk`` samples at a time
            (``[S, chunk, E, d]``), not all ``N`` (the result is the same to rounding).

        Returns:
          ``(per_env [S, E], per_latent [S, d])`` in nats (``per_env[:, 0] = 0``), or None
          for models without a latent SCM.
        """
        if not self.cfg.learns_graph:
            return None
        if self.cfg.targets == "known" and targets is None:
            raise ValueError("intervention_strength: a fit with known targets needs targets")
        if int(chunk) < 1:
            raise ValueError(f"intervention_strength: chunk must be >= 1, got {chunk}")
        z = self.encode(x)
        env = jnp.broadcast_to(jnp.asarray(env), z.shape[:2])
        t = jnp.asarray(self.targets(None if targets is None else jnp.asarray(targets)),
                        jnp.float32)  # [S, E, d]
        per_env = np.asarray(strength_per_env(self.cfg, self.params["prior"], z, env, t,
                                              chunk=min(int(chunk), z.shape[1])))
        return per_env, np.einsum("se,sed->sd", per_env, np.asarray(t))

    def discover_graph(self, x: jax.Array, env: jax.Array,
                       targets: jax.Array | None = None) -> np.ndarray | None:
        """[S, d, d] DAG from an exact interventional-BIC search over the encoded latents:
        the discrete refinement of :meth:`graph`. With ``cfg.graph_search`` linear
        (:func:`jaxcrl.crl.discovery.exact_dag_search`, each parent charged for
        ``cfg.graph_min_r2``): OLS weights, edges with standardized weight below
        ``cfg.edge_threshold`` pruned; nonlinear (``"auto"`` with a
        nonlinear or flow prior; :func:`jaxcrl.crl.discovery.nonlinear_dag_search`, its
        location-scale local model, fixed features key): each edge's (likelihood) partial
        R², edges below ``cfg.effect_threshold`` pruned.
        Uses the known ``targets`` ([E, d] or [S, E, d]) or, for unknown targets, the
        maximum-likelihood assignment of :meth:`assign_targets`."""
        if not self.cfg.learns_graph:
            return None
        from jaxcrl.crl.discovery import nonlinear_dag_search, pruned_dag_search

        z = np.asarray(self.encode(x))
        if self.cfg.targets == "unknown":
            t = self.assign_targets(x, env)
        elif targets is None or self.cfg.targets == "unknown_distinct":
            t = np.asarray(self.targets(None))
        else:
            t = np.asarray(self.targets(jnp.asarray(targets)))
        env = np.asarray(env)
        nonlinear = self.cfg.graph_search == "nonlinear" or (
            self.cfg.graph_search == "auto" and self.cfg.scm != "linear")
        out = []
        for r in range(self.n_runs):
            e = env[r] if env.ndim == 2 else env
            if nonlinear:
                eff, _ = nonlinear_dag_search(z[r], e, t[r], key=jax.random.key(0))
                out.append(np.where(eff >= self.cfg.effect_threshold, eff, 0.0))
                continue
            # Prune weak edges: imperfectly recovered latents leak into each other, and at
            # large n the BIC keeps every leak as an edge.
            out.append(pruned_dag_search(z[r], e, t[r], min_r2=self.cfg.graph_min_r2,
                                         edge_threshold=self.cfg.edge_threshold))
        return np.stack(out)

    def save(self, path, *, step: int | None = None, metrics: dict | None = None,
             overwrite: bool = False):
        """Saves params and preprocessing in the one checkpoint format (kind ``"crl"``)."""
        state = {"params": self.params, "preprocess": self.preprocess._asdict()}
        return ckpt.save(path, state, config=self.cfg, kind="crl",
                         step=self.cfg.steps if step is None else step, metrics=metrics,
                         overwrite=overwrite)


def load_fit(path) -> FitResult:
    """Restores a :class:`FitResult` saved by :meth:`FitResult.save`."""
    c = ckpt.load(path, kind="crl")
    cfg: CRLConfig = c.config
    params = dict(c.state["params"])
    if "prior" in params and cfg.scm == "flow":
        from jaxcrl.crl.flow_prior import FlowPriorParams, NoiseFlow

        p = dict(params["prior"])
        for k in ("noise", "int_noise"):
            p[k] = NoiseFlow(**p[k])
        params["prior"] = FlowPriorParams(**p)
    elif "prior" in params:
        params["prior"] = prior_lib.PriorParams(**params["prior"])
    pre = Preprocess(**c.state["preprocess"])
    return FitResult(cfg=cfg, params=params, preprocess=pre, history={})


_ENCODERS: dict = {}


def _encode_batched(cfg: CRLConfig):
    if cfg not in _ENCODERS:
        enc = _encode_fn(cfg)

        def f(params, pre, x, in_axes):
            return jax.vmap(lambda p, pr, xx: enc(p, pr(xx)), in_axes=in_axes)(params, pre, x)

        _ENCODERS[cfg] = jax.jit(f, static_argnames="in_axes")
    return _ENCODERS[cfg]


# --------------------------------------------------------------------------- fit


def _random_rotation(key: jax.Array, d: int) -> jax.Array:
    """[d, d] random rotation (det +1): :func:`jaxcrl.scm.haar_orthogonal` (its XLA
    Householder QR is safe under vmap) with the first column's sign set by the det."""
    q = haar_orthogonal(key, d, d)
    return q.at[:, 0].multiply(jnp.sign(jnp.linalg.det(q)))


def _linear_warm_start(cfg: CRLConfig, x, env, tgt, keys, z_true, eval_every, mesh):
    """``cfg.warm_encoder="linear"``: fits a linear encoder (``flow_layers=0``) with the
    ``warm_scm`` prior from ``warm_restarts`` starts per run (start 0 the identity, start
    ``r >= 1`` a random rotation), all in one program, and returns the flow encoder's
    starting parameters per run (the start with the lowest final training loss as the last
    linear layer, the other layers freshly initialized), the warm wall time and the chosen
    starts' history (``warm_final_loss_restarts [runs, R]``, ``warm_restart_chosen``).

    x, env, tgt: ``[runs, N, D]``, ``[runs, N]``, ``[runs, E, d]``; keys ``[runs]``."""
    n_runs, n_cand, d = keys.shape[0], cfg.warm_restarts, cfg.latent_dim
    wcfg = dataclasses.replace(cfg, scm=cfg.warm_scm, steps=cfg.warm_steps, warm_steps=0,
                               warm_restarts=1, warm_encoder="same", restarts=1, flow_layers=0)
    ckeys = jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(
        jax.random.fold_in(k, 2), r))(jnp.arange(n_cand)))(keys).reshape(-1)
    rot = jax.vmap(lambda k: _random_rotation(jax.random.fold_in(k, 5), d))(ckeys)
    first = (jnp.arange(n_runs * n_cand) % n_cand == 0)[:, None, None]
    w0 = jnp.where(first, jnp.eye(d), rot) - jnp.eye(d)  # DenseLinear holds W - I

    def rep(a):  # every run's arrays once per start
        return None if a is None else jnp.repeat(jnp.asarray(a), n_cand, axis=0)

    warm = fit(wcfg, rep(x), rep(env), key=ckeys, targets=rep(tgt), z_true=rep(z_true),
               eval_every=min(eval_every, cfg.warm_steps), progress=False, mesh=mesh,
               init_params={"encoder$params": {"DenseLinear_0": {
                   "w": w0, "bias": jnp.zeros((n_runs * n_cand, d))}}})
    final = np.asarray(warm.history["final_loss"]).reshape(n_runs, n_cand)
    chosen = final.argmin(1)
    pick = np.arange(n_runs) * n_cand + chosen
    lin = jax.tree.map(lambda a: a[pick], warm.params["encoder$params"]["DenseLinear_0"])
    fresh = jax.vmap(lambda k: flow_encoder(cfg).init(
        jax.random.fold_in(k, 3), jnp.zeros((1, d)))["params"])(keys)
    enc = {**fresh, f"DenseLinear_{cfg.flow_layers}": lin}
    hist = {k: np.asarray(v)[:, pick] for k, v in warm.history.items()
            if k in ("loss", "mcc") and v is not None}
    if n_cand > 1:
        hist.update(final_loss_restarts=final, restart_chosen=chosen)
    return {"encoder$params": enc}, warm.wall_s, hist


def _check_init_params(given: dict, expected: dict, n_seeds: int, n_rep: int) -> dict:
    """``fit``'s ``init_params`` checked against the model's parameter shapes
    (``expected``: one run's, from ``jax.eval_shape``) and repeated over each seed's
    restarts: ``[S, ...] -> [S R, ...]``."""
    if not isinstance(given, dict):
        raise ValueError(f"init_params must be a dict of numpyro sites, got {type(given)}")
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise ValueError(f"init_params has unknown sites {unknown}; the model's are "
                         f"{sorted(expected)}")
    out = {}
    for site, value in given.items():
        want = jax.tree.structure(expected[site])
        if jax.tree.structure(value) != want:
            raise ValueError(f"init_params[{site!r}] has structure {jax.tree.structure(value)}"
                             f", the model's is {want}")
        leaves = []
        for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(value)[0],
                                jax.tree.leaves(expected[site]), strict=True):
            a = jnp.asarray(a)
            if a.shape != (n_seeds, *e.shape):
                raise ValueError(
                    f"init_params[{site!r}]{jax.tree_util.keystr(path)} has shape "
                    f"{a.shape}, expected {(n_seeds, *e.shape)} (a leading axis of S="
                    f"{n_seeds} seeds)")
            if not bool(jnp.all(jnp.isfinite(a))):
                raise ValueError(f"init_params[{site!r}]{jax.tree_util.keystr(path)} "
                                 f"contains NaN/inf")
            leaves.append(jnp.repeat(a.astype(e.dtype), n_rep, axis=0))
        out[site] = jax.tree.unflatten(want, leaves)
    return out



def fit(
    cfg: CRLConfig,
    x: jax.Array,
    env: jax.Array,
    *,
    key: jax.Array,
    targets: jax.Array | None = None,
    seeds: int | None = None,
    z_true: jax.Array | None = None,
    eval_every: int = 500,
    progress: bool | Sequence[str] = True,
    workdir: str | os.PathLike | None = None,
    save_every: int = 1000,
    keep_last: int = 2,
    resume: bool = True,
    stop_at: int | None = None,
    mesh: Any = None,
    init_params: dict | None = None,
) -> FitResult:
    """Trains ``S`` runs of ``cfg.method`` in one compiled program.

    Args:
      cfg: configuration.
      x: [N, D] observations shared by all runs, or [S, N, D] one data set per run.
      env: [N] (or [S, N]) int environment index of each sample, in ``[0, cfg.n_envs)``.
      key: a PRNG key (split into ``seeds`` run keys) or ``[S]`` run keys. Run ``r`` with
        key ``k_r`` gives the same result whether trained alone or with others.
      targets: [E, d] (or [S, E, d]) bool intervention targets, row 0 observational;
        required when ``cfg.targets == "known"`` for the latent-SCM methods, ignored for
        unknown targets (``unknown_distinct`` trains with
        :func:`jaxcrl.crl.targets.canonical_targets`).
      seeds: number of runs S when ``key`` is a single key (default 1). With
        ``cfg.restarts = R > 1`` each seed trains R restarts (S R runs in the same program)
        and keeps the one with the best final training loss (maximum likelihood for
        ``latent_scm``): no ground truth is used to choose.
      z_true: [N, d] (or [S, N, d]) true latents: the progress bar then shows MCC, and
        ``history["mcc"]`` records it every ``eval_every`` steps.
      eval_every: steps per compiled chunk (progress/evaluation cadence).
      progress: progress bar: True (loss, and MCC with ``z_true``), False, or metric names.
      workdir: checkpoint directory (kind ``"crl_train"``: SVI state of every run, step and
        restart criterion) written every ``save_every`` steps and at the end, keeping the
        last ``keep_last``; ``fit`` resumes from its latest checkpoint (``resume=False``:
        start afresh) when config, keys and data match (else ``ConfigMismatchError``).
      mesh: where the runs live. None (default): all local devices
        (:func:`jaxcrl.train.mesh.runs_mesh`): the runs over ``"data"``, or, for a single
        run, its minibatch (data parallelism for one large fit); a ``("data", "model")``
        mesh: the same on its ``"data"`` axis; False: one device. Nothing changes on one
        device.
      save_every, keep_last, resume: see ``workdir``.
      stop_at: stop after this global step (as if preempted; the schedules still span
        ``cfg.steps``); with ``workdir`` a later call continues the run.
      init_params: where to start instead of the random initialization, by numpyro site
        name (a subset of ``FitResult.params``' sites, e.g. ``{"encoder$params":
        previous.params["encoder$params"]}``: a fitted encoder with a fresh prior); every
        leaf has a leading axis of S seeds, shared by each seed's restarts. Sites not given
        start as usual. Checked against the model's parameter shapes before compiling.
        Not with ``cfg.warm_steps`` (which chooses the starting encoder itself) nor
        ``cfg.permute_restarts`` (whose restarts see permuted inputs).

    With ``cfg.consensus_runs >= 2`` and ``method="contrastive"`` the fit is
    :func:`jaxcrl.crl.consensus.consensus_fit` (no ``workdir``, ``stop_at`` or
    ``init_params`` then).

    Returns:
      A :class:`FitResult` (``history`` covers the steps run by this call).

    Raises:
      ValueError: NaN/inf in x, environment index out of range, inconsistent shapes —
        before anything is compiled.
      jaxcrl.train.NonFiniteError: the loss became NaN/inf (names the step and run).
    """
    _check_inputs(cfg, x, env, targets, z_true)
    if cfg.consensus_runs and cfg.method == "contrastive":
        if workdir is not None or stop_at is not None or init_params is not None:
            raise ValueError("cfg.consensus_runs > 0 (a consensus refit of several fits) "
                             "does not take workdir, stop_at or init_params")
        from jaxcrl.crl.consensus import consensus_fit  # consensus calls fit: import here
        return consensus_fit(cfg, x, env, key=key, targets=targets, seeds=seeds,
                             z_true=z_true, eval_every=eval_every, progress=progress,
                             mesh=mesh)
    keys = jnp.asarray(key)
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) and keys.ndim == 1:
        if seeds is not None and seeds != keys.shape[0]:
            raise ValueError(f"got {keys.shape[0]} run keys but seeds={seeds}")
    else:
        keys = jax.random.split(key, seeds or (np.shape(x)[0] if np.ndim(x) == 3 else 1))
    n_seeds = keys.shape[0]
    n_rep = cfg.restarts
    screening = cfg.screen_restarts > 0
    if screening and stop_at is not None and stop_at < cfg.screen_steps:
        raise ValueError(f"stop_at={stop_at} is before the screening of the restarts ends "
                         f"(cfg.screen_steps={cfg.screen_steps})")
    n_rep = cfg.screen_restarts if screening else n_rep  # restarts started per seed
    if n_rep > 1:  # restart r of seed s has key fold_in(k_s, r): independent of other seeds
        keys = jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(
            jnp.arange(n_rep)))(keys).reshape(n_seeds * n_rep)
    n_runs = keys.shape[0]
    if init_params is not None and cfg.warm_steps > 0:
        raise ValueError("init_params and cfg.warm_steps > 0 both choose the starting "
                         "parameters; give one")
    if init_params is not None and cfg.permute_restarts and n_rep > 1:
        raise ValueError("init_params with cfg.permute_restarts: the restarts see permuted "
                         "inputs, so one starting encoder cannot fit them all")

    x = jnp.asarray(x, jnp.float32)
    env = jnp.asarray(env, jnp.int32)
    if cfg.targets == "unknown_distinct":  # relabeling makes every assignment this one
        tgt = jnp.broadcast_to(canonical_targets(cfg.n_envs, cfg.latent_dim),
                               (*x.shape[:-2], cfg.n_envs, cfg.latent_dim))
    elif targets is None or cfg.targets == "unknown":
        tgt = jnp.zeros((*x.shape[:-2], cfg.n_envs, cfg.latent_dim), bool)
    else:
        tgt = jnp.asarray(targets, bool)
    shared = x.ndim == 2
    if shared:
        x, env, tgt = (jnp.broadcast_to(a, (n_runs, *a.shape)) for a in (x, env, tgt))
    elif x.shape[0] != n_seeds:
        raise ValueError(f"x holds {x.shape[0]} data sets but there are {n_seeds} runs")
    else:
        x, env, tgt = (jnp.repeat(a, n_rep, axis=0) for a in (x, env, tgt))
    n_total = x.shape[1]

    warm_wall, warm_hist = 0.0, None
    if cfg.warm_steps > 0 and cfg.warm_encoder == "linear":
        init_params, warm_wall, warm_hist = _linear_warm_start(
            cfg, x, env, tgt, keys, None if z_true is None else _per_run(z_true, n_runs, n_rep),
            eval_every, mesh)
    elif cfg.warm_steps > 0:  # warm start: the encoder of a short fit with cfg.warm_scm
        wcfg = dataclasses.replace(cfg, scm=cfg.warm_scm, steps=cfg.warm_steps, warm_steps=0,
                                   warm_restarts=1, restarts=cfg.warm_restarts)
        zw = None if z_true is None else _per_run(z_true, n_runs, n_rep)
        warm = fit(wcfg, x, env, key=jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys),
                   targets=tgt, z_true=zw, eval_every=min(eval_every, cfg.warm_steps),
                   progress=False, mesh=mesh)
        init_params = {"encoder$params": warm.params["encoder$params"]}
        warm_wall, warm_hist = warm.wall_s, warm.history

    pre = jax.vmap(lambda xx, ee: make_preprocess(
        xx, cfg.latent_dim, cfg.method == "latent_scm", ee, reduce=cfg.reduce,
        n_envs=cfg.n_envs, pca_dim=cfg.pca_dim))(x, env)
    if cfg.permute_restarts and n_rep > 1 and cfg.method == "latent_scm":
        pre = _permute_restarts(pre, keys, n_seeds, n_rep)
    xp = jax.vmap(lambda p, xx: p(xx))(pre, x)
    svi = _svi(cfg, n_total)
    b = cfg.batch_size

    def init(k, xx, ee, tt, ip):
        return svi.init(k, xx[:b], ee[:b], tt, cfg.penalty_min, init_params=ip)

    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    given = init_params is not None and cfg.warm_steps == 0
    if given:
        init_params = _check_init_params(
            init_params, jax.eval_shape(lambda: svi.get_params(
                init(init_keys[0], xp[0], env[0], tgt[0], None))), n_seeds, n_rep)
    svi_state = jax.jit(jax.vmap(init))(init_keys, xp, env, tgt, init_params)
    state = FitState(svi_state, xp, env, tgt, jnp.zeros((n_runs,), jnp.int32),
                     jnp.zeros((n_runs,), jnp.float32))
    tail = max(cfg.steps // 20, 1)
    # Held-out split (the same for every run): restarts are compared on unseen samples.
    split = np.asarray(jax.random.permutation(jax.random.key(0), n_total))
    n_heldout = int(round(cfg.holdout * n_total))
    train_idx = jnp.asarray(np.sort(split[n_heldout:]), jnp.int32)
    heldout_idx = np.sort(split[:n_heldout])
    n_train = n_total - n_heldout
    if n_train < b:
        raise ValueError(f"batch_size={b} exceeds the {n_train} training samples left after "
                         f"holdout={cfg.holdout}")

    # One run: its minibatch data-parallel over the mesh; several: the runs over the mesh
    # (placed by the driver).
    dp_mesh = resolve_mesh(mesh, b, "batch_size") if n_runs == 1 else None

    def step(s: FitState, k: jax.Array):
        idx = train_idx[jax.random.randint(k, (b,), 0, n_train)]
        xb, eb = constrain_batch((s.x[idx], s.env[idx]), dp_mesh)
        new, loss = svi.update(s.svi_state, xb, eb, s.targets,
                               penalty_schedule(cfg, s.step))
        loss = loss / n_total
        tail_loss = s.tail_loss + jnp.where(s.step >= cfg.steps - tail, loss, 0.0)
        return (FitState(new, s.x, s.env, s.targets, s.step + 1, tail_loss),
                {"loss": loss})

    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    # Screening: all candidates train the first screen_steps; each seed keeps the
    # cfg.restarts with the lowest training loss then (``kept``: indices into the
    # candidates' run axis, ascending within each seed).
    kept = np.arange(n_runs)
    kept_template = np.arange(n_seeds)[:, None] * n_rep + np.arange(cfg.restarts)

    def to_save(s: FitState) -> dict:  # the data come from the caller, not the checkpoint
        out = {"svi_state": s.svi_state, "step": s.step, "tail_loss": s.tail_loss}
        if screening:
            out["kept"] = jnp.asarray(kept, jnp.int32)
        return out

    def take(tree, idx):
        return jax.tree.map(lambda v: v[idx], tree)

    start, mgr, identity = 0, None, None
    if workdir is not None:  # checkpoints are written after screening only
        mgr = ckpt.CheckpointManager(workdir, kind="crl_train", save_every=save_every,
                                     keep_last=keep_last)
        identity = driver.fingerprint(keys, x, env, tgt,
                                      *(jax.tree.leaves(init_params) if given else ()))
        template = state
        if screening:  # what is saved after screening: the kept runs
            kept = kept_template.reshape(-1)
            template = take(state, kept)
        got = (driver.restore(mgr, config=cfg, template=template, to_save=to_save,
                              identity=identity) if resume else None)
        kept = np.arange(n_runs)
        if got is not None:
            saved, start = got
            if screening:  # a file's indices: checked, never trusted
                kept = np.asarray(saved["kept"])
                block = np.repeat(np.arange(n_seeds), cfg.restarts)
                if (kept.shape != block.shape or not np.issubdtype(kept.dtype, np.integer)
                        or np.any(kept // n_rep != block) or np.any(kept < 0)
                        or np.any(np.diff(kept.reshape(n_seeds, -1), axis=1) <= 0)):
                    raise ckpt.CheckpointError(
                        f"{workdir}: the checkpoint's kept restarts {kept.tolist()} are not "
                        f"{cfg.restarts} distinct candidates of each seed's {n_rep}")
                state = take(state, kept)
            state = FitState(saved["svi_state"], state.x, state.env, state.targets,
                             saved["step"], saved["tail_loss"])

    zt = _per_run(z_true, n_runs, n_rep) if z_true is not None else None
    sub = np.linspace(0, n_total - 1, min(n_total, 2000)).astype(int)
    enc = jax.jit(jax.vmap(_encode_fn(cfg)))  # one wrapper for both phases

    def callbacks(checkpoint: bool) -> list[driver.Callback]:
        cbs: list[driver.Callback] = [driver.NonFiniteGuard(("loss",), manager=mgr)]
        if checkpoint and mgr is not None:
            cbs.append(driver.Checkpoint(mgr, config=cfg, to_save=to_save, identity=identity))
        if zt is not None:
            z_runs = zt[kept]

            def evaluate(ev: driver.Event) -> dict:
                from jaxcrl.metrics import mcc

                params = jax.vmap(svi.get_params)(ev.state.svi_state)
                z_hat = np.asarray(enc(params, ev.state.x[:, sub]))
                return {"mcc": np.array([mcc(z_runs[r, sub], z_hat[r]).value
                                         for r in range(len(z_runs))])}

            cbs.append(driver.Evaluate(evaluate, every=eval_every))
        return cbs + driver.progress_callbacks(
            progress, ("loss", "mcc") if z_true is not None else ("loss",), cfg.method)

    def run(state, keys_, first, last, checkpoint):
        placed = dp_mesh is not None
        if placed:
            state, keys_ = place_state(dp_mesh, (state, keys_))
        return driver.drive(jax.vmap(step), state, keys_, start_step=first,
                            end_step=max(first, last), total_steps=cfg.steps,
                            chunk_size=eval_every, batched=True,
                            callbacks=callbacks(checkpoint),
                            mesh=False if (placed or mesh is False) else mesh)

    t0 = time.perf_counter()
    screen_hist = None
    if screening and start < cfg.screen_steps:
        out = run(state, run_keys, start, cfg.screen_steps, checkpoint=False)
        window = max(cfg.screen_steps // 10, 1)
        screen_loss = out.history["loss"][-window:].mean(0).reshape(n_seeds, n_rep)
        order = np.argsort(np.where(np.isfinite(screen_loss), screen_loss, np.inf), axis=1)
        kept = (np.arange(n_seeds)[:, None] * n_rep
                + np.sort(order[:, :cfg.restarts], axis=1)).reshape(-1)
        screen_hist = {k: v[:, kept] for k, v in out.history.items()
                       if k in ("loss", "mcc")}
        screen_hist["eval_step"] = out.history.get("eval_step")
        screen_hist["screen_loss"] = screen_loss
        state, start = take(out.state, kept), cfg.screen_steps
    if screening:
        run_keys, pre = take((run_keys, pre), kept)
        n_runs, n_rep = len(kept), cfg.restarts
    out = run(state, run_keys, start, end, checkpoint=True)
    state, history = out.state, out.history
    if screen_hist is not None:  # one history over both phases
        for k in ("loss", "mcc", "eval_step"):
            if screen_hist.get(k) is not None:
                history[k] = (np.concatenate([screen_hist[k], history[k]])
                              if k in history else screen_hist[k])
        history["screen_loss"] = screen_hist["screen_loss"]
    if screening:
        history["screen_kept"] = (kept.reshape(n_seeds, n_rep)
                                  - np.arange(n_seeds)[:, None] * cfg.screen_restarts)
    wall = time.perf_counter() - t0 + warm_wall
    params = jax.vmap(svi.get_params)(state.svi_state)
    if warm_hist is not None and "loss" in warm_hist:
        history["warm_loss"] = warm_hist["loss"]
        if "mcc" in warm_hist:
            history["warm_mcc"] = warm_hist["mcc"]
        for k in ("final_loss_restarts", "mcc_restarts", "restart_chosen"):
            if k in warm_hist:  # warm_restarts > 1: every candidate warm start, per run
                history[f"warm_{k}"] = warm_hist[k]
    if n_heldout > 0:
        penalty = penalty_schedule(cfg, jnp.asarray(cfg.steps))

        def heldout_loss(svi_state, xx, ee, tt):
            return svi.evaluate(svi_state, xx[heldout_idx], ee[heldout_idx], tt, penalty)

        history["heldout_loss"] = np.asarray(jax.jit(jax.vmap(heldout_loss))(
            state.svi_state, state.x, state.env, state.targets)) / n_total
    # Training loss at the end: the mean over the last ``tail`` steps, per run.
    history["final_loss"] = np.asarray(state.tail_loss) / tail
    if n_rep > 1:
        # Keep, per seed, the restart with the best (lowest) held-out loss or, without a
        # held-out set, training loss at the end; or the one whose W is nearest a DAG.
        final = (history["heldout_loss"] if n_heldout > 0
                 else history["final_loss"]).reshape(n_seeds, n_rep)
        if cfg.restart_choice == "acyclicity":
            h = prior_lib.acyclicity_f64(jax.vmap(prior_lib.masked_weights)(
                params["prior"])).reshape(n_seeds, n_rep)
            history["acyclicity_restarts"] = h
            final = np.where(np.isfinite(final), h, np.nan)  # a diverged run stays last
        best = np.nanargmin(np.where(np.isfinite(final), final, np.inf), axis=1)
        idx = np.arange(n_seeds) * n_rep + best
        params, pre = jax.tree.map(lambda a: a[idx], (params, pre))
        if "loss" in history:  # (absent when a resumed run had no steps left)
            history["loss_restarts"] = history["loss"].reshape(-1, n_seeds, n_rep)
        if "mcc" in history:  # every restart's MCC (diagnostics; never used to choose)
            history["mcc_restarts"] = history["mcc"].reshape(-1, n_seeds, n_rep)
        # the chosen restart's index among the seed's candidates (screened or not)
        history["restart_chosen"] = (history["screen_kept"][np.arange(n_seeds), best]
                                     if screening else best)
        history["final_loss_restarts"] = history["final_loss"].reshape(n_seeds, n_rep)
        history["final_loss"] = history["final_loss"][idx]
        for k in ("loss", "mcc"):
            if k in history:
                history[k] = history[k][:, idx]
    result = FitResult(cfg=cfg, params=params, preprocess=pre, history=history, wall_s=wall)
    if cfg.polish:
        from jaxcrl.crl.polish import polish_fit

        t0 = time.perf_counter()
        per_seed = x.shape[0] // n_seeds  # x, env, tgt: every started restart's copy, seed-major
        result = polish_fit(result, x[::per_seed], env[::per_seed], tgt[::per_seed])
        result.history["polish_wall_s"] = time.perf_counter() - t0
    return result

