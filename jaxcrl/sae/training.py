"""Training SAEs: one pure step, sweeps by vmap over a shared activation batch.

The step (:func:`update`) for one SAE and one batch ``x`` ``[batch, d_in]``:

1. normalise ``x`` by the fixed ``act_scale`` (E‖x‖ = √d_in, estimated at init);
2. loss = ``mean_b ‖x − x̂‖²`` (summed over ``d_in``) + ``c(t) · mean_b penalty``
   (norm-weighted L1 for ``relu``, L0 through the STE for ``jumprelu``; ``c(t)`` ramps
   linearly over ``coefficient_warmup`` steps) + ``α · AuxK``;
3. unit-norm architectures: the decoder gradient's component parallel to each row is
   removed, and rows are renormalised after the update (Gao et al. 2024);
4. Adam (:func:`jaxcrl.train.build_optimizer`; optional global-norm clipping) with linear
   warmup and an optional linear decay to 0 over the last ``lr_decay`` fraction of steps;
   the run's peak learning rate is a leaf of the optimizer state
   (``optax.inject_hyperparams``), so it can differ between the runs of a sweep.

Dead latents: every architecture uses the **AuxK** loss of Gao et al. (2024). A latent is
dead once it has not fired for ``dead_tokens`` training tokens; the ``aux_k`` largest
pre-activations among dead latents reconstruct the (stop-gradient) residual ``x − x̂``
through the decoder, scaled by ``min(n_dead / aux_k, 1)``. For ReLU-L1 and JumpReLU this
replaces neuron resampling / ghost grads with the same single mechanism: it only acts while
latents are dead and pulls them towards directions the SAE fails to reconstruct.

Sweeps: the hyper-parameters that may differ between runs (``k``, the sparsity
coefficient, ``lr``) live in the state as traced :class:`HParams`, so S SAEs train as one
``jax.vmap``-ed program sharing each activation batch (:func:`train_sweep`).

Driver: training runs through :func:`jaxcrl.train.drive` (non-finite guard, source refresh,
checkpoints of the SAE *and* the source state every ``save_every`` steps, progress bar).
``train(..., workdir=w)`` resumes from the latest checkpoint in ``w`` and continues
bit-identically; it refuses a checkpoint of another config, swept values, key or source.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.sae import architectures as arch_lib
from jaxcrl.sae import auxk, penalties, sparse
from jaxcrl.sae import model as sae_model
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.source import Source
from jaxcrl.train import driver
from jaxcrl.train.mesh import constrain_batch, onto, place_runs, resolve_mesh
from jaxcrl.train.optim import build_optimizer

SWEEPABLE = ("k", "l1_coefficient", "l0_coefficient", "lr")


class HParams(NamedTuple):
    """Traced hyper-parameters of one run (a leading ``[runs]`` axis in a sweep).

    Attributes:
      k: active latents (TopK kinds), int32.
      coefficient: L1 (``relu``) or L0 (``jumprelu``) coefficient, float32.
      lr: peak learning rate, float32.
    """

    k: jax.Array
    coefficient: jax.Array
    lr: jax.Array


class SAEState(NamedTuple):
    """Training state of one SAE (a leading ``[runs]`` axis on every leaf in a sweep).

    Attributes:
      params: SAE params (see :mod:`jaxcrl.sae.model`) for normalised activations.
      opt_state: optax state.
      step: int32 step counter.
      hp: the run's :class:`HParams`.
      act_scale: float32 factor applied to raw activations (E‖s·x‖ = √d_in).
      since_fired: ``[d_sae]`` int32 tokens since each latent last fired (capped).
    """

    params: dict
    opt_state: Any
    step: jax.Array
    hp: HParams
    act_scale: jax.Array
    since_fired: jax.Array


class SAETrainResult(NamedTuple):
    """What :func:`train` / :func:`train_sweep` return.

    Attributes:
      state: final :class:`SAEState` (leading ``[runs]`` axis for a sweep).
      history: per-step metrics ``[steps]`` (``[steps, runs]`` for a sweep), plus ``wall_s``
        and ``traces`` (times this call traced its compiled chunk: 1, or 0 when a run with
        the same config and source already compiled it in this process).
      cfg: the config (the static base config for a sweep).
      cfgs: one config per run (with the swept values filled in).
    """

    state: SAEState
    history: dict
    cfg: SAEConfig
    cfgs: tuple[SAEConfig, ...]

    def params(self, run: int | None = None) -> dict:
        """Params on raw activations (normalisation folded in), of run ``run`` in a sweep."""
        if run is None and len(self.cfgs) > 1:
            raise ValueError(f"this result holds {len(self.cfgs)} runs; pass run=0..."
                             f"{len(self.cfgs) - 1}")
        state = self.state
        if run is not None:
            if jnp.ndim(self.state.step) == 0:
                raise ValueError("run= only applies to the result of train_sweep")
            state = select_run(self.state, run)
        elif jnp.ndim(state.step) == 1:
            state = select_run(state, 0)
        return _family(self.cfg).inference_params(state, self.cfg)


class Family(NamedTuple):
    """The training functions of one dictionary kind, so :func:`train` and
    :func:`train_sweep` (driver, sweeps, checkpoints) serve SAEs, transcoders and CLTs.

    Attributes:
      init_state: ``(key, cfg, rows [n, width], hp) -> SAEState``.
      update: ``(state, rows [batch, width], cfg, with_aux) -> (state, metrics)``.
      inference_params: ``(state, cfg) -> params`` on raw activations.

    A config names its family by a ``family`` attribute (SAEs: none, these functions);
    its ``source_width`` (default ``d_in``) is the width of the source's rows.
    """

    init_state: Callable
    update: Callable
    inference_params: Callable


def _family(cfg: SAEConfig) -> Family:
    return getattr(cfg, "family", None) or SAE_FAMILY


def hparams(cfg: SAEConfig) -> HParams:
    """The traced hyper-parameters of ``cfg``."""
    return HParams(jnp.asarray(cfg.k, jnp.int32), jnp.asarray(cfg.coefficient, jnp.float32),
                   jnp.asarray(cfg.lr, jnp.float32))


def make_optimizer(cfg: SAEConfig, lr: float | jax.Array | None = None
                   ) -> optax.GradientTransformation:
    """Clipping (``grad_clip``) + Adam with the learning rate :func:`lr_at` of peak ``lr``
    (default ``cfg.lr``; traced per run in a sweep), held in the optimizer state."""
    return build_optimizer(learning_rate=cfg.lr if lr is None else lr,
                           lr_schedule=lambda peak, count: lr_at(cfg, peak, count),
                           b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps, clip=cfg.grad_clip)


def lr_at(cfg: SAEConfig, lr: jax.Array, step: jax.Array) -> jax.Array:
    """Learning rate at ``step``: linear warmup, constant, linear decay over ``lr_decay``."""
    t = step.astype(jnp.float32)
    warm = jnp.minimum(1.0, (t + 1.0) / max(cfg.warmup, 1))
    n_decay = cfg.lr_decay * cfg.steps
    decay = jnp.clip((cfg.steps - t) / n_decay, 0.0, 1.0) if n_decay > 0 else 1.0
    return lr * warm * decay


def coefficient_at(cfg: SAEConfig, coefficient: jax.Array, step: jax.Array) -> jax.Array:
    """Sparsity coefficient at ``step`` (linear ramp over ``coefficient_warmup`` steps)."""
    if cfg.coefficient_warmup == 0:
        return coefficient
    return coefficient * jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0)
                                     / cfg.coefficient_warmup)


# --------------------------------------------------------------------------- init


def activation_scale(x: jax.Array) -> jax.Array:
    """``√d_in / mean ‖x‖`` over the rows of ``x`` ``[n, d_in]``."""
    return jnp.sqrt(x.shape[1]) / jnp.linalg.norm(x, axis=1).mean()


def init_state(key: jax.Array, cfg: SAEConfig, x_init: jax.Array,
               hp: HParams | None = None) -> SAEState:
    """Initial state; ``x_init`` ``[n, d_in]`` raw activations set ``act_scale`` and ``b_dec``."""
    x_init = sae_model.check_input(x_init, cfg, "x_init")
    scale = activation_scale(x_init) if cfg.normalize_activations else jnp.float32(1.0)
    xn = x_init * scale
    b_dec = {"mean": lambda: xn.mean(0),
             "geometric_median": lambda: sae_model.geometric_median(xn),
             "zeros": lambda: jnp.zeros((cfg.d_in,), jnp.float32)}[cfg.b_dec_init]()
    params = sae_model.init_params(key, cfg, b_dec=b_dec)
    hp = hparams(cfg) if hp is None else hp
    return SAEState(params=params, opt_state=make_optimizer(cfg, hp.lr).init(params),
                    step=jnp.zeros((), jnp.int32), hp=hp,
                    act_scale=jnp.asarray(scale, jnp.float32),
                    since_fired=jnp.zeros((cfg.d_sae,), jnp.int32))


# --------------------------------------------------------------------------- loss and step


def auxk_loss(params: dict, pre: jax.Array, residual: jax.Array, dead: jax.Array,
              aux_k: int) -> jax.Array:
    """AuxK (Gao et al. 2024) computed literally over all ``d_sae`` columns.

    Uses the ``aux_k`` largest pre-activations ``pre`` ``[batch, d_sae]`` among latents with
    ``dead`` ``[d_sae]`` set (fewer when fewer are dead), decoded without bias; returns
    ``min(n_dead/aux_k, 1) · mean_b ‖ê − e‖²``. Training uses :func:`jaxcrl.sae.auxk.loss`
    (same value, over the dead columns only).
    """
    return auxk.dense_loss(params, pre, residual, dead, aux_k)


def loss_fn(params: dict, x: jax.Array, *, cfg: SAEConfig, k: jax.Array,
            coefficient: jax.Array, dead: jax.Array, with_aux: bool = True,
            aux_bucket: jax.Array | None = None, selection: Any = None
            ) -> tuple[jax.Array, dict]:
    """Training loss of one SAE on normalised ``x`` ``[batch, d_in]`` and its parts.

    ``with_aux=False`` leaves the AuxK term out (it is exactly 0 when no latent is dead);
    ``aux_bucket``: the dead-column budget of :func:`jaxcrl.sae.auxk.loss` (default: from
    ``dead``); ``selection``: a sparse active set already known to be exact (see
    :func:`_value_and_grad`).
    """
    x_hat, aux = sae_model.forward(params, x, cfg, k=k, selection=selection)
    pre, z = aux["pre"], aux["z"]
    err = jnp.sum((x_hat - x) ** 2, -1)
    mse = err.mean()
    sparsity = sae_model.sparsity_penalty(params, pre, z, cfg).mean()
    loss = mse + coefficient * sparsity
    aux_loss = jnp.float32(0.0)
    if with_aux and _uses_aux(cfg):
        residual = jax.lax.stop_gradient(x - x_hat)
        aux_loss = auxk.loss(params, x, pre, residual, dead, cfg,
                             sparse_path=sparse.use_sparse(cfg), bucket_index=aux_bucket)
        loss = loss + cfg.aux_coefficient * aux_loss
    loss, extra = dictionary_terms(loss, params, z, x, cfg)
    centered = jnp.sum((x - x.mean(0)) ** 2)
    return loss, {"z": z, **sparse.latent_stats(aux), "mse": mse / cfg.d_in,
                  "fvu": err.sum() / centered, "sparsity": sparsity, "aux_loss": aux_loss,
                  **extra}


def dictionary_terms(loss: jax.Array, params: dict, z: jax.Array, target: jax.Array,
                     cfg: Any) -> tuple[jax.Array, dict]:
    """``loss`` plus the Matryoshka prefix losses and the orthogonality penalty of ``cfg``.

    Both only exist when configured (``cfg.prefix_widths``, ``cfg.ortho_coefficient``), so
    the metrics of plain SAEs are unchanged; the extra metrics are ``nested_mse`` and
    ``ortho`` (the unweighted penalty). ``target`` ``[batch, d]`` is what ``z`` decodes to.
    """
    extra = {}
    widths = cfg.prefix_widths
    if widths:
        extra["nested_mse"] = penalties.nested_mse(z, params["W_dec"], params["b_dec"],
                                                   target, widths)
        loss = loss + extra["nested_mse"]
    if cfg.ortho_coefficient > 0:
        extra["ortho"] = penalties.ortho_penalty(params["W_dec"])
        loss = loss + cfg.ortho_coefficient * extra["ortho"]
    return loss, extra


def _unit_rows(w: jax.Array) -> jax.Array:
    return w / jnp.maximum(jnp.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def _uses_aux(cfg: SAEConfig) -> bool:
    return cfg.effective_aux_k > 0 and cfg.aux_coefficient > 0


def _dead(state: SAEState, cfg: SAEConfig) -> jax.Array:
    """``[..., d_sae]`` bool: latents that have not fired for ``cfg.dead_tokens`` tokens."""
    return state.since_fired >= cfg.dead_tokens


def _any_dead(state: SAEState, cfg: SAEConfig) -> jax.Array:
    return _dead(state, cfg).any()


def update(state: SAEState, x: jax.Array, cfg: SAEConfig) -> tuple[SAEState, dict]:
    """One training step of one SAE on raw activations ``x`` ``[batch, d_in]``.

    The AuxK term is computed only while some latent is dead (``lax.cond``).

    Returns the new state and scalar metrics: ``mse`` (per element, normalised space),
    ``fvu``, ``l0``, ``dead_frac``, ``loss``, ``aux_loss``.
    """
    upd = _family(cfg).update
    if not _uses_aux(cfg):
        return upd(state, x, cfg, False)
    return jax.lax.cond(_any_dead(state, cfg), lambda s: upd(s, x, cfg, True),
                        lambda s: upd(s, x, cfg, False), state)


def _value_and_grad(params: dict, x: jax.Array, *, cfg: SAEConfig, **kw):
    """``value_and_grad(loss_fn)``; a sparse selection that may not be exact (BatchTopK,
    JumpReLU) is checked first and the whole loss-and-gradient branches on it: the sparse
    path with that selection, or the dense path (``decoder="dense"``, the exact answer).
    Branching outside the gradient keeps the cond out of the linearization (measured at
    d_in 768, d_sae 24,576, JumpReLU: 5.9 s per step with the cond inside the forward,
    1.9 s with no cond at all)."""
    vg = jax.value_and_grad(loss_fn, has_aux=True)
    sel = sparse.checked_selection(params, x, cfg, kw["k"])
    if sel is None:
        return vg(params, x, cfg=cfg, **kw)
    dense = dataclasses.replace(cfg, decoder="dense")
    return jax.lax.cond(sel.exact, lambda p: vg(p, x, cfg=cfg, selection=sel, **kw),
                        lambda p: vg(p, x, cfg=dense, **kw), params)


def _update(state: SAEState, x: jax.Array, cfg: SAEConfig, with_aux: bool,
            aux_bucket: jax.Array | None = None) -> tuple[SAEState, dict]:
    xn = x * state.act_scale
    dead = _dead(state, cfg)
    coef = coefficient_at(cfg, state.hp.coefficient, state.step)
    (loss, parts), grads = _value_and_grad(state.params, xn, cfg=cfg, k=state.hp.k,
                                           coefficient=coef, dead=dead, with_aux=with_aux,
                                           aux_bucket=aux_bucket)
    params = state.params
    if cfg.unit_norm_decoder:
        w, g = params["W_dec"], grads["W_dec"]
        grads = {**grads, "W_dec": g - jnp.sum(g * w, 1, keepdims=True) * w}
    grads = {**grads, **{n: jnp.zeros_like(grads[n]) for n in cfg.arch.frozen_params}}
    # The peak learning rate comes from opt_state (inject_hyperparams), not from cfg.lr.
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    z = parts["z"]
    if cfg.unit_norm_decoder:
        params["W_dec"] = _unit_rows(params["W_dec"])
    params = cfg.arch.post_update(params, state.params, z, cfg)
    fired = parts["fired"]
    since = jnp.where(fired, 0, jnp.minimum(state.since_fired + x.shape[0], cfg.dead_tokens))
    new_state = state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                               since_fired=since.astype(jnp.int32))
    metrics = {"mse": parts["mse"], "fvu": parts["fvu"], "l0": parts["l0"],
               "dead_frac": dead.mean(), "loss": loss, "aux_loss": parts["aux_loss"],
               **{n: parts[n] for n in ("nested_mse", "ortho") if n in parts}}
    return new_state, metrics


def make_step(cfg: SAEConfig, source: Source, *, sweep: bool = False, mesh: Any = None
              ) -> Callable[[tuple, jax.Array], tuple[tuple, dict]]:
    """Pure ``step((source_state, sae_state), key) -> (carry, metrics)`` for ``train.run``.

    With ``sweep`` the SAE state has a leading run axis and the update is vmapped over it
    while the activation batch (drawn once from ``key``) is shared. The AuxK branch is
    chosen outside the vmap (taken when any run has a dead latent), so runs without dead
    latents do not pay for it.

    With a ``mesh`` (one SAE, not a sweep) the activation batch is split over ``"data"``;
    the SAE state keeps the placement it was given (:func:`place_sae_state`).
    """
    upd1 = _family(cfg).update
    if not sweep:
        upd = lambda s, x: update(s, x, cfg)
    else:
        plain = jax.vmap(lambda s, x: upd1(s, x, cfg, False), in_axes=(0, None))
        aux = jax.vmap(lambda s, x, b: upd1(s, x, cfg, True, aux_bucket=b),
                       in_axes=(0, None, None))
        # One dead-column budget for all runs (the largest n_dead), outside the vmap.
        with_aux = lambda s, x: aux(s, x, auxk.bucket(
            _dead(s, cfg).sum(-1).max(), cfg))
        upd = plain if not _uses_aux(cfg) else (
            lambda s, x: jax.lax.cond(_any_dead(s, cfg), with_aux, plain, s, x))

    sample = source.sample  # not ``source``: the step cache below is keyed weakly on it

    def step(carry, key):
        src, sae = carry
        src, x = sample(src, key)
        sae, metrics = upd(sae, constrain_batch(x, mesh))
        return (src, sae), metrics

    return step


# --------------------------------------------------------------------------- drivers


def place_sae_state(mesh: Any, state: SAEState, d_sae: int) -> SAEState:
    """Places one SAE's training state on a ``("data", "model")`` mesh: every array with a
    latent axis (``W_enc``, ``b_enc``, ``W_dec``, their Adam moments, ``since_fired``,
    thresholds) is split along it over ``"model"``, the rest replicated. Per-device memory
    falls with the model-axis size; XLA takes the TopK/BatchTopK over the whole latent axis
    (one global selection, the same latents as on one device).

    Raises:
      ValueError: ``d_sae`` not divisible by the model axis.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxcrl.train.mesh import MODEL

    n = mesh.shape[MODEL]
    if d_sae % n:
        raise ValueError(f"d_sae={d_sae} is not divisible by the mesh model axis ({n} shards)")

    def put(x):
        shape = np.shape(x)
        spec = [None] * len(shape)
        axes = [i for i in range(len(shape)) if shape[i] == d_sae]
        if n > 1 and axes:
            spec[axes[0]] = MODEL
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map(put, state)


