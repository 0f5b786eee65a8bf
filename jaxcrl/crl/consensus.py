"""Consensus refit of the contrastive route: many starts, agree per latent, refit once.

On d = 10, D = 100 the contrastive fit (:func:`jaxcrl.crl.models.contrastive_model`) ends
in very different places from different random starts on the same data (MCC 0.66-0.92),
each run typically losing one or two latents, and its training loss barely ranks them.
Which latents a run loses varies from run to run, so each latent is usually found by most
runs. With the targets known (or the canonical ones of ``unknown_distinct``) latent slot
``i`` of every run is the latent of environment ``i + 1``: the runs are aligned, and each
slot can be taken from the run that agrees best with the others (:func:`slot_consensus`).
The consensus is then distilled into one encoder (:func:`distill_encoder`, a regression),
and a final fit starts from it with the encoder frozen while the prior adapts
(``CRLConfig.encoder_freeze``). No ground truth is used at any step.

:func:`slot_majority` is the other vote over aligned runs: each slot from the largest
cluster of runs that agree on it, a tie going to the cluster holding the lowest loss.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.crl.config import CRLConfig
from jaxcrl.crl.models import contrastive_encoder
from jaxcrl.crl.svi import FitResult, Preprocess, fit
from jaxcrl.metrics import mcc


def slot_consensus(zs: jax.Array, average: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-slot consensus of aligned runs.

    Args:
      zs: ``[R, N, d]`` latents of R >= 2 runs on the same N samples, slot ``i`` of every
        run meaning the same latent.
      average: 0: slot ``i`` of the consensus is slot ``i`` of the medoid run. ``tau`` in
        (0, 1]: the mean of the standardized, sign-aligned slot ``i`` of the medoid and of
        every run whose slot ``i`` has |Pearson| >= ``tau`` with the medoid's (runs that
        found the same latent; their independent errors partly cancel, a lost latent is
        left out).

    Returns:
      ``(z [N, d], chosen [d])``: ``chosen[i]`` is the medoid of slot ``i``, the run whose
      slot ``i`` has the largest mean |Pearson correlation| with the other runs' slot ``i``
      (ties go to the lower run index); ``z[:, i]`` is its slot ``i`` (``average = 0``) or
      the mean above (standardized runs, so ``z`` has no fixed scale).
    """
    zs = jnp.asarray(zs)
    if zs.ndim != 3 or zs.shape[0] < 2:
        raise ValueError(f"slot_consensus needs [R >= 2, N, d] latents, got {zs.shape}")
    if not bool(jnp.all(jnp.isfinite(zs))):
        raise ValueError("slot_consensus: the latents contain NaN or inf")
    if not 0.0 <= average <= 1.0:
        raise ValueError(f"slot_consensus: average must be in [0, 1], got {average}")
    return _slot_consensus(zs, float(average))


