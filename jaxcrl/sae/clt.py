"""Transcoders and cross-layer transcoders (CLTs) as pure functions, in the SAE family.

A **transcoder** (Dunefsky et al. 2024) reads an MLP's input and predicts its output,
``ŷ = act(x W_enc + b_enc) W_dec + b_dec`` (``x [d_in]`` e.g. ``blocks.l.ln2.hook_normalized``,
``y [d_out]`` ``blocks.l.hook_mlp_out``), optionally plus a linear skip ``x W_skip``
(skip transcoders, Paulo et al. 2025; SAELens ``skip_transcoder``). A **cross-layer
transcoder** (Anthropic, "Circuit tracing", 2025) has one encoder per layer ``s`` reading
that layer's input ``x_s`` and decoders from layer ``s``'s features to the MLP output of
layer ``s`` and of every later layer::

    z_s = act(x_s W_enc[s] + b_enc[s])                      [B, F] per layer
    ŷ_t = b_dec[t] + Σ_{s ≤ t} z_s W_dec[(s, t)] (+ x_t W_skip[t])

A transcoder is the one-layer case; ``cross_layer=False`` gives per-layer transcoders
(``ŷ_t`` from ``z_t`` only) trained side by side in the same program.

Everything else is the SAE family's: :class:`CLTConfig` *is* an
:class:`~jaxcrl.sae.config.SAEConfig` (architecture from the registry, so TopK, BatchTopK,
JumpReLU, ReLU and Matryoshka activations act per layer; ``k``, coefficients, AuxK, the
orthogonality penalty, optimiser and schedules), training runs through
:func:`jaxcrl.sae.train` / :func:`jaxcrl.sae.train_sweep` (the same driver, vmapped sweeps
over ``k``/coefficients/``lr``, checkpoints and resume; the state is an
:class:`~jaxcrl.sae.training.SAEState`), and sources are ordinary
:class:`~jaxcrl.sae.source.Source` s whose rows concatenate the hooks,
``[x_0, ..., x_{L-1}, y_0, ..., y_{L-1}]`` (width ``L (d_in + d_out)``): an activation cache
of several hook points (:func:`jaxcrl.sae.cache_source` with a list of hooks), a
transformer stream (:func:`jaxcrl.sae.transformer_generator` with a list of hooks) or
arrays (:func:`pair_rows`).

Params (normalised space during training; :func:`fold_normalization` gives raw space)::

    W_enc [L, d_in, F]   b_enc [L, F]   W_dec [P, F, d_out]   b_dec [L, d_out]
    W_skip [L, d_in, d_out] (skip)      the architecture's extras stacked per layer,
                                        e.g. threshold [L, F] (jumprelu) or [L] (batchtopk)

with ``P = L (L + 1) / 2`` decoder blocks ordered ``(0,0), (0,1), ..., (0,L-1), (1,1), ...``
(source-major, so the blocks of one source are contiguous), or ``P = L`` without
``cross_layer``. Unit-norm architectures keep each feature's decoder, concatenated over its
target layers, at unit norm (so a CLT feature's total write has norm 1, as in Anthropic's
parametrisation). Normalisation: each layer's inputs and outputs are scaled so that
``E‖x_l‖ = √d_in`` and ``E‖y_l‖ = √d_out`` (``state.act_scale [2, L]``: inputs, outputs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.checkpoint import register_config
from jaxcrl.sae import penalties
from jaxcrl.sae import training as sae_training
from jaxcrl.sae.architectures import topk_mask
from jaxcrl.sae.config import SAEConfig

Params = dict[str, jax.Array]


@register_config
@dataclasses.dataclass(frozen=True)
class CLTConfig(SAEConfig):
    """A transcoder (``n_layers=1``) or cross-layer transcoder: an SAEConfig plus its shape.

    The SAEConfig fields keep their meaning per layer: ``d_in`` is the width of each
    layer's input, ``d_sae`` the number of features *per layer*, ``k`` the active features
    per layer and token (TopK kinds), ``hook_name`` unused (see ``in_hooks``/``out_hooks``).

    Attributes:
      d_out: width of each layer's output (0: ``d_in``).
      n_layers: layers ``L`` with an encoder (1: a transcoder).
      cross_layer: decoders from each layer to every later layer (a CLT); False: per-layer
        transcoders.
      skip: a linear skip ``x_t W_skip[t]`` per layer (initialised at 0).
      in_hooks: hook names of the inputs, one per layer (e.g.
        ``blocks.{l}.ln2.hook_normalized``); used to splice the dictionary into a model.
      out_hooks: hook names of the outputs, one per layer (e.g. ``blocks.{l}.hook_mlp_out``).
      apply_b_dec_to_input: must be False (``b_dec`` lives in the output space).
    """

    d_out: int = 0
    n_layers: int = 1
    cross_layer: bool = True
    skip: bool = False
    in_hooks: tuple[str, ...] = ()
    out_hooks: tuple[str, ...] = ()
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_out == 0:
            object.__setattr__(self, "d_out", self.d_in)
        if self.d_out < 1 or self.n_layers < 1:
            raise ValueError(f"CLTConfig: d_out and n_layers must be >= 1, got "
                             f"{self.d_out}, {self.n_layers}")
        if self.apply_b_dec_to_input:
            raise ValueError("CLTConfig.apply_b_dec_to_input must be False: a transcoder's "
                             "b_dec lives in the output space")
        if self.b_dec_init == "geometric_median":
            raise ValueError("CLTConfig.b_dec_init must be 'mean' or 'zeros'")
        for name in ("in_hooks", "out_hooks"):
            hooks = tuple(getattr(self, name))
            object.__setattr__(self, name, hooks)
            if hooks and len(hooks) != self.n_layers:
                raise ValueError(f"CLTConfig.{name} must name one hook per layer "
                                 f"(n_layers={self.n_layers}), got {hooks}")

    @property
    def n_blocks(self) -> int:
        """Decoder blocks ``P``."""
        return self.n_layers * (self.n_layers + 1) // 2 if self.cross_layer else self.n_layers

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """``(source, target)`` layer of every decoder block, in storage order."""
        if not self.cross_layer:
            return tuple((s, s) for s in range(self.n_layers))
        return tuple((s, t) for s in range(self.n_layers) for t in range(s, self.n_layers))

    def block_range(self, s: int) -> tuple[int, int]:
        """``[lo, hi)`` of the decoder blocks of source layer ``s`` (targets ``s..``)."""
        if not self.cross_layer:
            return s, s + 1
        lo = sum(self.n_layers - i for i in range(s))
        return lo, lo + self.n_layers - s

    @property
    def source_width(self) -> int:
        """Width of a source row: ``L (d_in + d_out)``."""
        return self.n_layers * (self.d_in + self.d_out)

    @property
    def family(self) -> sae_training.Family:
        """The training functions of this dictionary kind (used by :mod:`jaxcrl.sae.training`)."""
        return FAMILY

    @classmethod
    def tiny(cls, **override) -> CLTConfig:
        return cls(**{"d_in": 16, "d_sae": 64, "k": 4, "steps": 200, "batch_size": 256,
                      "lr": 3e-3, "warmup": 10, **override})


def transcoder_config(**kw: Any) -> CLTConfig:
    """A one-layer :class:`CLTConfig` (a transcoder)."""
    return CLTConfig(**{"n_layers": 1, **kw})


# --------------------------------------------------------------------------- rows


def split_rows(rows: jax.Array, cfg: CLTConfig) -> tuple[jax.Array, jax.Array]:
    """Source rows ``[B, L (d_in + d_out)]`` -> ``(x [B, L, d_in], y [B, L, d_out])``."""
    if rows.ndim != 2 or rows.shape[1] != cfg.source_width:
        raise ValueError(f"rows must be [batch, L (d_in + d_out) = {cfg.source_width}] for "
                         f"L={cfg.n_layers}, d_in={cfg.d_in}, d_out={cfg.d_out}; got "
                         f"{tuple(rows.shape)}")
    b, n_in = rows.shape[0], cfg.n_layers * cfg.d_in
    return (rows[:, :n_in].reshape(b, cfg.n_layers, cfg.d_in),
            rows[:, n_in:].reshape(b, cfg.n_layers, cfg.d_out))


def pair_rows(x: Any, y: Any) -> np.ndarray:
    """``x [N, L, d_in]`` (or ``[N, d_in]``) and ``y [N, L, d_out]`` -> source rows
    ``[N, L (d_in + d_out)]`` (e.g. for :func:`jaxcrl.sae.array_source`)."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.ndim == 2:
        x, y = x[:, None], y[:, None] if y.ndim == 2 else y
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"x [N, L, d_in] and y [N, L, d_out] must share N and L, got "
                         f"{x.shape} and {y.shape}")
    return np.concatenate([x.reshape(len(x), -1), y.reshape(len(y), -1)], 1)


