"""Interventions on internal features, scored against the true causal graph.

The question: if we move the model's internal representation of latent ``z_i`` (a probe
direction or an SAE latent), which of its *predictions of the other latents* move? A model
whose internals respect the data's causal graph should move its beliefs about ``z_i``'s
descendants, and leave its beliefs about non-descendants alone.

Pieces (all pure, jit/vmap-friendly):

* :func:`latent_beliefs` reads the model's belief about every latent from its next-token
  distribution: for the latent-SCM language (:mod:`jaxcrl.scm.language`), the value predicted
  after the cue ``z_j?`` *is* the model's predictive of ``z_j`` (up to the known report
  noise). The last input token is replaced by each cue in turn (one batched forward).
* :func:`steering_deltas` builds, from a linear readout ``W [D, d K]`` of the latents at a
  hook (a probe of the exact posterior marginals), the minimum-norm residual edit that moves
  the readout of ``z_i`` towards value ``v`` *and leaves the readout of every other latent
  unchanged at that layer* ("probe clamping"). Any change in other latents' predictions is
  then produced by the model's downstream computation.
* :func:`effect_matrix` applies each edit through ``run_with_hooks`` (vmapped over edits)
  and returns ``E[i, j]`` = mean total-variation shift of the belief about ``z_j`` when
  ``z_i`` is edited.
* :func:`score_effects` compares the off-diagonal of ``E`` with the true descendant relation
  (transitive closure of the DAG): edge AUROC and the SHD of ``E`` thresholded with the
  edge count matched, plus the same against the direct graph.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.lm.model import ReplaceWith, replace_with
from jaxcrl.metrics import edge_auroc, shd
from jaxcrl.metrics.regression import fit_ridge
from jaxcrl.sae.config import SAEConfig
from jaxcrl.sae.model import Reconstruct, encode
from jaxcrl.scm.graphs import transitive_closure


def latent_beliefs(model, params, tokens: jax.Array, *, task_cfg,
                   hooks: dict | None = None) -> jax.Array:
    """The model's predictive of every latent after ``tokens``.

    Args:
      model: a :class:`jaxcrl.lm.HookedTransformer` (anything with ``apply`` and
        ``run_with_hooks``).
      params: its parameters.
      tokens: ``[B, T]`` latent-language inputs whose last token is a cue position
        (``T`` even); the last token is replaced by the cue of each latent in turn.
      task_cfg: the language's :class:`jaxcrl.scm.language.TaskConfig` (token ids: cue ``z_j?``
        is ``cue_token(cfg, j)``, the values of ``z_j`` are ``value_token(cfg, j, k)``).
      hooks: optional ``run_with_hooks`` hooks applied in every forward.

    Returns:
      ``[B, d, K]`` probabilities ``p(next = value k of z_j | prefix, cue z_j?)``
      renormalised over the ``K`` values of ``z_j``.
    """
    from jaxcrl.scm.language import cue_token, value_token

    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    d, k = task_cfg.n_latents, task_cfg.n_values
    cues = jnp.asarray(cue_token(task_cfg, jnp.arange(d)), jnp.int32)
    toks = jnp.broadcast_to(tokens[None], (d, b, t)).at[:, :, -1].set(cues[:, None])
    toks = toks.reshape(d * b, t)
    logits = (model.run_with_hooks(params, toks, hooks=hooks) if hooks
              else model.apply(params, toks))
    last = logits[:, -1].reshape(d, b, -1)  # [d, B, V]
    ids = value_token(task_cfg, jnp.arange(d)[:, None], jnp.arange(k)[None, :])  # [d, K]
    values = jnp.take_along_axis(last, jnp.broadcast_to(ids[:, None], (d, b, k)), axis=-1)
    return jax.nn.softmax(values, -1).transpose(1, 0, 2)


def sae_hook(params: dict, cfg: SAEConfig) -> ReplaceWith:
    """Hook splicing an SAE's reconstruction into a model: ``x -> x_hat`` at every position.

    The SAE params travel as traced hook data (:func:`jaxcrl.lm.replace_with` with the
    hashable :class:`jaxcrl.sae.model.Reconstruct`), so a second SAE with the same config
    reuses the compiled forward and no weights are pinned in the compile cache.

    Args:
      params: SAE params acting on raw activations (``SAETrainResult.params()``).
      cfg: its config.
    """
    return replace_with(Reconstruct(cfg), params)


@dataclasses.dataclass(frozen=True)
class SAEClamp:
    """``clamp(x, params, f, a) = x + (a − z_f(x)) W_dec[f]`` at every position.

    Sets SAE latent ``f`` to ``a`` (``f``, ``a`` and ``params`` traced; ``z_f`` the SAE's own
    encoding of ``x [..., d_in]``, so TopK/JumpReLU gating is respected). Hashable per
    config, for :func:`jaxcrl.lm.replace_with` (``replace_with(SAEClamp(cfg), params, f, a)``).
    """

    cfg: SAEConfig

    def __call__(self, x: jax.Array, params: dict, f: jax.Array, a: jax.Array) -> jax.Array:
        z = encode(params, x.reshape(-1, x.shape[-1]), self.cfg, inference=True)[:, f]
        return x + (a - z.reshape(x.shape[:-1]))[..., None] * params["W_dec"][f]


def probe_readout(acts: jax.Array, targets: jax.Array, *, ridge: float = 1e-3) -> jax.Array:
    """Ridge read-out ``targets ~ b + acts @ W`` on the raw activation geometry.

    :func:`jaxcrl.metrics.regression.fit_ridge` with ``standardize=False``: the penalty is
    ``ridge`` per sample in units of the mean activation variance (the mean eigenvalue of
    the activation covariance), so it means the same at every layer, while the read-out
    directions stay those of the raw residual stream (what :func:`steering_deltas` edits).

    Args:
      acts: ``[N, D]`` activations.
      targets: ``[N, M]`` (e.g. posterior marginals flattened to ``M = d K``).
      ridge: ridge strength relative to the mean activation variance.

    Returns:
      ``W [D, M]`` (float32).
    """
    if np.ndim(acts) != 2 or np.ndim(targets) != 2 or np.shape(acts)[0] != np.shape(targets)[0]:
        raise ValueError(f"probe_readout: acts [N, D] and targets [N, M] must share N, got "
                         f"{np.shape(acts)} and {np.shape(targets)}")
    fit = fit_ridge(np.asarray(acts), np.asarray(targets), alpha=ridge, standardize=False)
    return jnp.asarray(fit.w, jnp.float32)


def steering_deltas(w: jax.Array, *, n_latents: int, n_values: int, scale: float = 1.0
                    ) -> jax.Array:
    """Minimum-norm residual edits that move one latent's linear readout only.

    With a readout ``r = x @ W`` (``W [D, d K]``, column ``i K + v`` reading
    ``p(z_i = v)``), the edit ``delta_{i v}`` solves ``delta @ W = scale (e_{i v} - 1/K
    sum_u e_{i u})`` with the least norm: the readout of ``z_i`` shifts mass towards ``v``
    (keeping its sum), every other latent's readout is unchanged.

    Returns:
      ``[d, K, D]`` edits.
    """
    d, k = n_latents, n_values
    if w.shape[1] != d * k:
        raise ValueError(f"steering_deltas: W must be [D, d*K = {d * k}], got {w.shape}")
    eye = jnp.eye(d * k).reshape(d, k, d * k)
    block = eye.reshape(d, k, d, k).sum(1, keepdims=True).reshape(d, 1, d * k)
    target = scale * (eye - block / k)  # [d, K, dK]
    pinv = jnp.linalg.pinv(w.T)  # [D, dK]: least-norm solution of delta @ W = t
    return jnp.einsum("ikm,dm->ikd", target, pinv)


@functools.partial(jax.jit, static_argnames=("model", "task_cfg"))
def latent_beliefs_jit(model, params, tokens: jax.Array, *, task_cfg,
                       hooks: dict | None = None) -> jax.Array:
    """:func:`latent_beliefs` compiled once per model, task config and hook structure
    (params, tokens and the hooks' arrays are traced)."""
    return latent_beliefs(model, params, tokens, task_cfg=task_cfg, hooks=hooks)


def belief_shift(p: jax.Array, q: jax.Array) -> jax.Array:
    """Total-variation distance ``1/2 sum_k |p - q|`` over the last axis."""
    return 0.5 * jnp.abs(p - q).sum(-1)


def effect_matrix(beliefs_fn: Callable, edits, baseline: jax.Array) -> jax.Array:
    """``E[i, j]``: mean belief shift of latent ``j`` under the edits of latent ``i``.

    Args:
      beliefs_fn: ``edit -> beliefs [B, d, K]`` (e.g. :func:`latent_beliefs` with an
        ``add_vector(delta)`` hook at the chosen hook point), mapped over the edits.
      edits: a pytree whose leaves have leading axes ``[d, n_edits]`` (edits per latent),
        e.g. the ``[d, K, D]`` deltas of :func:`steering_deltas`.
      baseline: ``[B, d, K]`` beliefs without an edit.

    Returns:
      ``[d, d]`` effects (diagonal: the edited latent's own shift).
    """
    leaves = jax.tree.leaves(edits)
    d, n = leaves[0].shape[:2]
    flat = jax.tree.map(lambda a: a.reshape(d * n, *a.shape[2:]), edits)
    beliefs = jax.lax.map(beliefs_fn, flat)  # [d n, B, d, K]
    shift = belief_shift(beliefs, baseline[None])  # [d n, B, d]
    return shift.mean(1).reshape(d, n, -1).mean(1)


def score_effects(effects, adj) -> dict:
    """Scores an effect matrix against the true graph.

    Args:
      effects: ``[d, d]`` intervention effects ``E[i, j]`` (edit ``i``, effect on ``j``).
      adj: ``[d, d]`` true DAG (``adj[i, j] = 1`` for ``i -> j``).

    Returns:
      ``auroc_descendants`` / ``shd_descendants``: the off-diagonal effects against the
      descendant relation (transitive closure; SHD with the edge count matched);
      ``auroc_graph`` / ``shd_graph``: the same against the direct edges;
      ``effect_on_descendants`` / ``effect_on_others``: mean effect on descendant and on
      non-descendant pairs; ``own_effect``: mean diagonal.
    """
    e = np.asarray(effects, np.float64)
    adj = np.asarray(adj) != 0
    desc = np.asarray(transitive_closure(adj)) & ~np.eye(len(adj), dtype=bool)
    off = ~np.eye(len(adj), dtype=bool)
    e_off = np.where(off, e, 0.0)
    out = {
        "auroc_descendants": edge_auroc(desc, e_off),
        "shd_descendants": int(shd(desc, e_off, match_edge_count=True)),
        "auroc_graph": edge_auroc(adj, e_off),
        "shd_graph": int(shd(adj, e_off, match_edge_count=True)),
        "effect_on_descendants": float(e[desc].mean()) if desc.any() else float("nan"),
        "effect_on_others": float(e[off & ~desc].mean()) if (off & ~desc).any()
        else float("nan"),
        "own_effect": float(np.diag(e).mean()),
    }
    return out
