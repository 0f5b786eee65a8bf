"""Sparse TopK / BatchTopK / JumpReLU SAE step: decode and differentiate the active latents.

With ``k`` of ``d_sae`` latents active per example, the dense step runs five
``B x d_in x d_sae`` matmuls (encoder forward, decoder forward, decoder-weight gradient,
latent gradient, encoder-weight gradient). Only the encoder forward needs every latent (to
select the active ones); everything else touches ``k`` rows per example. This module keeps
that one dense matmul and does the rest over the active set:

1. ``pre = (x − b_dec) W_enc + b_enc`` densely, for the selection (no gradient flows
   through the selection; the main loss never differentiates this matmul);
2. select ``idx`` ``[B, K]`` with ``lax.top_k`` at a static ``K`` (``cfg.k``, the largest
   ``k`` of a sweep) and mask slots beyond the traced ``k`` (so ``k`` can differ across
   vmapped runs);
3. :func:`encode_rows`: the selected pre-activations, whose VJP scatter-adds into ``W_enc``
   and ``b_enc`` (and ``b_dec``) without ever forming a ``[B, d_sae]`` gradient;
4. :func:`decode_rows`: ``x̂_b = Σ_j v_bj W_dec[idx_bj] + b_dec``, whose VJP gathers
   ``⟨g_b, W_dec[idx_bj]⟩`` and scatter-adds ``v_bj g_b`` into the decoder rows.

The AuxK loss (Gao et al. 2024) uses the same two functions on the ``aux_k`` largest
pre-activations of dead latents.

Kernels per backend (measured, see BENCHMARKS.md "Training speed"): on CPU a
``lax.fori_loop`` over examples (unrolled 8x), each iteration gathering the ``K`` rows of
one example (``[K, d_in]``, contiguous) into a matvec or an outer-product scatter-add: it
never materialises ``[B, K, d_in]``. On this 2-core CPU (B 4096, d_in 512, d_sae 4096,
k 32) each such kernel takes ~30-40 ms against ~430-670 ms for one dense matmul under the
same load, while the materialising forms (``einsum('bk,bkd->bd', v, W[idx])``, one
``.at[idx].add`` of ``[B·K, d_in]`` updates, sorting by latent then ``segment_sum``) took
430-730 ms: XLA:CPU's gather/scatter of a large operand and its batched small matmuls are
slow. On accelerators the gather form (one ``W[idx]`` gather and a batched contraction)
is used instead: a per-example loop would launch thousands of tiny kernels there.

Selection (measured on the same CPU, [4096, 4096], k 32): ``lax.top_k`` ~150 ms, the
31-pass bitwise search of :func:`jaxcrl.sae.model.kth_largest_nonneg` ~300-500 ms,
``lax.approx_max_k`` ~190 ms (no gain on CPU; on TPU it is the fast one, see
:func:`select_topk`). XLA:CPU runs ``lax.top_k`` single-threaded, one partial sort per
row; a two-stage exact top-k (top-k' of groups of 768, then top-k of the candidates, with a
``lax.cond`` fallback) was slower on this CPU (0.94 vs 0.68 s at [4096, 24,576], k 32;
2.7 vs 1.5 s at k 384), so it is not used.

Sweeps: the loop kernels are :func:`jax.custom_batching.sequential_vmap` functions, so a
vmapped sweep runs them once per run (batched, their row gathers and scatter-adds were
several times slower); the rest of the step stays batched.

Which architectures: those whose registry object overrides
:meth:`~jaxcrl.sae.architectures.Architecture.sparse_select` (``topk``: :func:`select_topk`;
``batchtopk``: :func:`select_batch_topk`; ``jumprelu``: :func:`select_above`, the active
latents and those within half the bandwidth below their threshold, whose straight-through
gradient is non-zero, in ``JUMPRELU_ROW_CAP · k`` slots with a dense fallback); ``relu``
has no bound on the active set and stays dense. Nothing here compares architecture names.

Rule (``SAEConfig.decoder == "auto"``): sparse when ``d_sae >= SPARSE_MIN_RATIO · k``,
dense below (see :func:`use_sparse` and BENCHMARKS.md "Training speed").

Equality with the dense path: the forward values are identical (the selected values are
read from the same dense pre-activations), the gradients differ only by float
reassociation (``tests/test_sae_sparse.py``: same active sets, same parameters after
several Adam steps within float32 tolerance). One difference: with exact ties at the
k-th value the dense path keeps every tied entry, ``lax.top_k`` keeps exactly ``k``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import custom_batching, lax

from jaxcrl.sae import model as sae_model
from jaxcrl.sae.config import SAEConfig

Params = dict[str, jax.Array]

#: Sparse when ``d_sae >= SPARSE_MIN_RATIO * k`` (``decoder="auto"``). Each sparse kernel
#: costs about ``8 K / d_sae`` of a dense matmul on CPU (loop kernels, measured), and the
#: sparse step replaces 4 dense matmuls by ~5 kernels, so it wins from about 10x.
SPARSE_MIN_RATIO = 16

#: AuxK (``aux_k`` = d_in / 2 by default) takes the sparse kernels only when
#: ``d_sae >= AUX_SPARSE_MIN_RATIO * aux_k``. Measured on the loaded 2-core CPU (B 4096, half
#: the latents dead, whole steps with AuxK in one process, as
#: ``experiments/bench/sae_speed_phases.py`` times them): d_sae/aux_k = 16 (512 x 4096):
#: sparse 4.0 s vs dense 3.8 s; 64 (768 x 24,576): sparse 20.7 s vs dense 29.1 s. The
#: threshold sits between the two.
AUX_SPARSE_MIN_RATIO = 32

#: BatchTopK: each row keeps at most ``BATCHTOPK_ROW_CAP · k`` candidates; a batch where a
#: row would need more falls back to the dense path for that step (exact either way).
BATCHTOPK_ROW_CAP = 4

#: JumpReLU: each row has ``JUMPRELU_ROW_CAP · k`` slots (``k`` read as the expected L0) for
#: its active and near-threshold latents; a batch with a row over that takes the dense path.
#: Rows are over-dispersed: at the benchmark's start (768 x 24,576, mean L0 32) the largest
#: of 4096 rows had 99 candidates, 17 rows more than 64, none more than 128.
JUMPRELU_ROW_CAP = 4

_UNROLL = 8
_SORTED_SCATTER_MIN = 8 * 2**20  # elements of the scattered-into array
_SCATTER_BLOCK = 128


# --------------------------------------------------------------------------- the rule


def use_sparse(cfg: SAEConfig) -> bool:
    """Whether training ``cfg`` takes the sparse path (a static decision).

    ``decoder="dense"``: never; ``"sparse"``: whenever the architecture has a sparse
    selection (:attr:`~jaxcrl.sae.architectures.Architecture.has_sparse_path`: TopK,
    BatchTopK; BatchTopK at inference keeps its dense fixed-threshold path); ``"auto"``: as
    ``"sparse"`` when ``d_sae >= SPARSE_MIN_RATIO · k``. Nested (Matryoshka) dictionaries
    stay dense: their prefix losses decode from ``z``, which carries no gradient here.
    """
    if cfg.decoder == "dense" or not cfg.arch.has_sparse_path or cfg.prefix_widths:
        return False
    ratio = cfg.arch.sparse_min_ratio or SPARSE_MIN_RATIO
    return cfg.decoder == "sparse" or cfg.d_sae >= ratio * cfg.arch.sparse_slots(cfg)


def _loops() -> bool:
    return jax.default_backend() == "cpu"


# --------------------------------------------------------------------------- kernels


def _combine(v: jax.Array, w: jax.Array, idx: jax.Array) -> jax.Array:
    """``out[b] = Σ_j v[b, j] w[idx[b, j]]``: ``[B, K], [n, d], [B, K] -> [B, d]``."""
    if not _loops():
        return jnp.einsum("bk,bkd->bd", v, w[idx])
    return _per_run(_combine_loop)(v, w, idx)


def _combine_loop(v, w, idx):
    body = lambda b, out: out.at[b].set(v[b] @ w[idx[b]])
    return lax.fori_loop(0, v.shape[0], body, jnp.zeros((v.shape[0], w.shape[1]), w.dtype),
                         unroll=_UNROLL)


def _rowdot(y: jax.Array, w: jax.Array, idx: jax.Array) -> jax.Array:
    """``out[b, j] = ⟨y[b], w[idx[b, j]]⟩``: ``[B, d], [n, d], [B, K] -> [B, K]``."""
    if not _loops():
        return jnp.einsum("bd,bkd->bk", y, w[idx])
    return _per_run(_rowdot_loop)(y, w, idx)


def _rowdot_loop(y, w, idx):
    body = lambda b, out: out.at[b].set(w[idx[b]] @ y[b])
    return lax.fori_loop(0, y.shape[0], body, jnp.zeros(idx.shape, w.dtype), unroll=_UNROLL)


def _scatter(v: jax.Array, y: jax.Array, idx: jax.Array, n: int) -> jax.Array:
    """``out[i] = Σ_{b,j: idx[b,j]=i} v[b, j] y[b]``: ``[B, K], [B, d], [B, K] -> [n, d]``.

    CPU: per example (``K`` rows added into ``out``) while ``out`` is small; for a large
    ``out`` (``n·d >= _SORTED_SCATTER_MIN``) the ``B·K`` pairs are first sorted by latent
    and added in blocks of ``_SCATTER_BLOCK``, so the writes walk ``out`` in order
    (measured: 308 -> 156 ms at d_sae 24,576, d_in 768, k 32; but 29 -> 120+ ms at
    d_sae 4096, d_in 512, where ``out`` stays in cache and the sort is the cost).
    """
    if not _loops():
        upd = (v[..., None] * y[:, None, :]).reshape(-1, y.shape[1])
        return jnp.zeros((n, y.shape[1]), y.dtype).at[idx.reshape(-1)].add(upd)
    return _per_run(lambda v, y, idx: _scatter_loop(v, y, idx, n))(v, y, idx)


def _scatter_loop(v, y, idx, n):
    out = jnp.zeros((n, y.shape[1]), y.dtype)
    if n * y.shape[1] < _SORTED_SCATTER_MIN or idx.size % _SCATTER_BLOCK:
        body = lambda b, acc: acc.at[idx[b]].add(v[b][:, None] * y[b][None, :])
        return lax.fori_loop(0, y.shape[0], body, out, unroll=_UNROLL)
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=False)
    lat = flat[order].reshape(-1, _SCATTER_BLOCK)
    rows = (order // idx.shape[1]).reshape(-1, _SCATTER_BLOCK)
    w = v.reshape(-1)[order].reshape(-1, _SCATTER_BLOCK)
    body = lambda t, acc: acc.at[lat[t]].add(w[t][:, None] * y[rows[t]])
    return lax.fori_loop(0, lat.shape[0], body, out, unroll=4)


def _per_run(kernel):
    """``kernel`` that, under ``vmap`` (the runs of a sweep), runs once per run in a loop.

    Batching the per-example loop kernels turns their row gathers and scatter-adds into
    batched ones, which XLA:CPU runs several times slower than the runs one after another
    (a vmapped 4-SAE sweep was 0.63x of sequential before this); everything else in the
    step (the encoder matmul, selection, Adam) stays batched.
    """
    return custom_batching.sequential_vmap(kernel)


# --------------------------------------------------------------------------- differentiable pieces


@jax.custom_vjp
def decode_rows(v: jax.Array, w_dec: jax.Array, idx: jax.Array) -> jax.Array:
    """``Σ_j v[b, j] W_dec[idx[b, j]]`` (no bias): ``[B, K], [d_sae, d_in], [B, K] -> [B, d_in]``.

    The VJP never forms ``[B, d_sae]``: ``dv = ⟨g_b, W_dec[idx_bj]⟩`` (gather) and
    ``dW_dec[idx_bj] += v_bj g_b`` (scatter-add).
    """
    return _combine(v, w_dec, idx)


def _decode_fwd(v, w_dec, idx):
    return _combine(v, w_dec, idx), (v, w_dec, idx)


def _decode_bwd(res, g):
    v, w_dec, idx = res
    g = g.astype(w_dec.dtype)
    return (_rowdot(g, w_dec, idx).astype(v.dtype), _scatter(v, g, idx, w_dec.shape[0]),
            None)


decode_rows.defvjp(_decode_fwd, _decode_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def encode_rows(pre_sel: jax.Array, x: jax.Array, w_enc: jax.Array, b_enc: jax.Array,
                b_dec: jax.Array, idx: jax.Array, apply_b_dec: bool) -> jax.Array:
    """Selected pre-activations ``[B, K]`` with their gradient wrt the encoder params.

    Args:
      pre_sel: ``[B, K]`` the values, which must equal
        ``take_along_axis(pre_activations(params, x), idx, 1)`` (read from the dense
        pre-activations computed for the selection; no gradient flows into it).
      x: ``[B, d_in]`` inputs (normalised); ``w_enc`` ``[d_in, d_sae]``, ``b_enc``
        ``[d_sae]``, ``b_dec`` ``[d_in]``; ``idx`` ``[B, K]`` int latent indices.
      apply_b_dec: ``pre = (x − b_dec) W_enc + b_enc`` (else ``x W_enc + b_enc``).

    The VJP for cotangent ``g`` ``[B, K]``: ``dW_enc[:, idx_bj] += g_bj x̃_b`` (scatter-add,
    ``x̃ = x − b_dec``), ``db_enc = segment_sum(g)``, ``db_dec = −W_enc db_enc`` (the sum
    over the batch of ``−dx̃``, without forming it), ``dx`` by a gather (dropped by XLA when
    unused).
    """
    del x, w_enc, b_enc, b_dec, idx, apply_b_dec
    return pre_sel


def _encode_fwd(pre_sel, x, w_enc, b_enc, b_dec, idx, apply_b_dec):
    return pre_sel, (x, w_enc, b_enc, b_dec, idx)


def _encode_bwd(apply_b_dec, res, g):
    x, w_enc, b_enc, b_dec, idx = res
    g = g.astype(jnp.float32)
    xc = x - b_dec if apply_b_dec else x
    d_sae = w_enc.shape[1]
    dw_enc = _scatter(g, xc, idx, d_sae).T
    db_enc = jnp.zeros((d_sae,), jnp.float32).at[idx.reshape(-1)].add(g.reshape(-1))
    db_dec = -(w_enc @ db_enc) if apply_b_dec else jnp.zeros_like(b_dec)
    dx = _combine(g, w_enc.T, idx)
    return None, dx, dw_enc, db_enc, db_dec, None


encode_rows.defvjp(_encode_fwd, _encode_bwd)


# --------------------------------------------------------------------------- selection


class Selection(NamedTuple):
    """An active set, as :meth:`~jaxcrl.sae.architectures.Architecture.sparse_select` gives it.

    Attributes:
      values: ``[B, K]`` selected pre-activations (no gradient; read from the dense ones).
      idx: ``[B, K]`` int32 latent indices.
      keep: ``[B, K]`` bool, the slots that are active (the rest decode as 0).
      exact: True, or a traced bool scalar saying whether the ``K`` slots per row hold the
        whole active set of this batch (else the step falls back to the dense path).
    """

    values: jax.Array
    idx: jax.Array
    keep: jax.Array
    exact: Any = True


def select_topk(pre: jax.Array, k: jax.Array | int, k_max: int, *,
                recall_target: float = 1.0) -> Selection:
    """The ``k`` largest positive entries of each row of ``pre`` ``[B, n]`` (TopK).

    Args:
      pre: ``[B, n]`` scores (no gradient is taken through the selection).
      k: active entries per row (``<= k_max``; may be traced and differ across vmapped runs).
      k_max: static number of slots.
      recall_target: 1.0 is exact (``lax.top_k``); below 1 uses ``lax.approx_max_k``
        (the fast one on TPU; not exact, so results then differ from the dense path).

    Returns:
      :class:`Selection` sorted in descending order; ``keep`` marks slots ``< k`` holding a
      positive value.
    """
    if not isinstance(k, jax.core.Tracer) and int(k) > k_max:
        raise ValueError(f"k={int(k)} exceeds k_max={k_max} (cfg.k bounds the traced k)")
    pre = lax.stop_gradient(pre)
    if recall_target < 1.0:
        vals, idx = lax.approx_max_k(pre, k_max, recall_target=recall_target)
    else:
        vals, idx = lax.top_k(pre, k_max)
    keep = (jnp.arange(k_max) < jnp.asarray(k)) & (vals > 0)
    return Selection(vals, idx.astype(jnp.int32), keep)


def select_batch_topk(pre: jax.Array, k: jax.Array | int, k_max: int) -> Selection:
    """The ``k·B`` largest positive entries of the batch ``pre`` ``[B, n]`` (BatchTopK).

    Each row keeps at most ``BATCHTOPK_ROW_CAP · k_max`` candidates (its largest); the
    selection is exact iff no row's first unselected candidate reaches the batch threshold,
    which ``exact`` reports (traced) so the step can fall back to the dense path.
    """
    B, n = pre.shape
    cap = min(n, BATCHTOPK_ROW_CAP * k_max)
    vals, idx = lax.top_k(lax.stop_gradient(pre), cap)
    r = jax.nn.relu(vals)
    thr = sae_model.kth_largest_nonneg(r.reshape(1, -1), jnp.asarray(k) * B)[0]
    keep = (r >= thr) & (r > 0)
    exact = True if cap == n else jnp.all((vals[:, -1] < thr) | (vals[:, -1] <= 0))
    return Selection(vals, idx.astype(jnp.int32), keep, exact)


def select_above(pre: jax.Array, floor: jax.Array, cap: int) -> Selection:
    """Every entry of ``relu(pre)`` ``[B, n]`` above ``floor`` ``[n]`` (JumpReLU's set).

    ``cap`` static slots per row; ``exact`` (traced) is False when some row has more
    candidates than slots, and the step then takes the dense path. The count is checked
    first and the ``lax.top_k`` that fills the slots runs only when they suffice (a
    ``lax.cond``), so a step that falls back pays little for the attempt. Slots beyond a
    row's candidates have ``keep`` False. Order within a row: largest value first.
    """
    B, n = pre.shape
    cap = min(n, cap)
    pre = lax.stop_gradient(pre)
    acts = jax.nn.relu(pre)
    cand = acts > floor
    fill = lambda: tuple(lax.top_k(jnp.where(cand, acts, -1.0), cap))
    if cap == n:
        exact = True
        score, idx = fill()
    else:
        exact = jnp.all(cand.sum(-1) <= cap)
        empty = lambda: (jnp.full((B, cap), -1.0, acts.dtype), jnp.zeros((B, cap), jnp.int32))
        score, idx = lax.cond(exact, fill, empty)
    keep = score >= 0
    vals = jnp.take_along_axis(pre, idx, axis=1)
    return Selection(vals, idx.astype(jnp.int32), keep, exact)


def _dense_z(values: jax.Array, idx: jax.Array, d_sae: int) -> jax.Array:
    """``[B, d_sae]`` latents (no gradient) from the sparse ``values``/``idx`` ``[B, K]``."""
    rows = jnp.arange(idx.shape[0])[:, None]
    return jnp.zeros((idx.shape[0], d_sae), values.dtype).at[rows, idx].add(
        lax.stop_gradient(values))


# --------------------------------------------------------------------------- forward


def forward(params: Params, x: jax.Array, cfg: SAEConfig, *, k: Any = None,
            inference: bool = False, selection: Selection | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sparse-path :func:`jaxcrl.sae.model.forward` (same values).

    Returns ``(x_hat [B, d_in], aux)``; ``aux`` holds ``pre`` ``[B, d_sae]`` (``x_hat``
    does not depend on it through autodiff; a loss term that uses it, like the dense AuxK,
    gets its gradient from the one dense matmul), ``z`` ``[B, d_sae]`` (no gradient; built
    only if used) and, when the selection is exact by construction, ``idx`` / ``v``
    ``[B, K]`` (``v`` carries the gradient). An architecture without a sparse selection
    for this call (``sparse_select`` gives None) takes the dense path on the same ``pre``.

    ``selection``: the active set, already chosen (on the same params and ``x``) and known
    to be exact, e.g. by :func:`checked_selection` in a training step that has branched on
    its ``exact``. Without it, a selection that may not be exact (BatchTopK, JumpReLU)
    branches here, by a ``lax.cond`` between the sparse and the dense path; under
    differentiation that cond is costly on CPU (its linearization carries both branches'
    residuals), so training branches outside the gradient instead.
    """
    k = cfg.k if k is None else k
    pre = sae_model.pre_activations(params, x, cfg)
    if selection is not None:
        sel = selection._replace(exact=True)
    else:
        sel = cfg.arch.sparse_select(params, pre, cfg, k=k, inference=inference)
    if sel is None:
        z = sae_model.activate(params, pre, cfg, k=k, inference=inference)
        return sae_model.decode(params, z, cfg), {"pre": pre, "z": z}

    def sparse_branch(p):
        v = _values(p, x, cfg, sel.values, sel.idx, sel.keep, activate=True)
        return decode_rows(v, p["W_dec"], sel.idx) + p["b_dec"], v

    if sel.exact is True:
        x_hat, v = sparse_branch(params)
        return x_hat, {"pre": pre, "z": _dense_z(v, sel.idx, cfg.d_sae), "idx": sel.idx,
                       "v": v}

    def dense_branch(p):
        z = sae_model.activate(p, sae_model.pre_activations(p, x, cfg), cfg, k=k,
                               inference=inference)
        return sae_model.decode(p, z, cfg), lax.stop_gradient(z)

    def sparse_z(p):
        x_hat, v = sparse_branch(p)
        return x_hat, _dense_z(v, sel.idx, cfg.d_sae)

    x_hat, z = lax.cond(sel.exact, sparse_z, dense_branch, params)
    return x_hat, {"pre": pre, "z": z}


def checked_selection(params: Params, x: jax.Array, cfg: SAEConfig, k: Any
                      ) -> Selection | None:
    """The training selection of ``cfg`` on ``x`` when it may not be exact, else None.

    None when ``cfg`` trains densely or its selection is exact by construction (TopK):
    then the pre-activations and selection computed here are unused and XLA drops them.
    Otherwise the :class:`Selection` (from stop-gradient pre-activations), whose traced
    ``exact`` the caller branches on *outside* the gradient computation, passing the
    selection to :func:`forward` in the sparse branch.
    """
    if not use_sparse(cfg):
        return None
    pre = lax.stop_gradient(sae_model.pre_activations(params, x, cfg))
    sel = cfg.arch.sparse_select(params, pre, cfg, k=k, inference=False)
    return None if sel is None or sel.exact is True else sel


def _values(params, x, cfg, vals, idx, keep, *, activate=False):
    """``[B, K]`` values of the kept slots (gradient to the encoder); ``activate``: through
    the architecture's :meth:`~jaxcrl.sae.architectures.Architecture.sparse_activate`."""
    sel = encode_rows(vals.astype(jnp.float32), x, params["W_enc"], params["b_enc"],
                      params["b_dec"], idx, cfg.apply_b_dec_to_input)
    if activate:
        sel = cfg.arch.sparse_activate(params, sel, idx, cfg)
    return jnp.where(keep, sel, 0.0)


# --------------------------------------------------------------------------- AuxK


def auxk_loss(params: Params, x: jax.Array, pre: jax.Array, residual: jax.Array,
              dead: jax.Array, aux_k: int, cfg: SAEConfig) -> jax.Array:
    """:func:`jaxcrl.sae.training.auxk_loss` for the sparse path (same value, same gradients).

    Args:
      params: SAE params; ``x`` ``[B, d_in]`` normalised inputs; ``pre`` ``[B, d_sae]``
        pre-activations (the forward's ``aux["pre"]``; the dense branch differentiates
        through it, the sparse branch only selects with it); ``residual`` ``[B, d_in]`` the
        stop-gradient ``x − x̂``; ``dead`` ``[d_sae]`` bool; ``aux_k`` static.

    Returns ``min(n_dead / aux_k, 1) · mean_b ‖ê − e‖²`` where ``ê`` decodes (no bias) the
    ``aux_k`` largest positive pre-activations among dead latents.

    ``aux_k`` is large (``d_in / 2``), so the sparse kernels move ``B · aux_k · d_in``
    scattered values four times (gather-decode, row dots, two scatter-adds); that beats
    the four dense matmuls of the dense form only for wide SAEs
    (``d_sae >= AUX_SPARSE_MIN_RATIO · aux_k``, measured). Below that the loss is computed
    densely, with the gradient through ``pre`` (one dense matmul for ``dW_enc``, three for
    the decoder, as in the dense path).
    """
    if cfg.d_sae < AUX_SPARSE_MIN_RATIO * aux_k:
        acts = jnp.where(dead, jax.nn.relu(pre), 0.0)
        z_aux = jnp.where(sae_model.topk_mask(acts, aux_k), acts, 0.0)
        e_hat = sae_model.matmul(z_aux, params["W_dec"], cfg)
    else:
        acts = jnp.where(dead, jax.nn.relu(lax.stop_gradient(pre)), 0.0)
        vals, idx, keep, _ = select_topk(acts, aux_k, aux_k)
        v = _values(params, x, cfg, vals, idx, keep)
        e_hat = decode_rows(v, params["W_dec"], idx)
    scale = jnp.minimum(dead.sum() / aux_k, 1.0)
    return scale * jnp.mean(jnp.sum((e_hat - residual) ** 2, -1))


# --------------------------------------------------------------------------- statistics


def latent_stats(aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Firing statistics from a forward's ``aux`` (sparse or dense), without gradients.

    Returns ``fired`` ``[d_sae]`` bool (fired on some example), ``l0`` (mean active per
    example) and ``smallest`` (smallest positive latent value; ``inf`` if none).
    """
    if "idx" in aux:
        v, idx = lax.stop_gradient(aux["v"]), aux["idx"]
        d_sae = aux["pre"].shape[-1]
        on = v > 0
        fired = jnp.zeros((d_sae,), bool).at[idx.reshape(-1)].max(on.reshape(-1))
        smallest = jnp.min(jnp.where(on, v, jnp.inf))
        return {"fired": fired, "l0": on.sum(-1).mean(), "smallest": smallest}
    z = lax.stop_gradient(aux["z"])
    on = z > 0
    return {"fired": on.any(0), "l0": on.sum(-1).mean(),
            "smallest": jnp.min(jnp.where(on, z, jnp.inf))}