# --------------------------------------------------------------------------- params


def _extra_names(cfg: CLTConfig) -> tuple[str, ...]:
    return tuple(cfg.arch.init_extra(cfg))


def _layer_extras(params: Params, cfg: CLTConfig, s: int) -> Params:
    return {n: params[n][s] for n in _extra_names(cfg)}


def init_params(key: jax.Array, cfg: CLTConfig, *, b_dec: jax.Array | None = None) -> Params:
    """Random unit encoder columns and decoder rows (each feature's decoder, concatenated
    over its targets, of unit norm; ``dec_init_norm`` for ``relu``), zero biases and skip.

    Args:
      b_dec: ``[L, d_out]`` initial decoder bias (e.g. the outputs' mean); zeros if None.
    """
    L, F = cfg.n_layers, cfg.d_sae
    k_enc, k_dec = jax.random.split(key)
    w_enc = jax.random.normal(k_enc, (L, cfg.d_in, F), jnp.float32)
    w_enc = w_enc / jnp.linalg.norm(w_enc, axis=1, keepdims=True)
    w_dec = unit_decoder(jax.random.normal(k_dec, (cfg.n_blocks, F, cfg.d_out), jnp.float32),
                         cfg)
    if not cfg.unit_norm_decoder:
        w_dec = w_dec * cfg.dec_init_norm
    params = {"W_enc": w_enc, "b_enc": jnp.zeros((L, F), jnp.float32), "W_dec": w_dec,
              "b_dec": (jnp.zeros((L, cfg.d_out), jnp.float32) if b_dec is None
                        else jnp.asarray(b_dec, jnp.float32).reshape(L, cfg.d_out))}
    if cfg.skip:
        params["W_skip"] = jnp.zeros((L, cfg.d_in, cfg.d_out), jnp.float32)
    extra = cfg.arch.init_extra(cfg)
    params.update({n: jnp.broadcast_to(v, (L, *v.shape)) for n, v in extra.items()})
    return params


