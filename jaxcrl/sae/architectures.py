"""SAE architectures: one object per architecture, in one registry.

An :class:`Architecture` says everything that differs between SAE kinds: extra parameters
and their init, the activation ``pre -> z``, the sparsity penalty, the post-update step
(projections, running estimates), the swept sparsity knob, and the SAELens name and extra
weights/config keys of the export. ``SAEConfig(architecture="topk")`` looks the string up in
:data:`ARCHITECTURES`; the rest of :mod:`jaxcrl.sae` (model, training, sweeps, export,
pipelines) asks the object and never compares architecture names. Adding an architecture is
one subclass and one :func:`register` call, in this file or in user code::

    class Relu6(ReLU):
        name = "relu6"
        saelens_exact = False
        def activate(self, params, pre, cfg, *, k, inference):
            return jnp.minimum(jax.nn.relu(pre), 6.0)

    register(Relu6())

The built-ins (registration order, which fixes per-architecture seeds in the pipelines):

- ``relu``:      ``z = ReLU(pre)``; penalty ``Σ_i z_i ‖W_dec[i]‖`` (Anthropic, April 2024);
  decoder rows free (initial norm ``dec_init_norm``). SAELens ``standard``.
- ``topk``:      ``z = ReLU(TopK_k(pre))`` per example (Gao et al. 2024). SAELens ``topk``.
- ``batchtopk``: keep the ``k·B`` largest of ``ReLU(pre)`` over the whole batch
  (Bussmann et al. 2024); at inference a fixed threshold (``params["threshold"]``, a
  running estimate of the smallest kept activation). Exported as SAELens ``jumprelu`` with
  the threshold broadcast to every latent (what SAELens itself saves for BatchTopK).
- ``jumprelu``:  ``z = pre · H(pre − θ)`` with a straight-through estimator for θ
  (rectangle kernel of bandwidth ε), penalty ``L0 = Σ_i H(pre_i − θ_i)`` (Rajamanoharan
  et al. 2024, Gemma Scope). SAELens ``jumprelu``.
- ``matryoshka_batchtopk``: BatchTopK whose nested prefixes ``z[:, :w]`` each reconstruct
  (Bussmann et al. 2025); exported as SAELens ``jumprelu`` like BatchTopK.

Any architecture can add the decoder-orthogonality penalty (``SAEConfig.ortho_coefficient``,
:mod:`jaxcrl.sae.penalties`).

TopK selection (dense path): the exact k-th largest value of each row
(:func:`kth_largest_nonneg`: ``lax.top_k`` under a static bound ``k_max``, a bitwise search
otherwise) is a per-row threshold; ``k`` can be traced (different across vmapped runs of a
sweep). Architectures whose active set is bounded also offer :meth:`Architecture.sparse_select`
(the active indices and values): training then decodes and differentiates only those
latents (:mod:`jaxcrl.sae.sparse`, chosen by ``SAEConfig.decoder``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

if TYPE_CHECKING:
    from jaxcrl.sae.config import SAEConfig

Params = dict[str, jax.Array]

__all__ = ["ARCHITECTURES", "Architecture", "BatchTopK", "JumpReLU", "MatryoshkaBatchTopK",
           "ReLU", "TopK", "batch_topk_mask", "from_saelens", "get", "heaviside_step", "jumprelu",
           "kth_largest_nonneg", "register", "topk_mask"]


# --------------------------------------------------------------------------- JumpReLU STE


def _rect(u: jax.Array) -> jax.Array:
    """Rectangle kernel ``K(u) = 1{|u| < 1/2}``."""
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jumprelu(x: jax.Array, threshold: jax.Array, bandwidth: jax.Array) -> jax.Array:
    """``x · H(x − θ)``; the pseudo-derivative wrt θ is ``−(θ/ε) K((x − θ)/ε)``."""
    return x * (x > threshold).astype(x.dtype)


def _jumprelu_fwd(x, threshold, bandwidth):
    return jumprelu(x, threshold, bandwidth), (x, threshold, bandwidth)


def _jumprelu_bwd(res, g):
    x, threshold, bandwidth = res
    gx = g * (x > threshold).astype(x.dtype)
    gt = g * -(threshold / bandwidth) * _rect((x - threshold) / bandwidth)
    gt = _sum_to(gt, jnp.shape(threshold))
    return gx, gt, jnp.zeros_like(bandwidth)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def heaviside_step(x: jax.Array, threshold: jax.Array, bandwidth: jax.Array) -> jax.Array:
    """``H(x − θ)``; pseudo-derivative wrt θ ``−(1/ε) K((x − θ)/ε)``, zero wrt ``x``."""
    return (x > threshold).astype(x.dtype)


def _step_fwd(x, threshold, bandwidth):
    return heaviside_step(x, threshold, bandwidth), (x, threshold, bandwidth)


def _step_bwd(res, g):
    x, threshold, bandwidth = res
    gt = g * -(1.0 / bandwidth) * _rect((x - threshold) / bandwidth)
    return jnp.zeros_like(x), _sum_to(gt, jnp.shape(threshold)), jnp.zeros_like(bandwidth)


heaviside_step.defvjp(_step_fwd, _step_bwd)


def _sum_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a broadcast cotangent back to ``shape`` (leading axes, then size-1 axes)."""
    g = g.sum(tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axes, keepdims=True) if axes else g


