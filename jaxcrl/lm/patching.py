"""Activation patching (causal tracing): which activations carry the difference between runs.

For a clean and a corrupted prompt (same length), each hook point ``h`` and position ``p``,
the clean activation ``a_clean[h][:, p]`` is written into the corrupted run and a scalar
metric of the resulting logits is recorded (Meng et al. 2022; Wang et al. 2022, IOI). Values
near the clean metric mark activations that suffice to restore the clean behaviour.

Positions are vectorised with ``jax.vmap`` (one batched forward per hook point, through the
model's compiled program); ``chunk_size`` bounds memory with ``lax.map`` batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcrl.lm.model import HookedTransformer, patch_from, pos_axis_of

MetricFn = Callable[[jax.Array], jax.Array]


def logit_diff(answer: Any, wrong: Any, position: int = -1) -> MetricFn:
    """Metric ``mean_b(logits[b, position, answer_b] - logits[b, position, wrong_b])``.

    Args:
      answer: correct token id (int, or int ``[B]`` per prompt).
      wrong: competing token id (int or ``[B]``).
      position: sequence position read (default: the last).

    Returns:
      ``fn(logits [B, T, V]) -> scalar``.
    """
    answer, wrong = jnp.asarray(answer), jnp.asarray(wrong)

    def fn(logits: jax.Array) -> jax.Array:
        last = logits[:, position]  # [B, V]
        b = last.shape[0]
        rows = jnp.arange(b)
        a = last[rows, jnp.broadcast_to(answer, (b,))]
        w = last[rows, jnp.broadcast_to(wrong, (b,))]
        return jnp.mean(a - w)

    return fn


def activation_patching(model: HookedTransformer, params: Any, clean_tokens: jax.Array,
                        corrupted_tokens: jax.Array, metric_fn: MetricFn,
                        hook_names: Sequence[str] | None = None, positions: Any = None, *,
                        chunk_size: int | None = None) -> jax.Array:
    """Patches clean activations into the corrupted run, one (hook, position) at a time.

    Args:
      model: the transformer.
      params: its parameters.
      clean_tokens: int ``[B, T]``.
      corrupted_tokens: int ``[B, T]`` (same shape).
      metric_fn: ``fn(logits [B, T, V]) -> scalar`` (e.g. :func:`logit_diff`).
      hook_names: hook points to patch (default: every ``blocks.{l}.hook_resid_pre`` and the
        last ``hook_resid_post``). ``attn.hook_pattern`` is patched along its query axis.
      positions: int positions to patch (default: all ``T``).
      chunk_size: if set, evaluate at most this many positions at once (memory bound).

    Returns:
      ``[n_hooks, n_positions]`` float32: metric with ``hook_names[i]`` patched at
      ``positions[j]`` (only that position, all prompts of the batch).
    """
    cfg = model.cfg
    if hook_names is None:
        hook_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)]
        hook_names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    hook_names = list(hook_names)
    if not hook_names:
        raise ValueError("hook_names is empty")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens "
                         f"{tuple(corrupted_tokens.shape)} must have the same shape")
    _, clean_cache = model.run_with_cache(params, clean_tokens, names=hook_names)
    t = clean_tokens.shape[1]
    pos = jnp.arange(t) if positions is None else jnp.atleast_1d(jnp.asarray(positions))
    if not jnp.issubdtype(pos.dtype, jnp.integer) or pos.ndim != 1:
        raise ValueError(f"positions must be ints [P], got {pos.dtype} {tuple(pos.shape)}")

    rows = []
    for name in hook_names:
        value = clean_cache[name]

        def one(p, name=name, value=value):
            hook = patch_from(value, positions=p, pos_axis=pos_axis_of(name))
            logits = model.run_with_hooks(params, corrupted_tokens, {name: hook})
            return jnp.asarray(metric_fn(logits), jnp.float32)

        if chunk_size is None:
            rows.append(jax.vmap(one)(pos))
        else:
            rows.append(jax.lax.map(one, pos, batch_size=chunk_size))
    return jnp.stack(rows)