def decoder_norms(w_dec: jax.Array, cfg: CLTConfig) -> jax.Array:
    """``[L, F]`` norm of each feature's decoder, concatenated over its target layers."""
    sq = jnp.sum(w_dec * w_dec, -1)  # [P, F]
    return jnp.sqrt(jnp.stack([sq[slice(*cfg.block_range(s))].sum(0)
                               for s in range(cfg.n_layers)]))


def _per_block(per_layer: jax.Array, cfg: CLTConfig) -> jax.Array:
    """``[L, ...]`` per source layer -> ``[P, ...]`` per decoder block."""
    return per_layer[jnp.asarray([s for s, _ in cfg.blocks])]


def unit_decoder(w_dec: jax.Array, cfg: CLTConfig) -> jax.Array:
    """``w_dec`` with every feature's concatenated decoder at unit norm."""
    norms = _per_block(decoder_norms(w_dec, cfg), cfg)
    return w_dec / jnp.maximum(norms, 1e-12)[..., None]


def check_params(params: Params, cfg: CLTConfig) -> None:
    """ValueError naming the first parameter whose shape contradicts ``cfg``."""
    L, F = cfg.n_layers, cfg.d_sae
    shapes = {"W_enc": (L, cfg.d_in, F), "b_enc": (L, F), "W_dec": (cfg.n_blocks, F, cfg.d_out),
              "b_dec": (L, cfg.d_out)}
    if cfg.skip:
        shapes["W_skip"] = (L, cfg.d_in, cfg.d_out)
    for name, shape in shapes.items():
        if name not in params:
            raise KeyError(f"transcoder params have no {name!r} (keys: {sorted(params)})")
        if tuple(params[name].shape) != shape:
            raise ValueError(f'params["{name}"] has shape {tuple(params[name].shape)}, '
                             f"expected {shape} for L={L}, d_in={cfg.d_in}, d_sae={F}, "
                             f"d_out={cfg.d_out}")