def kth_largest_nonneg(a: jax.Array, k: jax.Array | int, k_max: int | None = None
                       ) -> jax.Array:
    """Exact k-th largest value of each row of a non-negative ``a`` ``[rows, n]`` -> ``[rows]``.

    With a static bound ``k_max >= k`` (or a static int ``k``): ``lax.top_k(a, k_max)`` and
    the ``k``-th of its sorted values (``k`` may be traced, e.g. in a vmapped sweep; a traced
    ``k`` above ``k_max`` is clipped to it). Without one: a bitwise binary search
    (non-negative float32 values order like their int32 bit patterns, so 31 passes of
    ``count(bits >= candidate) >= k`` fix the bits from the highest down; dense
    compare-and-count only). Measured on the 2-core CPU, [4096, 4096], k 32: ``lax.top_k``
    50-185 ms, the bitwise search 300-1100 ms (the earlier claim that ``top_k`` took 2.5 s
    there did not reproduce; BENCHMARKS.md "Training speed"). Returns 0 when fewer than
    ``k`` entries are positive.

    Raises:
      ValueError: a concrete ``k`` exceeds ``k_max``.
    """
    if k_max is None and isinstance(k, int):
        k_max = k
    if k_max is not None and not isinstance(k, jax.core.Tracer) and int(k) > k_max:
        raise ValueError(f"k={int(k)} exceeds its static bound k_max={k_max}")
    if k_max is not None and k_max <= a.shape[-1]:
        vals = jax.lax.top_k(jax.lax.stop_gradient(a), k_max)[0]
        kk = jnp.clip(jnp.asarray(k, jnp.int32) - 1, 0, k_max - 1)
        return jnp.maximum(jnp.take_along_axis(vals, jnp.broadcast_to(kk, (a.shape[0], 1)),
                                               1)[:, 0], 0.0)
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(a), jnp.int32)
    k = jnp.asarray(k, jnp.int32)

    def body(i, lo):
        cand = lo | jnp.left_shift(jnp.int32(1), 30 - i)
        ok = (bits >= cand[:, None]).sum(1) >= k
        return jnp.where(ok, cand, lo)

    lo = jax.lax.fori_loop(0, 31, body, jnp.zeros(a.shape[:1], jnp.int32))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def topk_mask(acts: jax.Array, k: jax.Array | int, k_max: int | None = None) -> jax.Array:
    """Boolean ``[batch, d_sae]``: each row's ``k`` largest entries of ``acts >= 0``.

    Entries equal to 0 are never selected (so a row has fewer than ``k`` when fewer are
    positive); ``k`` may be traced (``k_max``: a static bound, see :func:`kth_largest_nonneg`).
    """
    thr = kth_largest_nonneg(acts, k, k_max)
    return (acts >= thr[:, None]) & (acts > 0)


def batch_topk_mask(acts: jax.Array, k: jax.Array | int) -> jax.Array:
    """Boolean ``[batch, d_sae]``: the ``k·batch`` largest positive entries of the batch."""
    thr = kth_largest_nonneg(acts.reshape(1, -1), jnp.asarray(k) * acts.shape[0])[0]
    return (acts >= thr) & (acts > 0)


# --------------------------------------------------------------------------- architectures


