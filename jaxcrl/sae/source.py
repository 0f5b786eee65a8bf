"""Activation sources: where an SAE's training batches come from.

A :class:`Source` is a pair of pure functions, so sampling happens on device inside the
jit-ed training step::

    state = source.init(key)                      # device state (data array, buffer, ...)
    state, x = source.sample(state, key)          # x: [batch_size, d_in] float32

Kinds:

- :func:`array_source`: an in-memory array ``[n, d_in]``, rows drawn uniformly by key.
- :func:`sharded_array_source`: rows split over the devices (and hosts) of a mesh, each
  host holding only its own (:func:`host_rows`); stratified sampling, device-count free.
- :func:`npy_source`: a ``.npy`` file, memory-mapped; up to ``max_rows`` rows (a random
  subset drawn by key when the file is larger) are moved to the device. ``refresh(key)``
  draws a new subset; :func:`jaxcrl.sae.training.train` calls it every ``refresh_every`` steps.
- :func:`generator_source`: ``gen(key) -> [g, d_in]`` producing activations on device
  (a toy model, or a transformer through :func:`transformer_generator`), optionally through
  a shuffled buffer of ``buffer_size`` rows: each step writes the ``g`` new rows at random
  buffer slots and reads ``batch_size`` rows from random slots, so consecutive batches mix
  activations of many generator calls (each row is read about ``batch_size / g`` times).

Checkpoints: ``source.save(state)`` is the part of the state a training checkpoint keeps
(the shuffled buffer; the seed of an ``.npy`` subset; nothing for a fixed array) and
``source.restore(fresh_state, saved)`` rebuilds the state from it, so a resumed run draws
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Source:
    """A pure activation source.

    Attributes:
      init: ``key -> state`` (a pytree of device arrays, possibly empty).
      sample: ``(state, key) -> (state, x [batch_size, d_in])``; pure and jit-able.
      d_in: activation width.
      batch_size: rows per sample.
      refresh: optional host-side ``(state, key) -> state`` run between rounds of training
        (new data from disk); None for sources that never change.
      save: ``state -> pytree`` kept in training checkpoints (default: the whole state).
      restore: ``(fresh state from init, saved pytree) -> state`` (default: the saved one).
    """

    init: Callable[[jax.Array], Any]
    sample: Callable[[Any, jax.Array], tuple[Any, jax.Array]]
    d_in: int
    batch_size: int
    refresh: Callable[[Any, jax.Array], Any] | None = None
    save: Callable[[Any], Any] = lambda state: state
    restore: Callable[[Any, Any], Any] = lambda fresh, saved: saved


def _check_rows(x: np.ndarray | jax.Array, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, d_in], got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} has no rows")


def array_source(x: Any, batch_size: int) -> Source:
    """Rows of ``x`` ``[n, d_in]`` sampled uniformly with replacement by key.

    Raises:
      ValueError: ``x`` is not 2-D, empty, or holds NaN/inf.
    """
    x = jnp.asarray(x, jnp.float32)
    _check_rows(x, "x")
    if not bool(jnp.isfinite(x).all()):
        raise ValueError("x contains NaN or inf values")
    n = x.shape[0]

    def init(key):
        del key
        return {"data": x}

    def sample(state, key):
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return state, jnp.take(state["data"], idx, axis=0)

    # The data never changes: checkpoints keep nothing, resume re-reads ``x``.
    return Source(init, sample, int(x.shape[1]), batch_size, save=lambda state: {},
                  restore=lambda fresh, saved: fresh)


def host_rows(n: int) -> slice:
    """This process's equal share of ``n`` rows (``jax.process_index()`` of
    ``jax.process_count()``): the rows it reads from a file in a multi-host run.

    Raises:
      ValueError: ``n`` not divisible by the number of processes.
    """
    p, i = jax.process_count(), jax.process_index()
    if n % p:
        raise ValueError(f"{n} rows do not split evenly over {p} processes")
    return slice(i * (n // p), (i + 1) * (n // p))


def sharded_array_source(local_rows: Any, batch_size: int, mesh: Any = None, *,
                         blocks: int | None = None) -> Source:
    """Rows spread over the ``"data"`` devices of a mesh, each host holding only its own.

    Every process passes only its own rows (the same count everywhere: its
    :func:`host_rows` slice of a memory-mapped ``.npy``, or its shards of an activation
    cache); the global array ``[n, d_in]`` is assembled by
    ``jax.make_array_from_process_local_data`` and split over ``"data"``, so no host loads
    or receives another host's rows. Sampling is stratified: the global rows are ``blocks``
    equal blocks (default: the data-axis size), and each step draws ``batch_size / blocks``
    rows uniformly with replacement from every block, so each device gathers only from the
    block it holds. The batches depend on ``blocks`` and the key, not on the devices: the
    same source on one device (``mesh=None, blocks=8``) draws exactly the batches of an
    8-device or multi-host run.

    Args:
      local_rows: this process's rows ``[n_local, d_in]``.
      batch_size: rows per step (divisible by ``blocks``).
      mesh: a ``("data", "model")`` mesh (:func:`jaxcrl.train.mesh.make_mesh`); None: one
        device.
      blocks: sampling strata; must divide the global row count and be a multiple of the
        data-axis size.

    Raises:
      ValueError: bad shapes, NaN/inf, or sizes the blocks or the mesh do not divide.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxcrl.train.mesh import DATA

    local = np.asarray(local_rows, np.float32)
    _check_rows(local, "local_rows")
    if not np.isfinite(local).all():
        raise ValueError("local_rows contains NaN or inf values")
    n_data = 1 if mesh is None else mesh.shape[DATA]
    blocks = n_data if blocks is None else blocks
    n = local.shape[0] * (1 if mesh is None else jax.process_count())
    if blocks < 1 or blocks % n_data or n % blocks or batch_size % blocks:
        raise ValueError(f"blocks={blocks} must be a multiple of the data axis ({n_data}) and "
                         f"divide both the {n} rows and batch_size={batch_size}")
    per, draw = n // blocks, batch_size // blocks
    if mesh is None:
        data = jnp.asarray(local)
    else:
        data = jax.make_array_from_process_local_data(
            NamedSharding(mesh, PartitionSpec(DATA, None)), local, (n, local.shape[1]))

    def init(key):
        del key
        return {"data": data}

    def sample(state, key):
        idx = jax.random.randint(key, (blocks, draw), 0, per)
        x = state["data"].reshape(blocks, per, -1)
        return state, jax.vmap(lambda b, i: jnp.take(b, i, axis=0))(x, idx).reshape(
            batch_size, -1)

    return Source(init, sample, int(local.shape[1]), batch_size, save=lambda state: {},
                  restore=lambda fresh, saved: fresh)


