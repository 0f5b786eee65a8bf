"""SAE evaluation: reconstruction and sparsity metrics, latent densities, CE loss recovered.

- :func:`evaluate`: L0, MSE, FVU, dead and dense latent fractions and per-latent firing
  densities of an SAE on held-out activations.
- :func:`plot_density`: histogram of log10 firing densities (dead latents counted apart).
- :func:`ce_loss_recovered`: ``(CE_zero − CE_sae) / (CE_zero − CE_clean)`` with the SAE's
  reconstruction spliced into a transformer at a hook (1 = as good as the clean model,
  0 = no better than zeroing the activation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.sae import model as sae_model
from jaxcrl.sae.config import SAEConfig


def evaluate(params: dict, x: Any, cfg: SAEConfig, *, batch_size: int = 4096,
             inference: bool = True) -> dict[str, Any]:
    """Metrics of an SAE (params acting on ``x`` as given) on activations ``x`` ``[n, d_in]``.

    Args:
      params: SAE params for the space of ``x`` (fold the normalisation in for raw
        activations: ``SAETrainResult.params()``).
      x: ``[n, d_in]`` activations.
      cfg: the SAE config.
      batch_size: rows per jit-ed evaluation batch.
      inference: BatchTopK uses its inference threshold (else the batch-level top-k).

    Returns:
      ``{"l0", "mse" (per element), "fvu", "dead_fraction", "dense_fraction",
      "density" ([d_sae] firing rate of each latent)}``. A latent is dead if it never fires
      on ``x`` and dense if it fires on more than ``cfg.dense_threshold`` of the rows.

    Raises:
      ValueError: wrong shape or NaN/inf in ``x``.
    """
    x = sae_model.check_input(x, cfg)
    n = x.shape[0]
    sq = 0.0
    nnz = 0
    counts = np.zeros(cfg.d_sae, np.int64)
    for i in range(0, n, batch_size):
        s, c, per = jax.device_get(_batch_stats(params, x[i:i + batch_size], cfg,
                                                inference))
        sq += float(s)
        nnz += int(c)
        counts += per
    centered = float(jnp.sum((x - x.mean(0)) ** 2))
    density = counts / n
    return {"l0": nnz / n, "mse": sq / (n * cfg.d_in), "fvu": sq / centered,
            "dead_fraction": float((counts == 0).mean()),
            "dense_fraction": float((density > cfg.dense_threshold).mean()),
            "density": density}


@functools.partial(jax.jit, static_argnames=("cfg", "inference"))
def _batch_stats(params: dict, xb: jax.Array, cfg: SAEConfig, inference: bool):
    """Squared error, number of firings and per-latent firings of one batch (params traced,
    so evaluating new params reuses the compiled program)."""
    x_hat, aux = sae_model.forward(params, xb, cfg, inference=inference)
    fired = aux["z"] > 0
    return jnp.sum((x_hat - xb) ** 2), fired.sum(), fired.sum(0)


def plot_density(density: Any, ax=None, *, title: str = "latent density", bins: int = 50):
    """Histogram of ``log10`` firing density ``[d_sae]``; dead latents noted in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    density = np.asarray(density)
    alive = density[density > 0]
    if alive.size:
        ax.hist(np.log10(alive), bins=bins, color="tab:blue")
    ax.set_xlabel("log10 firing density")
    ax.set_ylabel("latents")
    ax.set_title(f"{title} ({int((density == 0).sum())} dead)")
    return ax


def next_token_ce(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of ``logits`` ``[b, T, V]`` on ``tokens`` ``[b, T]``."""
    chex.assert_rank([logits, tokens], [3, 2], custom_message="logits [b, T, V], tokens [b, T]")
    chex.assert_equal_shape_prefix([logits, tokens], 2,
                                   custom_message="logits [b, T, V] and tokens [b, T]")
    chex.assert_type(tokens, int, custom_message="tokens")
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    tgt = tokens[:, 1:]
    return -jnp.take_along_axis(logp, tgt[..., None], -1).mean()


def ce_loss_recovered(model: Any, params: Any, tokens: Any, hook_name: str,
                      hook: Callable[[jax.Array], jax.Array]) -> dict[str, float]:
    """Cross-entropy loss recovered by splicing an SAE into a model at ``hook_name``.

    Uses the TransformerLens-style API of :class:`jaxcrl.lm.HookedTransformer`:
    ``model.apply(params, tokens) -> logits`` and
    ``model.run_with_hooks(params, tokens, hooks={hook_name: fn}) -> logits``, where ``fn``
    maps the activation at the hook to its replacement.

    Args:
      model: object with ``apply`` and ``run_with_hooks``.
      params: model params.
      tokens: ``[batch, seq]`` int tokens.
      hook_name: where to splice, e.g. ``"blocks.0.hook_resid_post"``.
      hook: ``x [..., d] -> x_hat [..., d]`` on raw activations; use
        :func:`jaxcrl.analysis.sae_hook` (params as traced hook data: evaluating many SAEs
        compiles once per config, and their weights are not pinned in the compile cache).

    Returns:
      ``{"ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered"}`` with
      ``ce_loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean)``.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    clean = next_token_ce(_logits(model.apply(params, tokens)), tokens)
    zero = next_token_ce(_logits(model.run_with_hooks(params, tokens,
                                                      hooks={hook_name: jnp.zeros_like})), tokens)
    spliced = next_token_ce(_logits(model.run_with_hooks(params, tokens,
                                                         hooks={hook_name: hook})), tokens)
    clean, zero, spliced = (float(v) for v in (clean, zero, spliced))
    return {"ce_clean": clean, "ce_sae": spliced, "ce_zero": zero,
            "ce_loss_recovered": (zero - spliced) / (zero - clean)}


def _logits(out: Any) -> jax.Array:
    """Logits from a model output (``logits`` or ``(logits, aux)``)."""
    return out[0] if isinstance(out, tuple) else out