class Architecture:
    """What distinguishes one SAE architecture (subclass and :func:`register` an instance).

    Class attributes:
      name: the registry key (``SAEConfig.architecture``).
      saelens_name: ``"architecture"`` in the SAELens ``cfg.json``.
      saelens_exact: importing that SAELens name gives back this architecture (only one
        architecture per SAELens name may say so; e.g. BatchTopK exports as ``jumprelu`` but
        imports as JumpReLU).
      knob: the :class:`SAEConfig` field swept to trade sparsity against reconstruction.
      coefficient_field: the config field holding the sparsity-penalty coefficient (``None``:
        no penalty term).
      unit_norm_decoder: decoder rows are kept at unit norm (gradient projection and
        renormalisation after each update); else they start at ``dec_init_norm``.
      frozen_params: extra params that the optimizer must not move (their gradients are
        zeroed; e.g. a running-estimate threshold set in :meth:`post_update`).
      nested: a Matryoshka architecture: the loss adds the reconstruction error of every
        prefix of the latents listed by :meth:`prefix_widths`.
      sparse_min_ratio: ``decoder="auto"`` takes the sparse path from ``d_sae >=`` this
        times :meth:`sparse_slots` (0: :data:`jaxcrl.sae.sparse.SPARSE_MIN_RATIO`).
    """

    name: ClassVar[str]
    saelens_name: ClassVar[str]
    saelens_exact: ClassVar[bool] = True
    knob: ClassVar[str] = "k"
    coefficient_field: ClassVar[str | None] = None
    unit_norm_decoder: ClassVar[bool] = True
    frozen_params: ClassVar[tuple[str, ...]] = ()
    nested: ClassVar[bool] = False
    sparse_min_ratio: ClassVar[int] = 0

    def prefix_widths(self, cfg: SAEConfig) -> tuple[int, ...]:
        """Inner widths whose prefixes ``z[:, :w]`` must reconstruct alone (none by default)."""
        del cfg
        return ()

    def init_extra(self, cfg: SAEConfig) -> Params:
        """Parameters besides ``W_enc, b_enc, W_dec, b_dec`` (float32)."""
        del cfg
        return {}

    def activate(self, params: Params, pre: jax.Array, cfg: SAEConfig, *, k: Any,
                 inference: bool) -> jax.Array:
        """Latents ``z [batch, d_sae]`` from pre-activations ``pre [batch, d_sae]``."""
        raise NotImplementedError

    def sparse_select(self, params: Params, pre: jax.Array, cfg: SAEConfig, *, k: Any,
                      inference: bool) -> Any:
        """The active set as a :class:`jaxcrl.sae.sparse.Selection`, or None (the default:
        no sparse path; an architecture that overrides this gets one when
        ``SAEConfig.decoder`` asks for it). Must select exactly what :meth:`activate` keeps
        (``Selection.exact`` may say, per batch, that it could not)."""
        del params, pre, cfg, k, inference
        return None

    def sparse_activate(self, params: Params, values: jax.Array, idx: jax.Array,
                        cfg: SAEConfig) -> jax.Array:
        """Latents ``[B, K]`` of the selected slots from their pre-activations ``values``
        ``[B, K]`` (latent indices ``idx``; the gradient flows through this). Default: the
        values as selected (the TopK kinds keep positive pre-activations unchanged)."""
        del params, idx, cfg
        return values

    def sparse_slots(self, cfg: SAEConfig) -> int:
        """Slots per example of the sparse path (what :func:`jaxcrl.sae.sparse.use_sparse`
        compares ``d_sae`` with): ``k`` by default."""
        return cfg.k

    @property
    def has_sparse_path(self) -> bool:
        """:meth:`sparse_select` is overridden, by the class that defines :meth:`activate` or
        a subclass of it (a subclass that changes the activation but inherits the selection
        stays dense rather than select something else than it keeps)."""
        owner = lambda name: next(c for c in type(self).__mro__ if name in vars(c))
        sel = owner("sparse_select")
        return sel is not Architecture and issubclass(sel, owner("activate"))

    def penalty(self, params: Params, pre: jax.Array, z: jax.Array, cfg: SAEConfig
                ) -> jax.Array:
        """Per-example sparsity penalty ``[batch]`` before its coefficient (default 0)."""
        del params, z, cfg
        return jnp.zeros(pre.shape[:1], pre.dtype)

    def post_update(self, params: Params, prev: Params, z: jax.Array, cfg: SAEConfig
                    ) -> Params:
        """Params after an optimizer update (``prev``: before it; ``z`` the batch's latents)."""
        del prev, z, cfg
        return params

    def coefficient(self, cfg: SAEConfig) -> float:
        """The sparsity coefficient of ``cfg`` (0 without a penalty term)."""
        return 0.0 if self.coefficient_field is None else getattr(cfg, self.coefficient_field)

    def saelens_weights(self, params: Params, cfg: SAEConfig) -> dict[str, np.ndarray]:
        """Extra SAELens weights from (folded) params, e.g. ``threshold [d_sae]``."""
        del params, cfg
        return {}

    def saelens_cfg(self, cfg: SAEConfig) -> dict[str, Any]:
        """Extra SAELens ``cfg.json`` keys (e.g. ``k``)."""
        del cfg
        return {}

    def saelens_shapes(self, d_sae: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the extra weights an import reads (for an exact SAELens name)."""
        del d_sae
        return {}

    def __repr__(self) -> str:
        return f"<SAE architecture {self.name!r}>"


class ReLU(Architecture):
    """ReLU + L1 weighted by decoder row norms (Anthropic, April 2024)."""

    name = "relu"
    saelens_name = "standard"
    knob = "l1_coefficient"
    coefficient_field = "l1_coefficient"
    unit_norm_decoder = False

    def activate(self, params, pre, cfg, *, k, inference):
        return jax.nn.relu(pre)

    def penalty(self, params, pre, z, cfg):
        return z @ jnp.linalg.norm(params["W_dec"], axis=1)


class TopK(Architecture):
    """Per-example TopK (Gao et al. 2024)."""

    name = "topk"
    saelens_name = "topk"

    def activate(self, params, pre, cfg, *, k, inference):
        acts = jax.nn.relu(pre)
        k_max = cfg.k if isinstance(k, jax.core.Tracer) else max(cfg.k, int(k))
        return jnp.where(topk_mask(acts, k, k_max), acts, 0.0)

    def sparse_select(self, params, pre, cfg, *, k, inference):
        from jaxcrl.sae import sparse  # sparse builds on this module

        return sparse.select_topk(pre, k, max(cfg.k, k) if isinstance(k, int) else cfg.k)

    def saelens_cfg(self, cfg):
        return {"k": cfg.k}


class BatchTopK(Architecture):
    """Batch-level TopK (Bussmann et al. 2024) with a running inference threshold."""

    name = "batchtopk"
    saelens_name = "jumprelu"
    saelens_exact = False
    frozen_params = ("threshold",)

    def init_extra(self, cfg):
        return {"threshold": jnp.zeros((), jnp.float32)}

    def activate(self, params, pre, cfg, *, k, inference):
        acts = jax.nn.relu(pre)
        if inference:
            return jnp.where(acts > params["threshold"], acts, 0.0)
        return jnp.where(batch_topk_mask(acts, k), acts, 0.0)

    def sparse_select(self, params, pre, cfg, *, k, inference):
        if inference:  # the fixed threshold: no bound on the active set
            return None
        from jaxcrl.sae import sparse  # sparse builds on this module

        return sparse.select_batch_topk(pre, k, cfg.k)

    def post_update(self, params, prev, z, cfg):
        smallest = jnp.min(jnp.where(z > 0, z, jnp.inf))
        thr = prev["threshold"]
        new = (1 - cfg.batchtopk_threshold_lr) * thr + cfg.batchtopk_threshold_lr * smallest
        return {**params, "threshold": jnp.where(jnp.isfinite(smallest), new, thr)}

    def saelens_weights(self, params, cfg):
        return {"threshold": np.full((cfg.d_sae,), np.asarray(params["threshold"]), np.float32)}


class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK whose nested prefixes each reconstruct (Bussmann et al. 2025).

    The latents are selected once, by batch-level TopK over the whole dictionary; the loss
    adds ``Σ_w mean_b ‖x − (z[:, :w] W_dec[:w] + b_dec)‖²`` over the inner widths ``w``
    (``cfg.matryoshka_widths``, default ``d_sae/8, d_sae/4, d_sae/2``), so early latents
    learn general features and later ones refine them instead of absorbing them. Exported
    as SAELens ``jumprelu`` (what SAELens saves for its ``matryoshka_batchtopk``).
    """

    name = "matryoshka_batchtopk"
    nested = True

    def prefix_widths(self, cfg):
        if cfg.matryoshka_widths:
            return tuple(cfg.matryoshka_widths)
        return tuple(sorted({w for w in (cfg.d_sae // 8, cfg.d_sae // 4, cfg.d_sae // 2)
                             if 1 <= w < cfg.d_sae}))


class JumpReLU(Architecture):
    """JumpReLU with a rectangle-kernel STE and an L0 penalty (Gemma Scope).

    Sparse path (:mod:`jaxcrl.sae.sparse`): the slots hold every latent whose value or
    straight-through gradient is non-zero, i.e. ``relu(pre) > θ − ε/2`` in training
    (active, or within half the bandwidth below the threshold) and ``> θ`` at inference;
    ``JUMPRELU_ROW_CAP · k`` slots per example (``k`` read as the expected L0), and a batch
    with a row over that budget takes the dense path for that step (exact either way).
    """

    name = "jumprelu"
    saelens_name = "jumprelu"
    knob = "l0_coefficient"
    coefficient_field = "l0_coefficient"
    # Its dense path selects nothing, so the sparse one must also pay for a top-k: it needs
    # a wider dictionary than TopK's to win (see BENCHMARKS.md "Training speed").
    sparse_min_ratio = 64

    def init_extra(self, cfg):
        return {"threshold": jnp.full((cfg.d_sae,), cfg.threshold_init, jnp.float32)}

    def activate(self, params, pre, cfg, *, k, inference):
        acts = jax.nn.relu(pre)
        return jumprelu(acts, params["threshold"], jnp.asarray(cfg.bandwidth, acts.dtype))

    def sparse_select(self, params, pre, cfg, *, k, inference):
        from jaxcrl.sae import sparse  # sparse builds on this module

        floor = params["threshold"] - (0.0 if inference else 0.5 * cfg.bandwidth)
        return sparse.select_above(pre, floor, self.sparse_slots(cfg))

    def sparse_activate(self, params, values, idx, cfg):
        return jumprelu(jax.nn.relu(values), params["threshold"][idx],
                        jnp.asarray(cfg.bandwidth, values.dtype))

    def sparse_slots(self, cfg):
        from jaxcrl.sae import sparse  # sparse builds on this module

        return min(cfg.d_sae, sparse.JUMPRELU_ROW_CAP * cfg.k)

    def penalty(self, params, pre, z, cfg):
        # H has no gradient wrt its input (only the STE wrt θ), so ``pre`` is cut from the
        # graph: on the sparse path no dense backward through the encoder matmul results
        h = heaviside_step(jax.nn.relu(lax.stop_gradient(pre)), params["threshold"],
                           jnp.asarray(cfg.bandwidth, pre.dtype))
        return h.sum(-1)

    def post_update(self, params, prev, z, cfg):
        return {**params, "threshold": jnp.maximum(params["threshold"], 0.0)}

    def saelens_weights(self, params, cfg):
        return {"threshold": np.asarray(params["threshold"], np.float32)}

    def saelens_shapes(self, d_sae):
        return {"threshold": (d_sae,)}


# --------------------------------------------------------------------------- registry

ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Adds ``arch`` to :data:`ARCHITECTURES` under ``arch.name``; returns it.

    Raises:
      ValueError: the name is taken (unless ``replace``), or a second architecture claims
        to be the exact import of a SAELens name.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"register: arch must be an Architecture instance, got {arch!r}")
    if arch.name in ARCHITECTURES and not replace:
        raise ValueError(f"SAE architecture {arch.name!r} is already registered")
    if arch.saelens_exact:
        other = [a.name for a in ARCHITECTURES.values() if a.saelens_exact
                 and a.saelens_name == arch.saelens_name and a.name != arch.name]
        if other:
            raise ValueError(f"SAELens name {arch.saelens_name!r} already imports as "
                             f"{other[0]!r}; register {arch.name!r} with saelens_exact=False")
    ARCHITECTURES[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    """The registered architecture ``name``; ValueError listing the registered ones."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown SAE architecture {name!r}; registered: "
                         f"{tuple(ARCHITECTURES)}") from None


def from_saelens(saelens_name: str) -> Architecture:
    """The architecture a SAELens ``cfg.json`` ``"architecture"`` imports as."""
    for arch in ARCHITECTURES.values():
        if arch.saelens_exact and arch.saelens_name == saelens_name:
            return arch
    supported = sorted(a.saelens_name for a in ARCHITECTURES.values() if a.saelens_exact)
    raise ValueError(f"SAELens architecture {saelens_name!r} is not supported "
                     f"(supported: {supported})")


for _arch in (ReLU(), TopK(), BatchTopK(), JumpReLU(), MatryoshkaBatchTopK()):
    register(_arch)
