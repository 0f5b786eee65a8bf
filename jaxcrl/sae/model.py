"""SAEs as pure functions over a params pytree.

Params (float32)::

    {"W_enc": [d_in, d_sae], "b_enc": [d_sae], "W_dec": [d_sae, d_in], "b_dec": [d_in],
     plus the architecture's extra params, e.g. "threshold": [d_sae] (jumprelu) | []
     (batchtopk: inference threshold, not trained)}

the SAELens layout, so export is a rename-free copy. The encoder computes
``pre = (x - b_dec) @ W_enc + b_enc`` (``apply_b_dec_to_input``) and then the architecture's
activation (:mod:`jaxcrl.sae.architectures`: ReLU, TopK, BatchTopK, JumpReLU and any
registered one).

Training of the TopK kinds and JumpReLU takes the sparse path (:mod:`jaxcrl.sae.sparse`,
chosen by ``SAEConfig.decoder``) when the architecture offers a sparse selection
(:meth:`~jaxcrl.sae.architectures.Architecture.sparse_select`): only the active latents are
decoded and differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp

from jaxcrl.sae.architectures import (  # noqa: F401  (re-exported primitives)
    batch_topk_mask,
    heaviside_step,
    jumprelu,
    kth_largest_nonneg,
    topk_mask,
)
from jaxcrl.sae.config import SAEConfig

Params = dict[str, jax.Array]


# --------------------------------------------------------------------------- init


def init_params(key: jax.Array, cfg: SAEConfig, *, b_dec: jax.Array | None = None) -> Params:
    """Initial params: random decoder directions, ``W_enc = W_decᵀ``, zero ``b_enc``.

    Decoder rows have unit norm for the unit-norm architectures and norm
    ``cfg.dec_init_norm`` for ``relu`` (Anthropic's update; Gao et al. initialise the
    encoder as the decoder's transpose).

    Args:
      key: PRNG key.
      cfg: the SAE config.
      b_dec: ``[d_in]`` initial decoder bias (e.g. the data mean); zeros if None.
    """
    w = jax.random.normal(key, (cfg.d_sae, cfg.d_in), jnp.float32)
    w = w / jnp.linalg.norm(w, axis=1, keepdims=True)
    if not cfg.unit_norm_decoder:
        w = w * cfg.dec_init_norm
    params = {
        "W_enc": w.T,
        "b_enc": jnp.zeros((cfg.d_sae,), jnp.float32),
        "W_dec": w,
        "b_dec": (jnp.zeros((cfg.d_in,), jnp.float32) if b_dec is None
                  else jnp.asarray(b_dec, jnp.float32).reshape(cfg.d_in)),
    }
    params.update(cfg.arch.init_extra(cfg))
    return params


def geometric_median(x: jax.Array, *, iters: int = 100, eps: float = 1e-6) -> jax.Array:
    """Geometric median of the rows of ``x`` ``[n, d]`` by Weiszfeld's iterations -> ``[d]``."""
    x = jnp.asarray(x, jnp.float32)

    def body(_, m):
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - m, axis=1), eps)
        return (w[:, None] * x).sum(0) / w.sum()

    return jax.lax.fori_loop(0, iters, body, x.mean(0))


# --------------------------------------------------------------------------- encode / decode


