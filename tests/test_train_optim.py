"""The one optimizer builder: equals optax's own AdamW/Adam, and a traced per-run peak
learning rate under vmap equals separate runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrl.train import build_optimizer
from jaxcrl.train.optim import learning_rate_of


def _grads(key, params):
    return jax.tree_util.tree_map(lambda p: jax.random.normal(key, p.shape) * 3.0, params)


def _run(tx, params, n=6):
    state = tx.init(params)
    for t in range(n):
        updates, state = tx.update(_grads(jax.random.key(t), params), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_matches_optax_adamw_with_clipping_and_a_schedule():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 6, end_value=0.01)
    mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)  # noqa: E731
    ours, state = _run(build_optimizer(learning_rate=sched, b2=0.99, clip=1.0,
                                       weight_decay=0.1, decay_mask=mask), params)
    ref, _ = _run(optax.chain(optax.clip_by_global_norm(1.0),
                              optax.adamw(sched, b2=0.99, weight_decay=0.1, mask=mask)), params)
    for k in params:
        np.testing.assert_array_equal(ours[k], ref[k])
    assert float(learning_rate_of(state)) == float(sched(5))
    ours, _ = _run(build_optimizer(learning_rate=0.05), params)
    ref, _ = _run(optax.adam(0.05), params)
    np.testing.assert_array_equal(ours["w"], ref["w"])


def test_traced_peak_learning_rate_per_vmapped_run():
    """The SAE's sweep over ``lr``: the peak is a state leaf, different per run."""
    params = {"w": jnp.ones((4,))}
    shape = lambda peak, t: peak * jnp.minimum(1.0, (t + 1.0) / 3)  # noqa: E731

    def run(peak):
        tx = build_optimizer(learning_rate=peak, lr_schedule=shape)
        state = tx.init(params)
        p = params
        for t in range(5):
            updates, state = tx.update(_grads(jax.random.key(t), p), state, p)
            p = optax.apply_updates(p, updates)
        return p, state

    peaks = jnp.array([0.1, 0.01], jnp.float32)
    together, state = jax.vmap(run)(peaks)
    np.testing.assert_array_equal(learning_rate_of(state), peaks)
    for i in range(2):
        alone, _ = run(peaks[i])
        np.testing.assert_allclose(together["w"][i], alone["w"], rtol=1e-6)
    # a 10x smaller peak moves the parameters about 10x less (Adam steps ~ lr)
    moved = np.abs(np.asarray(together["w"]) - 1.0).sum(1)
    np.testing.assert_allclose(moved[0] / moved[1], 10.0, rtol=1e-3)