def select_run(state: Any, run: int) -> Any:
    """Run ``run`` of a sweep's state (every leaf indexed on its leading axis)."""
    return jax.tree_util.tree_map(lambda a: a[run], state)


def inference_params(state: SAEState, cfg: SAEConfig) -> dict:
    """Params of one SAE acting on raw activations (normalisation folded in)."""
    return sae_model.fold_normalization(state.params, state.act_scale, cfg)


def sweep_configs(base: SAEConfig, values: Mapping[str, Sequence[Any]]
                  ) -> tuple[SAEConfig, tuple[SAEConfig, ...]]:
    """Static base config and per-run configs for a sweep.

    ``values`` maps names in :data:`SWEEPABLE` to equally long sequences; run ``i`` takes the
    ``i``-th value of each. The base config's ``k`` becomes the largest swept ``k``.
    """
    if not values:
        raise ValueError("values must name at least one hyper-parameter to sweep")
    bad = [n for n in values if n not in SWEEPABLE]
    if bad:
        raise ValueError(f"cannot sweep {bad}: sweepable hyper-parameters are {SWEEPABLE}")
    for name in ("l1_coefficient", "l0_coefficient"):
        if name in values and base.arch.coefficient_field != name:
            owners = [a.name for a in arch_lib.ARCHITECTURES.values()
                      if a.coefficient_field == name]
            raise ValueError(f"{name} only acts on {'/'.join(owners)} SAEs, not "
                             f"{base.architecture}")
    lengths = {len(v) for v in values.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"swept values must be non-empty and equally long, got {dict(values)}")
    n = lengths.pop()
    cfgs = tuple(dataclasses.replace(base, **{name: v[i] for name, v in values.items()})
                 for i in range(n))
    static = dataclasses.replace(base, k=max(c.k for c in cfgs)) if "k" in values else base
    return static, cfgs


