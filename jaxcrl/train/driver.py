"""The one outer training driver: scan chunks (:mod:`jaxcrl.train.loop`) with callbacks.

``crl.fit``, ``lm.train`` and ``sae.train`` all run through :func:`drive`. Between chunks it
calls its callbacks in order; a callback sees an :class:`Event` (global step, state, the
chunk's per-step metrics) and may return metrics to record and show, or an :class:`Update`
carrying a new state. Chunk boundaries fall on every multiple of ``chunk_size`` and of each
callback's ``every``, and on the last step, so no cadence is rounded; every chunk runs the
same compiled program (:class:`jaxcrl.train.loop.Chunk`).

Callbacks:

* :class:`NonFiniteGuard` (runs first): a NaN/inf metric stops the run with
  :class:`NonFiniteError` naming the step, the metric (and the run of a sweep) before
  anything else sees the state, so no bad checkpoint is written and the last good one
  stays loadable.
* :class:`Refresh`: replaces the state every N steps (new data for a source).
* :class:`Evaluate`: metrics every N steps (recorded under their names with ``eval_step``).
* :class:`Checkpoint`: saves through :class:`jaxcrl.checkpoint.CheckpointManager` every N
  steps and at the end (the manager keeps the last K).
* :class:`ProgressBar`: a tqdm bar showing the metrics the caller names.

Resume: :func:`restore` reads the latest checkpoint of a workdir, refuses it with
:class:`ConfigMismatchError` (naming the fields) when its config or run fingerprint differs
from this run's, and returns the state and step to continue from. Step ``t`` always uses
``fold_in(key, t)``, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrl.train.loop import StepFn, compiled_chunk

FINGERPRINT = "run_fingerprint"


class NonFiniteError(FloatingPointError):
    """A training metric became NaN or inf.

    Attributes:
      step: global index of the first step whose metric is not finite.
      metric: the metric's name.
      run: index of the first bad run of a vmapped sweep (None for one run).
    """

    def __init__(self, message: str, *, step: int, metric: str, run: int | None):
        super().__init__(message)
        self.step, self.metric, self.run = step, metric, run


class ConfigMismatchError(ValueError):
    """A checkpoint in the workdir was written by a different run; ``fields`` names the
    differences."""

    def __init__(self, message: str, fields: Sequence[str]):
        super().__init__(message)
        self.fields = tuple(fields)


# --------------------------------------------------------------------------- events


@dataclasses.dataclass
class Event:
    """What a callback sees after a chunk.

    Attributes:
      step: global number of steps done (the chunk ran steps ``first .. step - 1``).
      first: global index of the chunk's first step.
      end: the step this call of :func:`drive` stops at.
      total: the run's full length (``end`` unless the call stops early, as if preempted).
      state: the run state after ``step`` steps (callbacks must not keep donated buffers).
      metrics: the chunk's per-step metrics ``{name: [step - first, ...]}`` (host arrays).
      extra: metrics returned by earlier callbacks at this boundary.
    """

    step: int
    first: int
    end: int
    total: int
    state: Any
    metrics: dict[str, np.ndarray]
    extra: dict[str, Any]

    @property
    def last(self) -> dict[str, Any]:
        """The chunk's last step metrics (``[runs]`` in a sweep) and the callbacks' extras."""
        return {**{k: v[-1] for k, v in self.metrics.items()}, **self.extra}

    @property
    def final(self) -> bool:
        return self.step == self.end


@dataclasses.dataclass
class Update:
    """A callback's answer that replaces the run state (and may add metrics)."""

    state: Any
    metrics: dict[str, Any] | None = None


