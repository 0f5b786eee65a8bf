"""The one training loop: a pure step, ``lax.scan`` chunks, a progress bar between chunks.

``crl``, ``lm`` and ``sae`` all train through :func:`run`: they supply a pure
``step_fn(state, key) -> (state, metrics)`` and get back the final state and the per-step
metric history. Many runs (seeds, sweeps) train in one compiled program by passing a step
that was ``jax.vmap``-ed over a leading run axis (see :func:`vmap_runs`).

Keys: step ``t`` of a run uses ``jax.random.fold_in(key, t)``, so the numbers do not depend
on the chunk size, on jit, or on whether the run is vmapped with others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[Any, jax.Array], tuple[Any, dict]]


def vmap_runs(step_fn: StepFn) -> StepFn:
    """Turns a single-run step into one over a leading run axis of state and key."""
    return jax.vmap(step_fn)


def _chunk_fn(step_fn: StepFn, batched: bool):
    def chunk(state, key, steps):
        def body(state, t):
            k = jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, t) if batched else (
                jax.random.fold_in(key, t))
            return step_fn(state, k)

        return jax.lax.scan(body, state, steps)

    return jax.jit(chunk, donate_argnums=0)


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
    """Runs ``n_steps`` of ``step_fn`` in jit-ed ``lax.scan`` chunks.

    Args:
      step_fn: pure ``(state, key) -> (state, metrics)``; metrics a dict of scalars (or of
        ``[runs]`` arrays when ``batched``).
      state: initial state pytree (copied once, then donated chunk to chunk; the caller's
        arrays stay valid).
      key: root key of the run, or ``[runs]`` keys when ``batched``.
      n_steps: number of steps to run (from ``start_step``).
      chunk_size: steps per compiled chunk; the progress bar and ``on_chunk`` run between
        chunks. A last partial chunk compiles once more.
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
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk = _chunk_fn(step_fn, batched)
    state = jax.tree_util.tree_map(jnp.copy, state)
    pieces: list[dict] = []
    evals: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc=desc, leave=False, mininterval=0.5)
    done = 0
    t0 = time.perf_counter()
    while done < n_steps:
        m = min(chunk_size, n_steps - done)
        steps = jnp.arange(start_step + done, start_step + done + m)
        state, metrics = chunk(state, key, steps)
        metrics = jax.device_get(metrics)
        pieces.append(metrics)
        done += m
        last = {k: np.asarray(v[-1]) for k, v in metrics.items()}
        if on_chunk is not None:
            extra = on_chunk(start_step + done, state, last)
            if extra:
                evals.append({"eval_step": start_step + done, **extra})
                last.update(extra)
        if bar is not None:
            bar.update(m)
            bar.set_postfix({k: _fmt(v) for k, v in list(last.items())[:4]})
    if bar is not None:
        bar.close()
    history = {k: np.concatenate([p[k] for p in pieces]) for k in (pieces[0] if pieces else {})}
    for k in evals[0] if evals else {}:
        history[k] = np.stack([np.asarray(e[k]) for e in evals])
    history["wall_s"] = np.asarray(time.perf_counter() - t0)
    return state, history


def _fmt(v: Any) -> str:
    v = float(np.mean(v))
    return f"{v:.4g}" if math.isfinite(v) else str(v)