def npy_source(path: str | Path, batch_size: int, *, max_rows: int = 1_000_000) -> Source:
    """Activations from a ``.npy`` file ``[n, d_in]``, memory-mapped.

    At most ``max_rows`` rows live on the device: all of them when ``n <= max_rows``, else a
    random subset drawn from ``key`` by ``init`` (and a fresh one by ``refresh``). The state
    holds the subset's int32 ``seed``; checkpoints keep only the seed and resume reloads the
    same rows from the file.
    """
    arr = np.load(path, mmap_mode="r")
    _check_rows(arr, str(path))
    n, d = arr.shape
    m = min(n, max_rows)

    def load_seed(seed: int):
        if m == n:
            rows = np.asarray(arr, np.float32)
        else:
            idx = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
            rows = np.asarray(arr[idx], np.float32)
        if not np.isfinite(rows).all():
            raise ValueError(f"{path} contains NaN or inf values")
        return {"data": jnp.asarray(rows), "seed": jnp.int32(seed)}

    def load(key):
        return load_seed(0 if m == n else int(jax.random.randint(key, (), 0, 2**31 - 1)))

    def sample(state, key):
        idx = jax.random.randint(key, (batch_size,), 0, m)
        return state, jnp.take(state["data"], idx, axis=0)

    def restore(fresh, saved):
        seed = int(saved["seed"])
        return fresh if seed == int(fresh["seed"]) else load_seed(seed)

    refresh = None if m == n else (lambda state, key: load(key))
    return Source(load, sample, int(d), batch_size, refresh,
                  save=lambda state: {"seed": state["seed"]}, restore=restore)