# --------------------------------------------------------------------------- forward


def pre_activations(params: Params, x: jax.Array, cfg: CLTConfig) -> jax.Array:
    """``x_s W_enc[s] + b_enc[s]``: ``x [B, L, d_in] -> [B, L, F]``."""
    return jnp.einsum("bli,lif->blf", x, params["W_enc"]) + params["b_enc"]


def activate(params: Params, pre: jax.Array, cfg: CLTConfig, *, k: Any = None,
             inference: bool = False) -> jax.Array:
    """Each layer's latents from its pre-activations ``[B, L, F]`` by the architecture
    (BatchTopK selects ``k·B`` per layer)."""
    k = cfg.k if k is None else k
    return jnp.stack([cfg.arch.activate(_layer_extras(params, cfg, s), pre[:, s], cfg, k=k,
                                        inference=inference)
                      for s in range(cfg.n_layers)], 1)


def encode(params: Params, x: jax.Array, cfg: CLTConfig, *, k: Any = None,
           inference: bool = False) -> jax.Array:
    """Latents ``[B, L, F]`` of inputs ``x [B, L, d_in]``."""
    return activate(params, pre_activations(params, x, cfg), cfg, k=k, inference=inference)


def decode(params: Params, z: jax.Array, cfg: CLTConfig, x: jax.Array | None = None, *,
           width: int | None = None) -> jax.Array:
    """Outputs ``ŷ [B, L, d_out]`` from latents ``z [B, L, F]`` (``x`` for the skip).

    ``width``: decode with the first ``width`` features of each layer only (a Matryoshka
    prefix).
    """
    F = cfg.d_sae if width is None else width
    out = [jnp.broadcast_to(params["b_dec"][t], (z.shape[0], cfg.d_out))
           for t in range(cfg.n_layers)]
    for s in range(cfg.n_layers):
        lo, hi = cfg.block_range(s)
        contrib = jnp.einsum("bf,tfd->btd", z[:, s, :F], params["W_dec"][lo:hi, :F])
        for j, t in enumerate(range(s, s + hi - lo) if cfg.cross_layer else (s,)):
            out[t] = out[t] + contrib[:, j]
    y = jnp.stack(out, 1)
    if cfg.skip:
        if x is None:
            raise ValueError("a skip transcoder decodes with its input: pass x")
        y = y + jnp.einsum("bli,lio->blo", x, params["W_skip"])
    return y


