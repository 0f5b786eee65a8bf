"""Activation store: a transformer's activations at one hook, streamed on device.

:func:`lm_source` wraps ``jaxcrl.lm.HookedTransformer`` (or any object with its
``run_with_cache``) as a :class:`~jaxcrl.sae.source.Source`: every training step runs the
model on a fresh token batch (``sample_tokens(key)``), up to the hook's layer only
(``stop_at_layer``), writes the flattened ``[batch·seq, d]`` activations into a shuffled
device buffer and reads an SAE batch from random buffer slots. All inside the jit-ed
training step, so there is no host round trip::

    model = HookedTransformer(cfg); params = ...
    sample_tokens = lambda key: tasks.sample(task, key, 64).tokens      # [64, T]
    src = lm_source(model, params, sample_tokens, "blocks.1.hook_resid_post",
                    batch_size=4096, buffer_size=65536)
    result = sae.train(sae_cfg, src, key)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxcrl.sae.source import Source, generator_source, transformer_generator


def layer_of(hook_name: str) -> int | None:
    """Block index of a TransformerLens hook name (``blocks.3.hook_resid_post`` -> 3);
    ``None`` for embedding/final hooks (no ``stop_at_layer``)."""
    parts = hook_name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def lm_source(model: Any, params: Any, sample_tokens: Callable[[jax.Array], Any],
              hook_name: str, *, batch_size: int, buffer_size: int | None = None,
              d_in: int | None = None, positions: slice | None = None) -> Source:
    """A :class:`Source` of ``model``'s activations at ``hook_name``.

    Args:
      model: ``HookedTransformer``-like object (``run_with_cache`` with ``names`` and
        ``stop_at_layer``).
      params: its params.
      sample_tokens: ``key -> int tokens [b, T]``.
      hook_name: TransformerLens hook name, e.g. ``"blocks.1.hook_resid_post"``.
      batch_size: SAE batch size.
      buffer_size: shuffle-buffer rows (default ``max(8 · batch_size, 4 · b·T)``).
      d_in: activation width (inferred by a shape-only trace when None).
      positions: keep only these sequence positions (e.g. ``slice(1, None)`` to drop BOS).
    """
    layer = layer_of(hook_name)
    stop = None if layer is None else layer + 1
    base = transformer_generator(model, params, sample_tokens, hook_name, stop_at_layer=stop)
    if positions is None:
        gen = base
    else:
        def gen(key):
            tokens = sample_tokens(key)
            _, cache = model.run_with_cache(params, tokens, names=[hook_name],
                                            stop_at_layer=stop)
            acts = jax.lax.stop_gradient(cache[hook_name])[:, positions]
            return acts.reshape(-1, acts.shape[-1])
    shape = jax.eval_shape(gen, jax.random.key(0)).shape
    if len(shape) != 2:
        raise ValueError(f"activations at {hook_name!r} flatten to {shape}, expected [rows, d]"
                         " (per-head hooks like hook_z need reshaping first)")
    if d_in is not None and shape[1] != d_in:
        raise ValueError(f"activations at {hook_name!r} have width {shape[1]}, not d_in={d_in}")
    rows = shape[0]
    if buffer_size is None:
        buffer_size = max(8 * batch_size, 4 * rows)
    return generator_source(gen, int(shape[1]), batch_size, buffer_size=buffer_size)