def check_input(x: Any, cfg: SAEConfig, name: str = "x") -> jax.Array:
    """``x`` as a float32 ``[batch, d_in]`` array; ValueError on a wrong shape.

    NaN checks need concrete values: they run here when ``x`` is not traced (see
    :func:`check_finite`).
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != cfg.d_in:
        raise ValueError(f"{name} must be [batch, d_in={cfg.d_in}], got shape {x.shape}")
    check_finite(x, name)
    return x.astype(jnp.float32)


def check_finite(x: jax.Array, name: str = "x") -> None:
    """ValueError if a concrete ``x`` holds NaN or inf (no-op on tracers)."""
    if isinstance(x, jax.core.Tracer):
        return
    if not bool(jnp.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_params(params: Params, cfg: SAEConfig) -> None:
    """chex shape/dtype assertions on the SAE params (at trace time: free under jit).

    Raises:
      AssertionError: naming the parameter, e.g. ``params["W_dec"]`` not ``[d_sae, d_in]``.
    """
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,),
              "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    for name, shape in shapes.items():
        if name not in params:
            raise KeyError(f"SAE params have no {name!r} (keys: {sorted(params)})")
        msg = f'params["{name}"] must be {shape} for d_in={cfg.d_in}, d_sae={cfg.d_sae}'
        chex.assert_shape(params[name], shape, custom_message=msg)
        chex.assert_type(params[name], float, custom_message=f'params["{name}"]')


def pre_activations(params: Params, x: jax.Array, cfg: SAEConfig) -> jax.Array:
    """``(x − b_dec) W_enc + b_enc``: ``[batch, d_in] -> [batch, d_sae]``."""
    check_params(params, cfg)
    chex.assert_shape(x, (None, cfg.d_in), custom_message=f"x must be [batch, d_in={cfg.d_in}]")
    if cfg.apply_b_dec_to_input:
        x = x - params["b_dec"]
    return matmul(x, params["W_enc"], cfg) + params["b_enc"]


def matmul(a: jax.Array, b: jax.Array, cfg: SAEConfig | None) -> jax.Array:
    """``a @ b`` in ``cfg.compute_dtype`` with float32 accumulation and result."""
    if cfg is None or cfg.compute_dtype == "float32":
        return a @ b
    dt = jnp.dtype(cfg.compute_dtype)
    return jnp.matmul(a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32)


def activate(params: Params, pre: jax.Array, cfg: SAEConfig, *, k: Any = None,
             inference: bool = False) -> jax.Array:
    """Latents from pre-activations ``[batch, d_sae]`` for ``cfg.architecture``.

    Args:
      k: traced or static number of active latents for the TopK kinds (default ``cfg.k``).
      inference: BatchTopK uses its fixed threshold ``params["threshold"]`` instead of the
        batch-level top-k.
    """
    k = cfg.k if k is None else k
    return cfg.arch.activate(params, pre, cfg, k=k, inference=inference)


def encode(params: Params, x: jax.Array, cfg: SAEConfig, *, k: Any = None,
           inference: bool = False) -> jax.Array:
    """Latents ``z`` ``[batch, d_sae]`` of activations ``x`` ``[batch, d_in]``."""
    return activate(params, pre_activations(params, x, cfg), cfg, k=k, inference=inference)


def decode(params: Params, z: jax.Array, cfg: SAEConfig | None = None) -> jax.Array:
    """Reconstruction ``z W_dec + b_dec``: ``[batch, d_sae] -> [batch, d_in]``."""
    return matmul(z, params["W_dec"], cfg) + params["b_dec"]


def forward(params: Params, x: jax.Array, cfg: SAEConfig, *, k: Any = None,
            inference: bool = False, selection: Any = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``x`` ``[batch, d_in]`` -> ``(x_hat [batch, d_in], aux)``.

    ``aux`` holds ``pre`` (pre-activations) and ``z`` (latents), both ``[batch, d_sae]``.
    Architectures with a sparse selection take the sparse path when
    :func:`jaxcrl.sae.sparse.use_sparse` says so (same values; ``pre`` and ``z`` then carry
    no gradient, ``aux`` may add ``idx``/``v``). ``selection``: an active set already
    chosen and known to be exact (:func:`jaxcrl.sae.sparse.forward`).
    """
    from jaxcrl.sae import sparse  # sparse builds on this module

    if sparse.use_sparse(cfg):
        return sparse.forward(params, x, cfg, k=k, inference=inference, selection=selection)
    pre = pre_activations(params, x, cfg)
    z = activate(params, pre, cfg, k=k, inference=inference)
    return decode(params, z, cfg), {"pre": pre, "z": z}


@dataclasses.dataclass(frozen=True)
class Reconstruct:
    """``reconstruct(x [..., d_in], params) -> x_hat [..., d_in]`` for SAEs of config ``cfg``.

    Inference mode, ``x``'s dtype kept. A frozen dataclass: equal configs give equal,
    hashable objects, so it can be the static function of a hook whose SAE params are
    passed as traced data (``jaxcrl.lm.replace_with(Reconstruct(cfg), params)``, see
    :func:`jaxcrl.analysis.sae_hook`): new params reuse the compiled program and are not
    pinned in the compile cache, unlike a closure over them.
    """

    cfg: SAEConfig

    def __call__(self, x: jax.Array, params: Params) -> jax.Array:
        shape = x.shape
        x_hat, _ = forward(params, x.reshape(-1, shape[-1]), self.cfg, inference=True)
        return x_hat.reshape(shape).astype(x.dtype)


# --------------------------------------------------------------------------- penalties


def sparsity_penalty(params: Params, pre: jax.Array, z: jax.Array, cfg: SAEConfig) -> jax.Array:
    """Per-example sparsity penalty ``[batch]`` (before its coefficient) of the architecture.

    ``relu``: ``Σ_i z_i ‖W_dec[i]‖``; ``jumprelu``: ``Σ_i H(pre_i − θ_i)`` with the STE;
    TopK kinds: 0 (see :mod:`jaxcrl.sae.architectures`).
    """
    return cfg.arch.penalty(params, pre, z, cfg)


# --------------------------------------------------------------------------- normalisation


def fold_normalization(params: Params, scale: jax.Array | float, cfg: SAEConfig) -> Params:
    """Params that act on raw activations, for an SAE trained on ``scale · x``.

    With ``x_n = s·x``: ``pre = (x_n − b_dec) W_enc + b_enc = (x − b_dec/s)(s W_enc) + b_enc``
    (thresholds unchanged) and ``x_hat = (z W_dec + b_dec)/s``. So ``W_enc ← s W_enc``,
    ``W_dec ← W_dec/s``, ``b_dec ← b_dec/s``. The folded SAE's reconstruction of raw ``x``
    is ours of ``s·x`` divided by ``s``.
    """
    s = jnp.asarray(scale, jnp.float32)
    out = dict(params)
    out["W_enc"] = params["W_enc"] * s
    out["W_dec"] = params["W_dec"] / s
    out["b_dec"] = params["b_dec"] / s
    del cfg  # without apply_b_dec_to_input, pre = x_n W_enc + b_enc folds the same way
    return out
