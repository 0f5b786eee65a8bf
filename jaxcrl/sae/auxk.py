"""The AuxK dead-latent loss (Gao et al. 2024), computed over the dead latents only.

AuxK reconstructs the main loss's residual ``e = x − x̂`` ``[B, d_in]`` from the ``aux_k``
largest positive pre-activations among *dead* latents (no decoder bias), scaled by
``min(n_dead / aux_k, 1)``::

    loss = min(n_dead / aux_k, 1) · mean_b ‖ê_b − e_b‖²,   ê = TopK_aux_k(relu(pre) ∘ dead) W_dec

Computed literally (:func:`jaxcrl.sae.training.auxk_loss`) it costs a top-``aux_k``
selection over all ``d_sae`` columns and the backward of a ``[B, d_sae] @ [d_sae, d_in]``
decode — four dense matmuls of the main step's size — however few latents are dead.
Only dead columns can be selected, so :func:`loss` gathers them first (SAELens does the
same with boolean indexing, a dynamic shape): the dead latents' indices go into a buffer
of static size ``cap`` (``jnp.nonzero(dead, size=cap)``), their pre-activations are
recomputed from the gathered encoder columns (``[B, d_in] @ [d_in, cap]``, the gradient
flows into those columns, ``b_enc`` and ``b_dec`` exactly as through the dense ``pre``),
the top-``aux_k`` is taken over ``cap`` columns, and the decode uses the gathered decoder
rows. Every matmul shrinks by ``d_sae / cap``.

``cap`` must be static, ``n_dead`` is not: :func:`caps` gives two budgets
(``d_sae / 16``, ``d_sae / 4``) and :func:`bucket` the smallest that holds ``n_dead``; a
``lax.switch`` runs only that branch, and when more than a quarter of the latents are dead
the uncompacted loss runs (the dense one, or the sparse path's
:func:`jaxcrl.sae.sparse.auxk_loss`). In a vmapped sweep the bucket is chosen once for all
runs (from the largest ``n_dead``, :func:`jaxcrl.sae.training.make_step`), so the switch
stays a branch instead of becoming a select over every budget.

Equality with the literal loss: the same latents are selected (the dead ones hold the
same pre-activations; the recomputed matmul differs only by float reassociation) and the
same value and gradients result within float32 tolerance (``tests/test_sae_auxk.py``).

When compaction applies (measured with ``experiments/bench/sae_speed_phases.py
--dead-every N`` at d_in 768, d_sae 24,576, B 4096, aux_k 384, one run each on the shared
2-core CPU; whole training steps, AuxK idle 1.6-2.7 s):

============  ======================  ==========================================
dead          over the dead columns   all columns, sparse / dense AuxK kernels
============  ======================  ==========================================
5% (1/20)     2.1 s (budget d/16)     4.8 / 5.8 s
20% (1/5)     3.5 s (budget d/4)      5.1 / 6.6 s
50% (1/2)     7.7 s (budget d/2)      6.7 / 6.0 s
============  ======================  ==========================================

so there is no ``d/2`` budget. Only from ``d_sae >= COMPACT_MIN_D_SAE``: below that the
extra branches only add compile time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcrl.sae import model as sae_model
from jaxcrl.sae import sparse
from jaxcrl.sae.config import SAEConfig

Params = dict[str, jax.Array]

#: Dead-column budgets as fractions of ``d_sae`` (denominators), smallest first.
COMPACT_FRACTIONS = (16, 4)
#: Compaction only for dictionaries at least this wide.
COMPACT_MIN_D_SAE = 4096


def caps(cfg: SAEConfig) -> tuple[int, ...]:
    """Static dead-column budgets, ascending; the last is ``d_sae`` (no compaction)."""
    if cfg.d_sae < COMPACT_MIN_D_SAE:
        return (cfg.d_sae,)
    small = sorted({cfg.d_sae // f for f in COMPACT_FRACTIONS if cfg.d_sae // f >= 1})
    return (*[c for c in small if c < cfg.d_sae], cfg.d_sae)


def bucket(n_dead: jax.Array, cfg: SAEConfig) -> jax.Array:
    """Index into :func:`caps` of the smallest budget holding ``n_dead`` (int32 scalar)."""
    budgets = jnp.asarray(caps(cfg)[:-1], jnp.int32)
    return jnp.sum(n_dead > budgets).astype(jnp.int32)


def dense_loss(params: Params, pre: jax.Array, residual: jax.Array, dead: jax.Array,
               aux_k: int, cfg: SAEConfig | None = None) -> jax.Array:
    """The literal AuxK loss over all ``d_sae`` columns (see the module docstring).

    ``pre`` ``[B, d_sae]`` pre-activations (the gradient flows through them);
    ``residual`` ``[B, d_in]`` (stop-gradient); ``dead`` ``[d_sae]`` bool; ``aux_k`` static.
    """
    n_dead = dead.sum()
    acts = jnp.where(dead, jax.nn.relu(pre), 0.0)
    z_aux = jnp.where(sae_model.topk_mask(acts, aux_k), acts, 0.0)
    e_hat = sae_model.matmul(z_aux, params["W_dec"], cfg)
    scale = jnp.minimum(n_dead / aux_k, 1.0)
    return scale * jnp.mean(jnp.sum((e_hat - residual) ** 2, -1))


def _compact_loss(params: Params, x: jax.Array, residual: jax.Array, dead: jax.Array,
                  *, cap: int, aux_k: int, cfg: SAEConfig) -> jax.Array:
    """AuxK over the first ``cap`` dead latents (all of them when ``n_dead <= cap``)."""
    n_dead = dead.sum()
    idx = jnp.nonzero(dead, size=cap, fill_value=0)[0]  # [cap]
    valid = jnp.arange(cap) < n_dead
    xin = x - params["b_dec"] if cfg.apply_b_dec_to_input else x
    pre = sae_model.matmul(xin, params["W_enc"][:, idx], cfg) + params["b_enc"][idx]
    acts = jnp.where(valid, jax.nn.relu(pre), 0.0)  # [B, cap]
    if cap > aux_k:
        acts = jnp.where(sae_model.topk_mask(acts, aux_k), acts, 0.0)
    e_hat = sae_model.matmul(acts, params["W_dec"][idx], cfg)
    scale = jnp.minimum(n_dead / aux_k, 1.0)
    return scale * jnp.mean(jnp.sum((e_hat - residual) ** 2, -1))


def loss(params: Params, x: jax.Array, pre: jax.Array, residual: jax.Array,
         dead: jax.Array, cfg: SAEConfig, *, sparse_path: bool,
         bucket_index: jax.Array | None = None) -> jax.Array:
    """AuxK loss of one SAE, over the dead columns only (see the module docstring).

    Args:
      params: SAE params; ``x`` ``[B, d_in]`` normalised inputs; ``pre`` ``[B, d_sae]``
        the forward's pre-activations (used by the uncompacted branch); ``residual``
        ``[B, d_in]`` stop-gradient ``x − x̂``; ``dead`` ``[d_sae]`` bool.
      sparse_path: the uncompacted branch uses :func:`jaxcrl.sae.sparse.auxk_loss`
        (the step runs the sparse path) instead of :func:`dense_loss`.
      bucket_index: the budget to use (unbatched, e.g. shared by a vmapped sweep);
        default :func:`bucket` of this SAE's ``n_dead``. A budget smaller than ``n_dead``
        would drop dead latents, so callers pass one that holds every run's ``n_dead``.
    """
    aux_k = cfg.effective_aux_k

    def full(p, x, pre, residual, dead):
        if sparse_path:
            return sparse.auxk_loss(p, x, pre, residual, dead, aux_k, cfg)
        return dense_loss(p, pre, residual, dead, aux_k, cfg)

    budgets = caps(cfg)
    if len(budgets) == 1:
        return full(params, x, pre, residual, dead)
    branches = [
        (lambda p, x, pre, r, d, c=c: _compact_loss(p, x, r, d, cap=c, aux_k=aux_k, cfg=cfg))
        for c in budgets[:-1]] + [full]
    index = bucket(dead.sum(), cfg) if bucket_index is None else bucket_index
    return lax.switch(index, branches, params, x, pre, residual, dead)


__all__ = ["COMPACT_FRACTIONS", "COMPACT_MIN_D_SAE", "bucket", "caps", "dense_loss", "loss"]
