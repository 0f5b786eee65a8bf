"""Autoregressive generation with a key/value cache, compiled once per shape.

``generate(model, params, tokens, max_new_tokens, key, temperature, top_k)`` runs one
prefill forward over the prompt (filling a cache of ``T + max_new_tokens`` positions per
layer) and then a ``lax.scan`` of single-token forwards that read and extend the cache. The
whole loop is one ``jax.jit`` program per (config, batch, prompt length, ``max_new_tokens``,
``top_k``); ``temperature`` and ``key`` are traced, so new values reuse it.

Sampling: ``temperature == 0`` is greedy (argmax; ties go to the lowest id, as
``torch.argmax``); otherwise ``softmax(logits / temperature)`` restricted to the ``top_k``
largest logits (all when ``None``). Step ``i`` draws with ``fold_in(key, i)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxcrl.lm.config import TransformerConfig
from jaxcrl.lm.model import HookedTransformer, Transformer, _check_tokens


def init_kv_cache(cfg: TransformerConfig, batch: int, length: int, dtype: Any = jnp.float32
                  ) -> list[tuple[jax.Array, jax.Array]]:
    """Zero key/value caches, one ``([B, S, K, Dh], [B, S, K, Dh])`` pair per layer."""
    shape = (batch, length, cfg.kv_heads, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers)]


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: int | None
          ) -> jax.Array:
    """Next token ``[B]`` from float32 logits ``[B, V]``."""
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if top_k is not None:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    sampled = jax.random.categorical(key, scaled, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "top_k"))
def _generate(cfg: TransformerConfig, params: Any, tokens: jax.Array, key: jax.Array,
              temperature: jax.Array, max_new_tokens: int, top_k: int | None) -> jax.Array:
    b, t = tokens.shape
    module = Transformer(cfg)
    cache = init_kv_cache(cfg, b, t + max_new_tokens, params["W_E"].dtype)
    logits, cache = module.apply({"params": params}, tokens, kv_cache=cache, start=0)
    first = _pick(logits[:, -1], jax.random.fold_in(key, 0), temperature, top_k)

    def step(carry, i):
        cache, tok = carry
        logits, cache = module.apply({"params": params}, tok[:, None], kv_cache=cache,
                                     start=t + i)
        nxt = _pick(logits[:, -1], jax.random.fold_in(key, i + 1), temperature, top_k)
        return (cache, nxt), nxt

    _, rest = jax.lax.scan(step, (cache, first), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([tokens, first[:, None], rest.T], axis=1)


def generate(model: HookedTransformer, params: Any, tokens: Any, max_new_tokens: int,
             key: jax.Array | None = None, temperature: float = 0.0,
             top_k: int | None = None) -> jax.Array:
    """Continues ``tokens`` by ``max_new_tokens`` tokens.

    Args:
      model: the :class:`HookedTransformer`.
      params: its parameters (float32 or bfloat16).
      tokens: int ``[B, T]`` prompt (all rows the same length).
      max_new_tokens: tokens to append (>= 1).
      key: PRNG key (needed when ``temperature > 0``).
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_k: sample among the ``top_k`` most likely tokens only (``None``: all).

    Returns:
      int32 ``[B, T + max_new_tokens]``: the prompt followed by the generated tokens.

    Raises:
      ValueError: bad tokens (shape, dtype, ids outside ``[0, V)``), a total length
        ``T + max_new_tokens`` beyond the model's context ``n_ctx``, bad ``top_k`` or
        ``temperature``, or a missing key for sampling.
    """
    cfg = model.cfg
    tokens = _check_tokens(cfg, tokens)
    max_new_tokens = int(max_new_tokens)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = tokens.shape[1] + max_new_tokens
    if total > cfg.n_ctx:
        raise ValueError(f"prompt length {tokens.shape[1]} + max_new_tokens {max_new_tokens} "
                         f"= {total} is longer than the model's context n_ctx={cfg.n_ctx}")
    if top_k is not None and not 1 <= int(top_k) <= cfg.vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={cfg.vocab_size}], got {top_k}")
    if float(temperature) < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if key is None:
        if float(temperature) > 0:
            raise ValueError("generate: sampling (temperature > 0) needs a PRNG key")
        key = jax.random.key(0)
    return _generate(cfg, params, tokens, key, jnp.float32(temperature), max_new_tokens,
                     None if top_k is None else int(top_k))