class Callback:
    """Base class: called at global steps that are multiples of ``every`` (every chunk when
    None) and, when ``at_end``, at the last step of a :func:`drive` call. ``order`` sorts
    callbacks (guards first, the progress bar last)."""

    every: int | None = None
    at_end: bool = True
    order: int = 0

    def due(self, step: int, end: int) -> bool:
        if self.at_end and step == end:
            return True
        return self.every is None or step % self.every == 0

    def __call__(self, event: Event) -> dict | Update | None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Called once when :func:`drive` returns or raises."""


class NonFiniteGuard(Callback):
    """Stops the run with :class:`NonFiniteError` at the first NaN/inf in ``metrics``.

    Args:
      metrics: names to check (None: every floating metric).
      manager: optional :class:`~jaxcrl.checkpoint.CheckpointManager` of the run, so the
        error names the last good checkpoint.
    """

    order = -100

    def __init__(self, metrics: Sequence[str] | None = ("loss",), *, manager: Any = None):
        self.metrics = None if metrics is None else tuple(metrics)
        self.manager = manager

    def __call__(self, event: Event) -> None:
        names = self.metrics if self.metrics is not None else [
            k for k, v in event.metrics.items() if np.issubdtype(v.dtype, np.floating)]
        first_bad = None
        for name in names:
            if name not in event.metrics:
                raise KeyError(f"NonFiniteGuard: no metric {name!r}; the step gives "
                               f"{sorted(event.metrics)}")
            v = np.asarray(event.metrics[name])
            bad = ~np.isfinite(v.reshape(v.shape[0], -1))
            if bad.any():
                row = int(np.argmax(bad.any(1)))
                if first_bad is None or row < first_bad[0]:
                    run = int(np.argmax(bad[row])) if v.ndim > 1 else None
                    first_bad = (row, name, run, v.reshape(v.shape[0], -1)[row][
                        bad[row]][0])
        if first_bad is None:
            return None
        row, name, run, value = first_bad
        step = event.first + row
        where = f" (run {run} of the sweep)" if run is not None else ""
        msg = f"metric {name!r} is {value} at step {step}{where}; training stopped"
        if self.manager is not None:
            last = self.manager.latest_step()
            msg += (f"; the last good checkpoint is step {last} in {self.manager.workdir}"
                    if last is not None else "; no checkpoint was written before it")
        raise NonFiniteError(msg, step=step, metric=name, run=run)


class Refresh(Callback):
    """``fn(step, state) -> state`` every ``every`` steps before the end of the schedule
    (``step < total``), e.g. a new subset of a large activation file. A checkpoint written
    at the same step holds the refreshed state, so a resumed run does not refresh again."""

    at_end = False
    order = -10

    def __init__(self, fn: Callable[[int, Any], Any], every: int):
        if every < 1:
            raise ValueError(f"Refresh: every must be >= 1, got {every}")
        self.fn, self.every = fn, every

    def __call__(self, event: Event) -> Update | None:
        if event.step % self.every or event.step >= event.total:
            return None
        return Update(self.fn(event.step, event.state))


class Evaluate(Callback):
    """``fn(event) -> metrics dict or None`` every ``every`` steps and at the end."""

    def __init__(self, fn: Callable[[Event], dict | None], every: int | None):
        if every is not None and every < 1:
            raise ValueError(f"Evaluate: every must be >= 1, got {every}")
        self.fn, self.every = fn, every

    def __call__(self, event: Event) -> dict | None:
        return self.fn(event)


class Checkpoint(Callback):
    """Saves ``to_save(state)`` with ``config`` through ``manager`` every
    ``manager.save_every`` steps and at the end of the call; closes the manager (releasing
    the workdir) when :func:`drive` returns or raises.

    PRNG key leaves are stored as their raw key data (see :func:`storable`). The saved
    metrics are the chunk's last ones plus ``identity`` (a run fingerprint, checked by
    :func:`restore`).
    """

    order = 10

    def __init__(self, manager: Any, *, config: Any, to_save: Callable[[Any], Any] = None,
                 identity: str | None = None):
        self.manager, self.config = manager, config
        self.to_save = to_save or (lambda s: s)
        self.identity = identity
        self.every = manager.save_every

    def __call__(self, event: Event) -> None:
        metrics = {k: np.asarray(v).tolist() for k, v in event.last.items()
                   if np.size(v) and np.issubdtype(np.asarray(v).dtype, np.number)}
        if self.identity is not None:
            metrics[FINGERPRINT] = self.identity
        self.manager.save(event.step, storable(self.to_save(event.state)), config=self.config,
                          metrics=metrics)
        return None

    def close(self) -> None:
        """Hands the workdir back (the manager's writer lock) when the run ends or fails."""
        self.manager.close()


class ProgressBar(Callback):
    """A tqdm bar over the call's steps with ``show`` metrics (mean over runs; None: the
    first four)."""

    order = 100

    def __init__(self, show: Sequence[str] | None = None, *, desc: str = "train"):
        self.show = None if show is None else tuple(show)
        self.desc = desc
        self.bar = None
        self.start = None

    def __call__(self, event: Event) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.start = event.first
            self.bar = tqdm(total=event.end - event.first, desc=self.desc, leave=False,
                            mininterval=0.5)
        self.bar.update(event.step - self.start - self.bar.n)
        last = event.last
        names = self.show if self.show is not None else list(last)[:4]
        self.bar.set_postfix({k: _fmt(last[k]) for k in names if k in last})
        return None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_callbacks(progress: bool | Sequence[str], default: Sequence[str], desc: str
                       ) -> list[Callback]:
    """``[ProgressBar]`` for a trainer's ``progress`` argument: True (its ``default``
    metrics), False (none) or a sequence of metric names."""
    if progress is False or progress is None:
        return []
    show = tuple(default) if progress is True else tuple(progress)
    return [ProgressBar(show, desc=desc)]


def _fmt(v: Any) -> str:
    v = float(np.mean(v))
    return f"{v:.4g}" if math.isfinite(v) else str(v)


# --------------------------------------------------------------------------- drive


@dataclasses.dataclass
class DriveResult:
    """What :func:`drive` returns.

    Attributes:
      state: the state after ``end_step`` steps.
      history: per-step metrics ``[n_steps, ...]``, callback metrics ``[n_calls, ...]`` with
        their steps in ``eval_step``, and ``wall_s``.
      chunk_s: wall time of each chunk (compute and transfer of its metrics, no callbacks).
      chunk_steps: steps of each chunk.
      traces: times the chunk program was traced (1 when anything ran).
    """

    state: Any
    history: dict[str, np.ndarray]
    chunk_s: list[float]
    chunk_steps: list[int]
    traces: int


def drive(step_fn: StepFn, state: Any, key: jax.Array, *, start_step: int, end_step: int,
          chunk_size: int, total_steps: int | None = None, batched: bool = False,
          callbacks: Sequence[Callback] = (), mesh: Any = None) -> DriveResult:
    """Runs steps ``start_step .. end_step - 1`` of ``step_fn`` with callbacks between chunks.

    Args:
      step_fn: pure ``(state, key) -> (state, metrics)`` (vmapped over runs when
        ``batched``); metrics a dict of scalars (``[runs]`` arrays when batched).
      state: state after ``start_step`` steps (copied once; the caller's arrays stay valid).
      key: the run's root key (``[runs]`` keys when batched); step ``t`` uses
        ``fold_in(key, t)``.
      start_step, end_step: global step range of this call.
      chunk_size: most steps per compiled chunk.
      total_steps: the run's full length (default ``end_step``; larger when stopping early).
      batched: ``step_fn`` is vmapped over a leading run axis.
      callbacks: run after chunks, sorted by ``order`` (stable).
      mesh: where the runs of a batched step live. None (default): spread the run axis over
        all local devices (:func:`jaxcrl.train.mesh.runs_mesh`; all 8 cores of a Colab TPU for
        8 seeds; nothing changes on one device); a ``jax.sharding.Mesh``: its ``"data"``
        axis; False: leave the placement as given.

    Returns:
      :class:`DriveResult`.
    """
    if end_step < start_step:
        raise ValueError(f"end_step={end_step} < start_step={start_step}")
    total = end_step if total_steps is None else total_steps
    cbs = sorted(callbacks, key=lambda c: c.order)
    state = jax.tree_util.tree_map(jnp.copy, state)
    if batched and mesh is not False:
        from jaxcrl.train.mesh import place_runs, runs_mesh

        mesh = runs_mesh(int(np.shape(key)[0])) if mesh is None else mesh
        if mesh is not None:  # the runs of a sweep side by side on the devices
            state, key = place_runs((state, key), mesh)
    chunk = compiled_chunk(step_fn, state, key, size=chunk_size, batched=batched) if (
        end_step > start_step) else None
    traces_before = chunk.traces if chunk is not None else 0
    pieces: list[dict] = []
    evals: list[dict] = []
    chunk_s: list[float] = []
    chunk_steps: list[int] = []
    t0 = time.perf_counter()
    done = start_step
    try:
        while done < end_step:
            nxt = min(end_step, _next_multiple(done, chunk_size),
                      *[_next_multiple(done, c.every) for c in cbs if c.every is not None])
            m = nxt - done
            tc = time.perf_counter()
            state, metrics = chunk(state, key, done, m)
            metrics = {k: np.asarray(v)[:m] for k, v in jax.device_get(metrics).items()}
            chunk_s.append(time.perf_counter() - tc)
            chunk_steps.append(m)
            pieces.append(metrics)
            event = Event(step=nxt, first=done, end=end_step, total=total, state=state,
                          metrics=metrics, extra={})
            for cb in cbs:
                if not cb.due(nxt, end_step):
                    continue
                out = cb(event)
                if isinstance(out, Update):
                    event.state = state = out.state
                    out = out.metrics
                if out:
                    event.extra.update(out)
            if event.extra:
                evals.append({"eval_step": nxt, **event.extra})
            done = nxt
    finally:
        for cb in cbs:
            cb.close()
    history = {k: np.concatenate([p[k] for p in pieces]) for k in (pieces[0] if pieces else {})}
    for k in dict.fromkeys(k for e in evals for k in e):
        history[k] = np.stack([np.asarray(e[k]) for e in evals if k in e])
    history["wall_s"] = np.asarray(time.perf_counter() - t0)
    traces = chunk.traces - traces_before if chunk is not None else 0
    return DriveResult(state, history, chunk_s, chunk_steps, traces)


def _next_multiple(t: int, every: int) -> int:
    return (t // every + 1) * every


# --------------------------------------------------------------------------- resume


def storable(tree: Any) -> Any:
    """``tree`` with typed PRNG key leaves replaced by their raw ``uint32`` key data (the
    checkpoint format stores plain arrays); :func:`unstorable` reverses it."""
    return jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def unstorable(tree: Any, template: Any) -> Any:
    """Puts back the PRNG keys of ``template`` (same structure) into a restored ``tree``."""
    return jax.tree_util.tree_map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t)
        else x, template, tree)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def fingerprint(*arrays: Any) -> str:
    """SHA-256 (hex, 16 chars) of arrays' shapes, dtypes and bytes (keys by their data):
    identifies a run's data and keys in its checkpoints."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(jax.random.key_data(a) if _is_key(a) else a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def config_diff(saved: Any, current: Any, *, ignore: Sequence[str] = (), prefix: str = ""
                ) -> list[tuple[str, Any, Any]]:
    """Fields where two configs differ, as ``(dotted name, saved, current)``; nested
    dataclasses are compared field by field. ``ignore`` names top-level fields that may
    differ (e.g. logging cadence)."""
    if type(saved) is not type(current) or not dataclasses.is_dataclass(current):
        if saved == current:
            return []
        return [(prefix or "<config>", _describe(saved), _describe(current))]
    out = []
    for f in dataclasses.fields(current):
        if f.name in ignore:
            continue
        a, b = getattr(saved, f.name, None), getattr(current, f.name)
        if dataclasses.is_dataclass(b) and type(a) is type(b):
            out += config_diff(a, b, prefix=f"{prefix}{f.name}.")
        elif a != b:
            out.append((f"{prefix}{f.name}", a, b))
    return out


def _describe(x: Any) -> Any:
    return type(x).__name__ if dataclasses.is_dataclass(x) else x


def check_same_run(saved: Any, current: Any, *, where: Any, ignore: Sequence[str] = (),
                   saved_identity: str | None = None, identity: str | None = None) -> None:
    """Raises :class:`ConfigMismatchError` naming every differing field (and a differing
    data/key fingerprint)."""
    diff = config_diff(saved, current, ignore=ignore)
    if identity is not None and saved_identity is not None and saved_identity != identity:
        diff.append(("data/keys fingerprint", saved_identity, identity))
    if diff:
        what = "; ".join(f"{n}: {a!r} (checkpoint) vs {b!r} (this run)" for n, a, b in diff)
        raise ConfigMismatchError(
            f"{where}: the checkpointed run differs in {[d[0] for d in diff]} ({what}); use "
            "another workdir or resume=False", [d[0] for d in diff])


def restore(manager: Any, *, config: Any, template: Any, to_save: Callable[[Any], Any] = None,
            ignore: Sequence[str] = (), identity: str | None = None
            ) -> tuple[Any, int] | None:
    """The newest checkpoint of ``manager`` that verifies, as ``(saved state, step)``, or None
    when the workdir has none.

    The saved config is compared with ``config`` before any state is restored (the target
    is a function of the saved config): a mismatch raises :class:`ConfigMismatchError`
    naming the fields; so does a differing run fingerprint (data/keys). The state is
    restored onto the structure of ``to_save(template)`` (PRNG keys put back), from which
    callers rebuild their full state.
    """
    if not manager.steps():
        return None
    want = (to_save or (lambda s: s))(template)

    def target(saved_config: Any) -> Any:
        check_same_run(saved_config, config, where=manager.workdir, ignore=ignore)
        return jax.eval_shape(lambda: storable(want))

    c = manager.restore(target=target)
    check_same_run(config, config, where=c.path, saved_identity=c.metrics.get(FINGERPRINT),
                   identity=identity)
    return unstorable(c.state, want), c.step