def _standardized_corr(zs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(u [R, N, d], corr [d, R, R])``: each run's slots standardized over the samples,
    and every pair of runs' signed Pearson correlation per slot."""
    std = zs.std(1, keepdims=True)
    u = (zs - zs.mean(1, keepdims=True)) / jnp.where(std > 0, std, 1.0)
    return u, jnp.einsum("rni,qni->irq", u, u) / zs.shape[1]


@functools.partial(jax.jit, static_argnums=1)
def _slot_consensus(zs: jax.Array, average: float = 0.0) -> tuple[jax.Array, jax.Array]:
    u, corr = _standardized_corr(zs)
    runs, d = zs.shape[0], zs.shape[2]
    agree = (jnp.abs(corr).sum(-1) - jnp.abs(jnp.diagonal(corr, axis1=1, axis2=2))) / (runs - 1)
    chosen = jnp.argmax(agree, axis=1)
    if average == 0.0:
        return zs[chosen, :, jnp.arange(d)].T, chosen
    c = corr[jnp.arange(d), chosen]  # [d, R]: every run's slot against the medoid's
    keep = (jnp.abs(c) >= average) | (jnp.arange(runs)[None] == chosen[:, None])
    w = jnp.where(keep, jnp.sign(c), 0.0)
    return jnp.einsum("ir,rni->ni", w, u) / keep.sum(1), chosen


def slot_majority(zs: jax.Array, loss: jax.Array, threshold: float = 0.9
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-slot majority of aligned runs, ties broken by the runs' loss.

    A run stuck in a label swap is wrong in two slots and right in the others, so each slot
    is voted on alone. Slot ``i`` of run ``r`` forms a cluster with every run whose slot
    ``i`` has |Pearson| >= ``threshold`` with it (``r`` included). The slot's cluster is the
    largest; among equally large ones (two runs against two), the one holding the run of
    lowest ``loss`` (the likelihood's verdict); then the tighter one (largest sum of |r|).
    The consensus slot is the mean of the cluster's standardized, sign-aligned slots. Unlike
    :func:`slot_consensus`' medoid, a tie between two camps never goes to whichever camp
    happens to sit a little closer to the other one.

    Args:
      zs: ``[R, N, d]`` latents of R >= 2 runs on the same N samples, slot ``i`` of every
        run meaning the same latent.
      loss: ``[R]`` each run's loss (lower is better; for example the final training loss).
      threshold: |Pearson| in (0, 1] at which two runs' slots count as the same latent.

    Returns:
      ``(z [N, d], chosen [d], members [d, R])``: ``chosen[i]`` is the run the winning
      cluster of slot ``i`` was formed around, ``members[i]`` marks the runs averaged into
      ``z[:, i]`` (standardized, so ``z`` has no fixed scale).
    """
    zs = jnp.asarray(zs)
    loss = jnp.asarray(loss, jnp.float32)
    if zs.ndim != 3 or zs.shape[0] < 2:
        raise ValueError(f"slot_majority needs [R >= 2, N, d] latents, got {zs.shape}")
    if loss.shape != zs.shape[:1]:
        raise ValueError(f"slot_majority needs one loss per run: loss {loss.shape}, "
                         f"latents {zs.shape}")
    if not bool(jnp.all(jnp.isfinite(zs))):
        raise ValueError("slot_majority: the latents contain NaN or inf")
    if not bool(jnp.all(jnp.isfinite(loss))):
        raise ValueError("slot_majority: the losses contain NaN or inf")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"slot_majority: threshold must be in (0, 1], got {threshold}")
    return _slot_majority(zs, loss, float(threshold))


@functools.partial(jax.jit, static_argnums=2)
def _slot_majority(zs: jax.Array, loss: jax.Array, threshold: float):
    u, corr = _standardized_corr(zs)
    runs, d = zs.shape[0], zs.shape[2]
    # a run is always in its own cluster (|r| = 1 up to rounding)
    member = (jnp.abs(corr) >= threshold) | jnp.eye(runs, dtype=bool)  # [d, centre, run]
    size = member.sum(-1)
    best = jnp.min(jnp.where(member, loss, jnp.inf), axis=-1)  # cluster's lowest loss
    tight = jnp.where(member, jnp.abs(corr), 0.0).sum(-1)
    ok = size == size.max(-1, keepdims=True)
    best = jnp.where(ok, best, jnp.inf)
    ok &= best == best.min(-1, keepdims=True)
    chosen = jnp.argmax(jnp.where(ok, tight, -jnp.inf), axis=-1)  # [d]
    members = member[jnp.arange(d), chosen]  # [d, R]
    w = jnp.where(members, jnp.sign(corr[jnp.arange(d), chosen]), 0.0)
    return jnp.einsum("ir,rni->ni", w, u) / members.sum(1), chosen, members


def distill_encoder(cfg: CRLConfig, preprocess: Preprocess, x: jax.Array, z: jax.Array,
                    key: jax.Array, *, steps: int = 4000, lr: float = 1e-3,
                    batch_size: int = 1024) -> dict:
    """Parameters of the ``contrastive`` encoder regressed onto target latents.

    Args:
      cfg: the fit's config (its encoder architecture).
      preprocess: the fit's input preprocessing (``FitResult.preprocess`` of one run).
      x: ``[N, D]`` observations; z: ``[N, d]`` target latents (standardized here).
      key: initialization and minibatch key.
      steps, lr, batch_size: Adam on the mean squared error.

    Returns:
      The Flax parameters of ``contrastive_encoder(cfg)`` (the fit's ``"encoder$params"``).
    """
    mlp = contrastive_encoder(cfg)
    xs = preprocess(jnp.asarray(x, jnp.float32))
    zt = (z - z.mean(0)) / (z.std(0) + 1e-8)
    k_init, k_steps = jax.random.split(key)
    params = mlp.init(k_init, xs[:1])["params"]
    opt = optax.adam(lr)

    def loss(p, i):
        return jnp.mean((mlp.apply({"params": p}, xs[i]) - zt[i]) ** 2)

    def step(carry, k):
        p, state = carry
        grads = jax.grad(loss)(p, jax.random.randint(k, (batch_size,), 0, xs.shape[0]))
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                  jax.random.split(k_steps, steps))
    return params


def first_stage(cfg: CRLConfig, x: jax.Array, env: jax.Array, *, key: jax.Array,
                targets: jax.Array | None = None, seeds: int | None = None,
                **fit_kw) -> list[FitResult]:
    """The first stage of :func:`consensus_fit`: ``cfg.consensus_runs`` independent fits.

    Run ``k`` fits ``cfg`` with ``consensus_runs = 0``, ``encoder_freeze = 0`` and
    ``steps = cfg.consensus_steps``, key ``fold_in(key, 100 + k)``; arguments as
    :func:`consensus_fit`. Returns the R :class:`FitResult` (each vmaps the S seeds).
    """
    first = dataclasses.replace(cfg, consensus_runs=0, encoder_freeze=0,
                                steps=cfg.consensus_steps)
    return [fit(first, x, env, targets=targets, key=jax.random.fold_in(key, 100 + k),
                seeds=seeds, **fit_kw) for k in range(cfg.consensus_runs)]


def consensus_fit(cfg: CRLConfig, x: jax.Array, env: jax.Array, *, key: jax.Array,
                  targets: jax.Array | None = None, seeds: int | None = None,
                  z_true: jax.Array | None = None, **fit_kw) -> FitResult:
    """Fit ``cfg`` (``consensus_runs = R >= 2``) by the consensus refit.

    1. R fits of ``cfg.consensus_steps`` steps (run ``k`` with key ``fold_in(key, 100 +
       k)``; every fit vmaps its S seeds);
    2. per seed (vmapped), :func:`slot_consensus` of the R runs' latents of ``x``
       (``average=cfg.consensus_average``);
    3. per seed (vmapped), :func:`distill_encoder` onto the consensus (key ``fold_in(key, 99)``);
    4. the final fit of ``cfg.steps`` steps from the distilled encoder (fresh prior and
       decoder, the encoder frozen for ``cfg.encoder_freeze`` steps), key ``key``.

    Arguments as :func:`jaxcrl.crl.fit` (``x``/``env``/``targets``/``z_true`` shared or with
    a leading seed axis; ``fit_kw``: ``eval_every``, ``progress``, ``mesh``). Returns the
    final fit's :class:`FitResult`; its ``history`` adds ``consensus_loss`` [R, S] (each
    first-stage run's final loss), ``consensus_chosen`` [S, d] (the run of each slot),
    ``consensus_wall_s``, and with ``z_true`` the MCC of every first-stage run
    ``consensus_run_mcc`` [R, S] and of the consensus ``consensus_mcc`` [S] (diagnostics,
    never used to choose).
    """
    if cfg.consensus_runs < 2 or cfg.method != "contrastive":
        raise ValueError(f"consensus_fit needs cfg.consensus_runs >= 2 and method="
                         f"'contrastive', got {cfg.consensus_runs} and {cfg.method!r}")
    t0 = time.perf_counter()
    fits = first_stage(cfg, x, env, key=key, targets=targets, seeds=seeds, **fit_kw)
    zs = jnp.stack([f.encode(x) for f in fits], 1)  # [S, R, N, d]
    n_seeds = zs.shape[0]
    if not bool(jnp.all(jnp.isfinite(zs))):
        raise ValueError("consensus_fit: a first-stage fit encodes x to NaN or inf")
    consensus, chosen = jax.vmap(lambda z: _slot_consensus(z, cfg.consensus_average))(
        zs)  # [S, N, d], [S, d]
    k_distill = jax.random.fold_in(key, 99)
    init = jax.jit(jax.vmap(
        lambda p, xx, z: distill_encoder(cfg, p, xx, z, k_distill),
        in_axes=(0, 0 if np.ndim(x) == 3 else None, 0)))(fits[0].preprocess, x, consensus)
    wall = time.perf_counter() - t0
    final = fit(dataclasses.replace(cfg, consensus_runs=0), x, env, targets=targets, key=key,
                seeds=seeds, z_true=z_true, init_params={"encoder$params": init}, **fit_kw)
    hist = dict(final.history)
    hist["consensus_loss"] = np.stack([np.asarray(f.history["final_loss"]) for f in fits])
    hist["consensus_chosen"] = np.asarray(chosen)
    hist["consensus_wall_s"] = wall
    if z_true is not None:
        zt = np.broadcast_to(np.asarray(z_true), (n_seeds, *np.shape(z_true)[-2:]))
        hist["consensus_run_mcc"] = np.array(
            [[mcc(zt[s], np.asarray(zs[s, k])).value for s in range(n_seeds)]
             for k in range(cfg.consensus_runs)])
        hist["consensus_mcc"] = np.array(
            [mcc(zt[s], np.asarray(consensus[s])).value for s in range(n_seeds)])
    return dataclasses.replace(final, cfg=cfg, history=hist, wall_s=final.wall_s + wall)