def forward(params: Params, x: jax.Array, cfg: CLTConfig, *, k: Any = None,
            inference: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``x [B, L, d_in] -> (ŷ [B, L, d_out], {"pre", "z"} [B, L, F])``."""
    pre = pre_activations(params, x, cfg)
    z = activate(params, pre, cfg, k=k, inference=inference)
    return decode(params, z, cfg, x), {"pre": pre, "z": z}


def layer_output(params: Params, xs: list[jax.Array], cfg: CLTConfig, t: int, *,
                 inference: bool = True) -> jax.Array:
    """``ŷ_t`` of target layer ``t`` from the inputs ``xs[s] [N, d_in]`` of layers ``0..t``
    (all that a cross-layer target reads; per-layer transcoders read ``xs[t]`` only)."""
    n = xs[0].shape[0]
    out = params["b_dec"][t] + jnp.zeros((n, cfg.d_out), xs[0].dtype)
    sources = range(t + 1) if cfg.cross_layer else (t,)
    for s in sources:
        pre = xs[s] @ params["W_enc"][s] + params["b_enc"][s]
        z = cfg.arch.activate(_layer_extras(params, cfg, s), pre, cfg, k=cfg.k,
                              inference=inference)
        lo, _ = cfg.block_range(s)
        out = out + z @ params["W_dec"][lo + (t - s if cfg.cross_layer else 0)]
    if cfg.skip:
        out = out + xs[t] @ params["W_skip"][t]
    return out


# --------------------------------------------------------------------------- training


def _aux_loss(params: Params, pre: jax.Array, residual: jax.Array, dead: jax.Array,
              cfg: CLTConfig) -> jax.Array:
    """AuxK per source layer: the ``aux_k`` largest dead pre-activations of layer ``s``
    reconstruct the residual of its targets (no bias), ``min(n_dead/aux_k, 1)``-scaled."""
    aux_k = cfg.effective_aux_k
    total = jnp.zeros((), pre.dtype)
    for s in range(cfg.n_layers):
        acts = jnp.where(dead[s], jax.nn.relu(pre[:, s]), 0.0)
        z_aux = jnp.where(topk_mask(acts, aux_k), acts, 0.0)
        lo, hi = cfg.block_range(s)
        e_hat = jnp.einsum("bf,tfd->btd", z_aux, params["W_dec"][lo:hi])
        tgt = residual[:, s:s + hi - lo] if cfg.cross_layer else residual[:, s:s + 1]
        scale = jnp.minimum(dead[s].sum() / aux_k, 1.0)
        total = total + scale * jnp.mean(jnp.sum((e_hat - tgt) ** 2, (-2, -1)))
    return total


def loss_fn(params: Params, x: jax.Array, y: jax.Array, *, cfg: CLTConfig, k: jax.Array,
            coefficient: jax.Array, dead: jax.Array, with_aux: bool = True
            ) -> tuple[jax.Array, dict]:
    """Training loss on normalised ``x [B, L, d_in]``, ``y [B, L, d_out]``: the squared
    error summed over layers and width, the sparsity penalty summed over layers, AuxK,
    Matryoshka prefix losses and the orthogonality penalty (mean over decoder blocks)."""
    y_hat, aux = forward(params, x, cfg, k=k)
    pre, z = aux["pre"], aux["z"]
    err = jnp.sum((y_hat - y) ** 2, -1)  # [B, L]
    mse = err.sum(-1).mean()
    norms = decoder_norms(params["W_dec"], cfg)
    sparsity = jnp.zeros((), x.dtype)
    for s in range(cfg.n_layers):
        pseudo = {**_layer_extras(params, cfg, s), "W_dec": norms[s][:, None]}
        sparsity = sparsity + cfg.arch.penalty(pseudo, pre[:, s], z[:, s], cfg).mean()
    loss = mse + coefficient * sparsity
    aux_loss = jnp.zeros((), x.dtype)
    if with_aux and sae_training._uses_aux(cfg):
        aux_loss = _aux_loss(params, pre, jax.lax.stop_gradient(y - y_hat), dead, cfg)
        loss = loss + cfg.aux_coefficient * aux_loss
    extra = {}
    if cfg.prefix_widths:
        extra["nested_mse"] = sum(
            jnp.mean(jnp.sum((y - decode(params, z, cfg, x, width=w)) ** 2, (-2, -1)))
            for w in cfg.prefix_widths)
        loss = loss + extra["nested_mse"]
    if cfg.ortho_coefficient > 0:
        extra["ortho"] = jax.vmap(penalties.ortho_penalty)(params["W_dec"]).mean()
        loss = loss + cfg.ortho_coefficient * extra["ortho"]
    centered = jnp.sum((y - y.mean(0)) ** 2)
    return loss, {"z": z, "mse": mse / (cfg.n_layers * cfg.d_out),
                  "fvu": err.sum() / centered, "sparsity": sparsity, "aux_loss": aux_loss,
                  **extra}


def init_state(key: jax.Array, cfg: CLTConfig, rows: jax.Array,
               hp: sae_training.HParams | None = None) -> sae_training.SAEState:
    """Initial state from raw source rows ``[n, L (d_in + d_out)]`` (scales and ``b_dec``)."""
    x, y = split_rows(jnp.asarray(rows, jnp.float32), cfg)
    if cfg.normalize_activations:
        s_in = jnp.sqrt(cfg.d_in) / jnp.linalg.norm(x, axis=-1).mean(0)
        s_out = jnp.sqrt(cfg.d_out) / jnp.maximum(jnp.linalg.norm(y, axis=-1).mean(0), 1e-12)
    else:
        s_in = s_out = jnp.ones((cfg.n_layers,), jnp.float32)
    yn = y * s_out[:, None]
    b_dec = yn.mean(0) if cfg.b_dec_init == "mean" else None
    params = init_params(key, cfg, b_dec=b_dec)
    hp = sae_training.hparams(cfg) if hp is None else hp
    return sae_training.SAEState(
        params=params, opt_state=sae_training.make_optimizer(cfg, hp.lr).init(params),
        step=jnp.zeros((), jnp.int32), hp=hp, act_scale=jnp.stack([s_in, s_out]),
        since_fired=jnp.zeros((cfg.n_layers, cfg.d_sae), jnp.int32))


def update(state: sae_training.SAEState, rows: jax.Array, cfg: CLTConfig, with_aux: bool,
           aux_bucket: jax.Array | None = None) -> tuple[sae_training.SAEState, dict]:
    """One step on raw source rows ``[B, L (d_in + d_out)]`` (see
    :func:`jaxcrl.sae.training.update`; metrics are the same, ``l0`` per layer).
    ``aux_bucket`` is accepted for the family protocol and unused: the CLT's per-layer
    AuxK runs over all columns."""
    x, y = split_rows(rows, cfg)
    s_in, s_out = state.act_scale[0], state.act_scale[1]
    xn, yn = x * s_in[:, None], y * s_out[:, None]
    dead = state.since_fired >= cfg.dead_tokens
    coef = sae_training.coefficient_at(cfg, state.hp.coefficient, state.step)
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, xn, yn, cfg=cfg, k=state.hp.k, coefficient=coef, dead=dead,
        with_aux=with_aux)
    params = state.params
    if cfg.unit_norm_decoder:  # remove each feature's radial gradient component
        w, g = params["W_dec"], grads["W_dec"]
        radial = jnp.stack([jnp.sum(g[slice(*cfg.block_range(s))] * w[slice(
            *cfg.block_range(s))], (0, 2)) for s in range(cfg.n_layers)])  # [L, F]
        grads = {**grads, "W_dec": g - _per_block(radial, cfg)[..., None] * w}
    grads = {**grads, **{n: jnp.zeros_like(grads[n]) for n in cfg.arch.frozen_params}}
    updates, opt_state = sae_training.make_optimizer(cfg).update(grads, state.opt_state,
                                                                 params)
    params = optax.apply_updates(params, updates)
    z = parts["z"]
    if cfg.unit_norm_decoder:
        params["W_dec"] = unit_decoder(params["W_dec"], cfg)
    names = _extra_names(cfg)
    if names:
        per = [cfg.arch.post_update(_layer_extras(params, cfg, s),
                                    _layer_extras(state.params, cfg, s), z[:, s], cfg)
               for s in range(cfg.n_layers)]
        params = {**params, **{n: jnp.stack([p[n] for p in per]) for n in names}}
    fired = (z > 0).any(0)  # [L, F]
    since = jnp.where(fired, 0, jnp.minimum(state.since_fired + x.shape[0], cfg.dead_tokens))
    new_state = state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                               since_fired=since.astype(jnp.int32))
    metrics = {"mse": parts["mse"], "fvu": parts["fvu"],
               "l0": (z > 0).sum(-1).mean(), "dead_frac": dead.mean(), "loss": loss,
               "aux_loss": parts["aux_loss"],
               **{n: parts[n] for n in ("nested_mse", "ortho") if n in parts}}
    return new_state, metrics


def fold_normalization(params: Params, scale: jax.Array, cfg: CLTConfig) -> Params:
    """Params acting on raw activations for a dictionary trained with ``scale [2, L]``.

    ``W_enc[s] ← s_in[s] W_enc[s]``; block ``(s, t)``: ``W_dec ← W_dec / s_out[t]``;
    ``b_dec[t] ← b_dec[t] / s_out[t]``; ``W_skip[t] ← s_in[t] / s_out[t] W_skip[t]``
    (thresholds act on unchanged pre-activations).
    """
    s_in, s_out = jnp.asarray(scale[0]), jnp.asarray(scale[1])
    tgt = jnp.asarray([t for _, t in cfg.blocks])
    out = dict(params)
    out["W_enc"] = params["W_enc"] * s_in[:, None, None]
    out["W_dec"] = params["W_dec"] / s_out[tgt][:, None, None]
    out["b_dec"] = params["b_dec"] / s_out[:, None]
    if cfg.skip:
        out["W_skip"] = params["W_skip"] * (s_in / s_out)[:, None, None]
    return out


def inference_params(state: sae_training.SAEState, cfg: CLTConfig) -> Params:
    return fold_normalization(state.params, state.act_scale, cfg)


FAMILY = sae_training.Family(init_state=init_state, update=update,
                             inference_params=inference_params)


# --------------------------------------------------------------------------- evaluation


_forward_jit = jax.jit(forward, static_argnames=("cfg", "k", "inference"))


def evaluate(params: Params, rows: Any, cfg: CLTConfig, *, batch_size: int = 4096,
             inference: bool = True) -> dict[str, Any]:
    """Metrics of raw-space params on source rows ``[n, L (d_in + d_out)]``.

    Returns ``{"l0" (mean active features per layer and token), "l0_per_layer" [L],
    "fvu" (all layers), "fvu_per_layer" [L], "mse", "dead_fraction", "density" [L, F]}``.
    """
    rows = jnp.asarray(rows, jnp.float32)
    x, y = split_rows(rows, cfg)
    check_params(params, cfg)
    y_hat, z = [], []
    for i in range(0, len(rows), batch_size):
        yh, aux = _forward_jit(params, x[i:i + batch_size], cfg, inference=inference)
        y_hat.append(np.asarray(yh))
        z.append(np.asarray(aux["z"]) > 0)
    y_hat, fired = np.concatenate(y_hat), np.concatenate(z)
    y_np = np.asarray(y, np.float64)
    err = ((y_np - y_hat) ** 2).sum(-1)  # [n, L]
    cen = ((y_np - y_np.mean(0)) ** 2).sum(-1)
    density = fired.mean(0)
    return {"l0": float(fired.sum(-1).mean()), "l0_per_layer": fired.sum(-1).mean(0).tolist(),
            "fvu": float(err.sum() / cen.sum()),
            "fvu_per_layer": (err.sum(0) / cen.sum(0)).tolist(),
            "mse": float(err.mean() / cfg.d_out), "dead_fraction": float((density == 0).mean()),
            "density": density}


class ToyCLT(NamedTuple):
    """A known cross-layer MLP: layer ``s`` has ``n`` features with input directions
    ``enc [L, n, d_in]`` and output directions ``dec [P, n, d_out]`` (blocks as in
    :class:`CLTConfig`; each feature's concatenated output has unit norm)."""

    enc: jax.Array
    dec: jax.Array
    threshold: float


def make_toy_clt(key: jax.Array, cfg: CLTConfig, n_features: int, *,
                 threshold: float = 0.3) -> ToyCLT:
    """Random known features for :func:`toy_clt_generator` (shapes from ``cfg``)."""
    k1, k2 = jax.random.split(key)
    enc = jax.random.normal(k1, (cfg.n_layers, n_features, cfg.d_in))
    enc = enc / jnp.linalg.norm(enc, axis=-1, keepdims=True)
    dec = unit_decoder(jax.random.normal(k2, (cfg.n_blocks, n_features, cfg.d_out)), cfg)
    return ToyCLT(enc, dec, threshold)


def toy_clt_generator(toy: ToyCLT, sae_toy: Any, cfg: CLTConfig, batch: int):
    """``gen(key) -> rows [batch, L (d_in + d_out)]`` of the known MLP: per layer ``s``,
    sparse features ``f_s`` (:func:`jaxcrl.sae.toy.sample_features` of ``sae_toy``, a
    :class:`~jaxcrl.sae.toy.Toy` with ``n`` features), input ``x_s = f_s enc[s]``, hidden
    ``h_s = ReLU(x_s enc[s]ᵀ − θ)`` (the MLP's neurons: one per feature) and outputs
    ``y_t = Σ_{s ≤ t} h_s dec[(s, t)]``. The true decoder of feature ``i`` of layer ``s``
    is ``dec[(s, ·), i]``."""
    from jaxcrl.sae.toy import sample_features

    def gen(key):
        keys = jax.random.split(key, cfg.n_layers)
        f = jnp.stack([sample_features(sae_toy, kk, batch) for kk in keys], 1)  # [B, L, n]
        x = jnp.einsum("bln,lnd->bld", f, toy.enc)
        h = jax.nn.relu(jnp.einsum("bld,lnd->bln", x, toy.enc) - toy.threshold)
        params = {"W_dec": toy.dec, "b_dec": jnp.zeros((cfg.n_layers, cfg.d_out))}
        y = decode(params, h, dataclasses.replace(cfg, skip=False))
        return jnp.concatenate([x.reshape(batch, -1), y.reshape(batch, -1)], 1)

    return gen


def feature_decoders(w_dec: Any, cfg: CLTConfig) -> list[np.ndarray]:
    """Per source layer ``s``, each feature's decoder concatenated over its targets:
    ``[F, (targets) d_out]`` (host numpy), for matching against known features."""
    w = np.asarray(w_dec)
    out = []
    for s in range(cfg.n_layers):
        lo, hi = cfg.block_range(s)
        out.append(np.transpose(w[lo:hi], (1, 0, 2)).reshape(w.shape[1], -1))
    return out


def mmcs_layers(w_dec: Any, true_dec: Any, cfg: CLTConfig) -> list[float]:
    """Per source layer, MMCS of the known features' concatenated decoders against the
    learned ones (:func:`jaxcrl.sae.toy.mmcs`)."""
    from jaxcrl.sae.toy import mmcs

    return [mmcs(a, b) for a, b in zip(feature_decoders(w_dec, cfg),
                                       feature_decoders(true_dec, cfg), strict=True)]