def _check_cfgs(cfgs: Sequence[SAEConfig]) -> SAEConfig:
    """The static config shared by ``cfgs`` (which may differ only in sweepable fields)."""
    base = dataclasses.replace(cfgs[0], k=max(c.k for c in cfgs))
    keep = {f: getattr(base, f) for f in SWEEPABLE}
    for c in cfgs:
        if dataclasses.replace(c, **keep) != base:
            raise ValueError(f"sweep configs may differ only in {SWEEPABLE}; got {c} vs {base}")
    return base


def _init_sample(source: Source, src_state: Any, key: jax.Array, rows: int) -> jax.Array:
    """``[rows, d_in]`` rows for the SAE's data-dependent init: ``ceil(rows / batch)`` draws
    from the source's initial state, in one compiled loop (a transformer source run op by op
    in Python cost ~25 s per SAE run on the CPU)."""
    n = max(1, -(-rows // source.batch_size))
    keys = jax.random.split(key, n)
    draw = jax.jit(lambda s, ks: jax.lax.map(lambda k: source.sample(s, k)[1], ks))
    return draw(src_state, keys).reshape(n * source.batch_size, -1)[:rows]


def train(cfg: SAEConfig, source: Source, key: jax.Array, **kwargs: Any) -> SAETrainResult:
    """Trains one SAE for ``cfg.steps`` steps on ``source``.

    Args:
      cfg: SAE config (``cfg.batch_size`` must equal ``source.batch_size``).
      source: an activation :class:`~jaxcrl.sae.source.Source`.
      key: root key (init of the source and the SAE, then the data stream).
      **kwargs: see :func:`train_sweep` (``progress``, ``chunk_size``, ``workdir``, ...).
    """
    return _train([cfg], source, key, sweep=False, **kwargs)


def train_sweep(cfgs: SAEConfig | Sequence[SAEConfig], source: Source, key: jax.Array, *,
                values: Mapping[str, Sequence[Any]] | None = None, **kwargs: Any
                ) -> SAETrainResult:
    """Trains several SAEs as one vmapped program sharing every activation batch.

    Args:
      cfgs: a list of configs differing only in :data:`SWEEPABLE` fields, or a base config
        together with ``values``.
      source: activation source.
      key: root key; every run uses the same init key, so run ``i`` equals
        ``train(cfgs[i], source, key)`` (up to float reassociation).
      values: ``{name: [v_0, ..., v_{S-1}]}`` with a base config.
      progress: tqdm bar: True (MSE, L0, dead fraction, FVU, mean over runs), False, or
        the names of the metrics to show.
      chunk_size: most steps per compiled ``lax.scan`` chunk.
      workdir: if given, checkpoints (kind ``"sae"``: the SAE state and the source's
        :meth:`~jaxcrl.sae.source.Source.save` state) go to ``workdir/step_*`` every
        ``save_every`` steps and at the end, keeping the last ``keep_last``; training resumes
        from the latest one (``resume=False``: start afresh).
      save_every: checkpoint period in steps.
      keep_last: checkpoints kept.
      resume: continue from the latest checkpoint in ``workdir``.
      stop_at: stop after this global step (as if preempted; schedules still span
        ``cfg.steps``), checkpointing there.
      refresh_every: for sources with ``refresh`` (large ``.npy`` files), steps between
        loading a new random subset (at global steps ``refresh_every, 2 refresh_every, ...``).
      mesh: None (default): all local devices
        (:func:`jaxcrl.train.mesh.runs_mesh`): a sweep's runs, or one SAE's batch, over
        ``"data"`` (nothing changes on one device); a ``("data", "model")`` mesh: runs
        (sweep) or the batch (one SAE) over ``"data"``, and one SAE's latent axis over ``"model"``
        (:func:`place_sae_state`); False: one device.

    Returns:
      :class:`SAETrainResult` with a leading ``[runs]`` axis on the state.

    Raises:
      jaxcrl.train.NonFiniteError: a loss became NaN/inf (names the step and run; the
        checkpoints before it stay loadable).
      jaxcrl.train.ConfigMismatchError: ``workdir`` holds a checkpoint of another run.
    """
    if isinstance(cfgs, SAEConfig):
        if values is None:
            raise ValueError("pass a list of configs, or a base config and values")
        _, cfgs = sweep_configs(cfgs, values)
    elif values is not None:
        raise ValueError("values only go with a single base config")
    return _train(list(cfgs), source, key, sweep=True, **kwargs)


SAE_FAMILY = Family(init_state=init_state, update=_update, inference_params=inference_params)

_IGNORED = ("dense_threshold", "decoder")  # evaluation only / same math: may change on resume


def _train(cfgs: list[SAEConfig], source: Source, key: jax.Array, *, sweep: bool,
           progress: bool | Sequence[str] = True, chunk_size: int = 200,
           workdir: str | Path | None = None, save_every: int = 1000, keep_last: int = 2,
           resume: bool = True, stop_at: int | None = None, refresh_every: int | None = None,
           init_rows: int = 16384, mesh: Any = None) -> SAETrainResult:
    cfg = _check_cfgs(cfgs)
    width = getattr(cfg, "source_width", cfg.d_in)
    if width == cfg.d_in and cfg.d_in != source.d_in:
        raise ValueError(f"source gives d_in={source.d_in} but the config says {cfg.d_in}")
    if width != source.d_in:
        raise ValueError(f"source gives rows of width {source.d_in} but the config needs "
                         f"{width} (L (d_in + d_out): inputs then outputs per layer)")
    if cfg.batch_size != source.batch_size:
        raise ValueError(f"source batch_size={source.batch_size} != cfg.batch_size="
                         f"{cfg.batch_size}")
    k_src, k_sample, k_params, k_data = jax.random.split(key, 4)
    src = source.init(k_src)
    x0 = _init_sample(source, src, k_sample, init_rows)
    sae_model.check_finite(x0, "activations from the source")
    hp = (jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[hparams(c) for c in cfgs])
          if sweep else hparams(cfgs[0]))
    init = _family(cfg).init_state
    if sweep:
        sae = jax.vmap(lambda h: init(k_params, cfg, x0, h))(hp)
    else:
        sae = init(k_params, cfg, x0, hp)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)

    def to_save(carry):
        saved = source.save(carry[0])
        return ({"sae": carry[1], "source": saved} if jax.tree_util.tree_leaves(saved)
                else {"sae": carry[1]})

    carry, start = (src, sae), 0
    callbacks: list[driver.Callback] = [driver.NonFiniteGuard(("loss",))]
    if workdir is not None:
        from jaxcrl.checkpoint import CheckpointManager

        mgr = CheckpointManager(workdir, kind="sae", save_every=save_every,
                                keep_last=keep_last)
        identity = driver.fingerprint(key)
        if resume:
            got = driver.restore(mgr, config=cfg, template=carry, to_save=to_save,
                                 ignore=_IGNORED, identity=identity)
            if got is not None:
                saved, start = got
                _check_hparams(saved["sae"].hp, hp, mgr.step_path(start))
                src = source.restore(src, saved["source"]) if "source" in saved else (
                    source.restore(src, source.save(src)))
                carry = (src, saved["sae"])
        callbacks[0].manager = mgr
        callbacks.append(driver.Checkpoint(mgr, config=cfg, to_save=to_save,
                                           identity=identity))
    if source.refresh is not None and refresh_every is not None:
        callbacks.append(driver.Refresh(
            lambda t, c: (source.refresh(c[0], jax.random.fold_in(k_src, t)), c[1]),
            refresh_every))
    callbacks += driver.progress_callbacks(progress, ("mse", "l0", "dead_frac", "fvu"), "sae")
    if sweep:  # the SAEs of a sweep side by side on the devices (none on one device)
        mesh = resolve_mesh(mesh, len(cfgs), "number of runs")
        if mesh is not None:
            carry = (onto(mesh, carry[0]), place_runs(carry[1], mesh))
        mesh = None
    else:  # one SAE: batch over "data", latents over "model"
        mesh = resolve_mesh(mesh, cfg.batch_size, "batch_size")
        if mesh is not None:
            carry = (onto(mesh, carry[0]), place_sae_state(mesh, carry[1], cfg.d_sae))
    step = _step(cfg, source, sweep, mesh)
    out = driver.drive(step, carry, k_data, start_step=start, end_step=max(end, start),
                       total_steps=cfg.steps, chunk_size=chunk_size, callbacks=callbacks)
    history = {**out.history, "traces": np.asarray(out.traces)}
    return SAETrainResult(out.state[1], history, cfg, tuple(cfgs))


def _show(a: Any) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in np.asarray(a).ravel().tolist()) + "]"


# source -> {(cfg, sweep): step}: a resumed run in the same process reuses the step, and
# with it the driver's compiled chunk (no retracing); entries go with their source.
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _step(cfg: SAEConfig, source: Source, sweep: bool, mesh: Any = None):
    per_source = _STEPS.setdefault(source, {})
    if (cfg, sweep, mesh) not in per_source:
        per_source[(cfg, sweep, mesh)] = make_step(cfg, source, sweep=sweep, mesh=mesh)
    return per_source[(cfg, sweep, mesh)]


def _check_hparams(saved: HParams, current: HParams, where: Any) -> None:
    diff = [name for name in HParams._fields
            if not np.array_equal(np.asarray(getattr(saved, name)),
                                  np.asarray(getattr(current, name)))]
    if diff:
        raise driver.ConfigMismatchError(
            f"{where}: the checkpointed run has other per-run hyper-parameters "
            + "; ".join(f"{n}: {_show(getattr(saved, n))} (checkpoint) vs "
                        f"{_show(getattr(current, n))} (this run)" for n in diff)
            + "; use another workdir or resume=False", diff)
