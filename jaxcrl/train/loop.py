"""The inner training loop: a pure step run in jit-ed ``lax.scan`` chunks, compiled once.

``crl``, ``lm`` and ``sae`` all train through the outer driver
(:func:`jaxcrl.train.driver.drive`), which runs the chunks built here and calls its
callbacks (progress, evaluation, checkpoints, source refresh, non-finite guard) between
them. A step is a pure ``step_fn(state, key) -> (state, metrics)``; many runs (seeds,
sweeps) train in one compiled program by passing a step that was ``jax.vmap``-ed over a
leading run axis (see :func:`vmap_runs`).

Keys: step ``t`` of a run uses ``jax.random.fold_in(key, t)``, so the numbers do not depend
on the chunk size, on jit, or on whether the run is vmapped with others.

Compiled once: a chunk always scans ``chunk_size`` steps and skips (``lax.cond``) the ones
past its ``n_valid``, and its first step index is traced, so partial chunks (the last one,
the first one after a resume, one that ends at an evaluation) reuse the same program. The
step is traced once per (step function, state/key signature) and process: resuming in the
same process with the same step function does not retrace either. Each chunk program counts
its own traces and raises :class:`RetraceError` on a second one: the equivalent of
``chex.assert_max_traces(n=1)`` on the jitted step, per run (chex keys its counter on the
place a function is defined, so a library step built once per run would trip it on the
second run of a process).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[Any, jax.Array], tuple[Any, dict]]


class RetraceError(AssertionError):
    """A chunk program was traced a second time (it must compile once per run)."""


def vmap_runs(step_fn: StepFn) -> StepFn:
    """Turns a single-run step into one over a leading run axis of state and key."""
    return jax.vmap(step_fn)


def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves)


# step_fn -> {(chunk_size, batched, signature): Chunk}; weak so closures of finished runs go.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Chunk:
    """``chunk(state, key, start, n_valid) -> (state, metrics)``: steps ``start ..
    start + n_valid - 1`` of a run (``n_valid <= size``), compiled once.

    ``metrics[name]`` is ``[size, ...]``; rows from ``n_valid`` on are zeros (skipped steps).
    ``traces`` counts how often the program was traced (1 after the first call; a second
    trace raises :class:`RetraceError`).
    """

    def __init__(self, step_fn: StepFn, state: Any, key: jax.Array, size: int, batched: bool):
        # Trace the step once: the jaxpr gives the metrics' shapes (for the skip branch) and
        # is what the chunk evaluates, so the Python step runs exactly once.
        closed, out_shape = jax.make_jaxpr(step_fn, return_shape=True)(state, _fold(key, 0,
                                                                                   batched))
        out_tree = jax.tree_util.tree_structure(out_shape)
        metric_shapes = out_shape[1]
        self.size = size
        self.traces = 0

        def step(s, k):
            flat = jax.tree_util.tree_leaves((s, k))
            out = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *flat)
            return jax.tree_util.tree_unflatten(out_tree, out)

        def skip(s, k):
            del k
            return s, jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                             metric_shapes)

        def chunk(state, key, start, n_valid):
            self.traces += 1
            if self.traces > 1:
                raise RetraceError(f"the training chunk was traced {self.traces} times; the "
                                   "state or key changed shape/dtype between chunks")

            def body(s, i):
                k = _fold(key, start + i, batched)
                return jax.lax.cond(i < n_valid, step, skip, s, k)

            return jax.lax.scan(body, state, jnp.arange(size, dtype=jnp.int32))

        self._fn = jax.jit(chunk, donate_argnums=0,
                           out_shardings=_mesh_out_shardings(state, out_shape[1], size))

    def __call__(self, state, key, start: int, n_valid: int):
        if not 0 < n_valid <= self.size:
            raise ValueError(f"n_valid must be in [1, {self.size}], got {n_valid}")
        return self._fn(state, key, jnp.int32(start), jnp.int32(n_valid))


def _mesh_out_shardings(state: Any, metric_shapes: Any, size: int) -> Any:
    """Output placement of a chunk whose state lives on a mesh: the state keeps its input
    shardings, the stacked metrics are replicated on that mesh. Pinning them matters when
    the step also reads arrays placed on another mesh over the same devices (a transformer
    trained data-parallel, read by a sweep of SAEs spread over its runs): XLA's free choice
    of output sharding is then not expressible on either mesh. None (XLA decides) when the
    state is not on a mesh."""
    from jax.sharding import NamedSharding, PartitionSpec

    leaves = jax.tree_util.tree_leaves(state)
    mesh = next((x.sharding.mesh for x in leaves if isinstance(x, jax.Array)
                 and isinstance(x.sharding, NamedSharding) and x.sharding.mesh.size > 1), None)
    if mesh is None:
        return None
    rep = NamedSharding(mesh, PartitionSpec())

    def own(x):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and (
                x.sharding.mesh == mesh):
            return x.sharding
        return rep

    return (jax.tree_util.tree_map(own, state),
            jax.tree_util.tree_map(lambda _: rep, metric_shapes))


def _fold(key, t, batched):
    if batched:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, t)
    return jax.random.fold_in(key, t)


def compiled_chunk(step_fn: StepFn, state: Any, key: jax.Array, *, size: int,
                   batched: bool) -> Chunk:
    """The (cached) :class:`Chunk` of ``step_fn`` for this state/key signature."""
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    sig = (size, batched, _signature((state, key)))
    try:
        per_fn = _CACHE.setdefault(step_fn, {})
    except TypeError:  # not weak-referenceable (a builtin): no cache
        per_fn = {}
    if sig not in per_fn:
        per_fn[sig] = Chunk(step_fn, state, key, size, batched)
    return per_fn[sig]


def run(
    step_fn: StepFn,
    state: Any,
    key: jax.Array,
    *,
    n_steps: int,
    chunk_size: int = 100,
    start_step: int = 0,
    batched: bool = False,
    progress: bool = True,
    desc: str = "train",
    on_chunk: Callable[[int, Any, dict], dict | None] | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Runs ``n_steps`` of ``step_fn`` in jit-ed ``lax.scan`` chunks (the driver without
    checkpoints; see :func:`jaxcrl.train.driver.drive` for the full set of callbacks).

    Args:
      step_fn: pure ``(state, key) -> (state, metrics)``; metrics a dict of scalars (or of
        ``[runs]`` arrays when ``batched``).
      state: initial state pytree (copied once, then donated chunk to chunk; the caller's
        arrays stay valid).
      key: root key of the run, or ``[runs]`` keys when ``batched``.
      n_steps: number of steps to run (from ``start_step``).
      chunk_size: steps per compiled chunk; the progress bar and ``on_chunk`` run between
        chunks.
      start_step: global index of the first step (resuming keeps the key stream).
      batched: ``step_fn`` is vmapped over a leading run axis of ``state`` and ``key``.
      progress: show a tqdm bar with the latest metrics (mean over runs).
      desc: progress bar label.
      on_chunk: ``f(step, state, metrics) -> extra metrics or None`` called after each chunk
        with the global step reached and the chunk's last metrics (e.g. evaluation, saving).

    Returns:
      ``(state, history)`` with ``history[name]`` an array ``[n_steps, ...]`` (plus entries
      from ``on_chunk`` as ``[n_chunks, ...]`` under their own names, with ``"eval_step"``).
    """
    from jaxcrl.train import driver

    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    callbacks = []
    if on_chunk is not None:
        callbacks.append(driver.Evaluate(lambda ev: on_chunk(ev.step, ev.state, ev.last),
                                         every=chunk_size))
    if progress:
        callbacks.append(driver.ProgressBar(desc=desc))
    out = driver.drive(step_fn, state, key, start_step=start_step,
                       end_step=start_step + n_steps, chunk_size=chunk_size, batched=batched,
                       callbacks=callbacks)
    return out.state, out.history
