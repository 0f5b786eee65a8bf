"""The one optimizer builder of jaxcrl (optax): clipping, Adam, decoupled weight decay and a
learning rate that lives in the optimizer state.

``crl``, ``lm`` and ``sae`` all build their optimizer here; updates are applied with
``optax.apply_updates`` (never a hand-written ``p - lr * u``). The learning rate enters
through :func:`optax.inject_hyperparams`, so it is part of the optimizer state:

* a schedule ``count -> lr`` (``learning_rate=optax.warmup_cosine_decay_schedule(...)``),
  evaluated at the optimizer's own step count;
* a traced peak with a static shape, ``learning_rate=peak`` and
  ``lr_schedule=f(peak, count) -> lr``: the peak is a float32 leaf of the state
  (``opt_state[-1].hyperparams["learning_rate"]``), so runs of a ``jax.vmap``-ed sweep can
  each have their own learning rate in one compiled program (the SAE trainer does this).

Example::

    tx = build_optimizer(learning_rate=3e-4, lr_schedule=lambda peak, t: peak * warm(t),
                         b1=0.9, b2=0.999, clip=1.0)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

PeakSchedule = Callable[[jax.Array, jax.Array], jax.Array]


def scale_by_peak_schedule(learning_rate: Any, schedule: PeakSchedule
                           ) -> optax.GradientTransformation:
    """``u -> -schedule(learning_rate, count) * u`` (the optimizer's descent step).

    Args:
      learning_rate: the peak learning rate (a float or a traced float32 scalar).
      schedule: ``(peak, count) -> lr`` with ``count`` the int32 number of updates so far.
    """
    return optax.scale_by_schedule(lambda count: -schedule(learning_rate, count))


def build_optimizer(
    *,
    learning_rate: float | jax.Array | optax.Schedule,
    lr_schedule: PeakSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip: float = 0.0,
    weight_decay: float = 0.0,
    decay_mask: Any = None,
) -> optax.GradientTransformation:
    """Global-norm clipping (``clip > 0``) → Adam → decoupled weight decay
    (``weight_decay > 0``, AdamW) → the learning rate, injected into the state.

    Args:
      learning_rate: a constant, a schedule ``count -> lr``, or (with ``lr_schedule``) the
        peak learning rate, which may be a traced scalar (one per vmapped run).
      lr_schedule: ``(peak, count) -> lr``: the learning rate's shape over training,
        static; the peak stays a state leaf (``hyperparams["learning_rate"]``).
      b1, b2, eps: Adam's moment decays and epsilon.
      clip: clip the global gradient norm at this value (0: off).
      weight_decay: AdamW decoupled weight decay (0: off).
      decay_mask: pytree of bools (or a function of params giving one) of the leaves that
        decay.

    Returns:
      An ``optax.GradientTransformation``; its last element's state is an
      ``InjectHyperparamsState`` holding the learning rate.
    """
    parts = []
    if clip:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, decay_mask))
    if lr_schedule is None:
        parts.append(optax.inject_hyperparams(optax.scale_by_learning_rate)(
            learning_rate=learning_rate))
    else:
        parts.append(optax.inject_hyperparams(scale_by_peak_schedule, static_args="schedule")(
            learning_rate=learning_rate, schedule=lr_schedule))
    return optax.chain(*parts)


def learning_rate_of(opt_state: Any) -> jax.Array:
    """The current learning rate (peak or scheduled value) held by a :func:`build_optimizer`
    state (``[runs]`` for a vmapped state)."""
    return opt_state[-1].hyperparams["learning_rate"]