def generator_source(gen: Callable[[jax.Array], jax.Array], d_in: int, batch_size: int, *,
                     buffer_size: int | None = None) -> Source:
    """Activations made on device by ``gen(key) -> [g, d_in]``.

    Without a buffer, ``gen`` must return exactly ``[batch_size, d_in]`` and each batch is
    fresh. With ``buffer_size`` rows of buffer (filled at init by repeated calls), each step
    writes one call's ``g`` rows at random slots and reads ``batch_size`` random slots.
    """
    if buffer_size is None:
        def sample(state, key):
            x = gen(key)
            _check_gen(x, (batch_size, d_in))
            return state, x.astype(jnp.float32)

        return Source(lambda key: {}, sample, d_in, batch_size, save=lambda state: {},
                      restore=lambda fresh, saved: fresh)

    if buffer_size < batch_size:
        raise ValueError(f"buffer_size={buffer_size} must be >= batch_size={batch_size}")

    def gen_rows(key):
        x = gen(key)
        if x.ndim != 2 or x.shape[1] != d_in:
            raise ValueError(f"gen must return [g, d_in={d_in}], got shape {x.shape}")
        return x.astype(jnp.float32)

    g = jax.eval_shape(gen_rows, jax.random.key(0)).shape[0]
    calls = -(-buffer_size // g)

    def init(key):
        rows = jax.lax.map(gen_rows, jax.random.split(key, calls))
        return {"buffer": rows.reshape(calls * g, d_in)[:buffer_size]}

    def sample(state, key):
        k_gen, k_put, k_get = jax.random.split(key, 3)
        new = gen_rows(k_gen)
        put = jax.random.randint(k_put, (g,), 0, buffer_size)
        buf = state["buffer"].at[put].set(new)
        get = jax.random.randint(k_get, (batch_size,), 0, buffer_size)
        return {"buffer": buf}, jnp.take(buf, get, axis=0)

    # The shuffled buffer is the source's state: checkpoints keep it whole.
    return Source(init, sample, d_in, batch_size)


def _check_gen(x: jax.Array, shape: tuple[int, int]) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"gen must return [batch_size, d_in]={list(shape)}, got {x.shape} "
                         "(or pass buffer_size)")


def transformer_generator(model: Any, params: Any, sample_tokens: Callable[[jax.Array], Any],
                          hook_name: str | Sequence[str], *, stop_at_layer: int | None = None
                          ) -> Callable[[jax.Array], jax.Array]:
    """``gen(key) -> [batch·seq, d]``: activations of a hooked transformer at ``hook_name``.

    Written against ``jaxcrl.lm.HookedTransformer``'s TransformerLens-style API::

        logits, cache = model.run_with_cache(params, tokens, names=[hook_name],
                                             stop_at_layer=stop_at_layer)

    Args:
      model: object with ``run_with_cache``.
      params: the model's params.
      sample_tokens: ``key -> tokens [batch, seq]`` (int), e.g. a synthetic language.
      hook_name: e.g. ``"blocks.1.hook_resid_post"``, or several hooks whose activations
        are concatenated along the width (the rows of a transcoder's source: its inputs,
        then its outputs, see :mod:`jaxcrl.sae.clt`).
      stop_at_layer: skip the layers after the hook (``layer + 1`` for a block hook).
    """
    names = [hook_name] if isinstance(hook_name, str) else list(hook_name)

    def gen(key):
        tokens = sample_tokens(key)
        _, cache = model.run_with_cache(params, tokens, names=names,
                                        stop_at_layer=stop_at_layer)
        acts = [jax.lax.stop_gradient(cache[n]) for n in names]
        return jnp.concatenate([a.reshape(-1, a.shape[-1]) for a in acts], -1)

    return gen
